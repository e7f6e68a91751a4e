"""`--data folder` (unlabeled image folders, the cached file list) and unreadable images in any file-based dataset."""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from ssl_kd import image_files
from ssl_kd.config import DataConfig
from ssl_kd.data import UNLABELED, build_dataset, unreadable_check
from ssl_kd.views import eval_transform
from ssl_kd.errors import UserError, cli_main
from ssl_kd.image_files import default_file_list_dir, file_list_cache_path, image_file_list

REPO = Path(__file__).resolve().parents[1]
TEACHER = REPO / "ssl_kd" / "assets" / "digits_resnet14t_simclr.pth"


def _image(path: Path, shade: int = 0, size: int = 12) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    formats = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP", ".bmp": "BMP"}
    Image.new("RGB", (size, size), (shade, 255 - shade, 80)).save(path, format=formats[path.suffix.lower()])
    return path


def _corrupt(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not an image at all")
    return path


def _truncated(path: Path) -> Path:
    """A PNG cut after its header: PIL identifies it, then fails to decode it."""
    data = _image(path, 10, size=40).read_bytes()
    path.write_bytes(data[:60])
    return path


def _backdate(root: Path) -> None:
    """Every folder under `root` an hour old, as a real dataset's are (folders modified within
    RACY_SECONDS of a scan are not cached)."""
    old = time.time() - 3600
    for folder, _, _ in os.walk(root):
        os.utime(folder, (old, old))


def _folder_data(root: Path, cache: Path, **fields) -> DataConfig:
    return DataConfig(name="folder", root=str(root), file_list_dir=str(cache), image_size=8, num_workers=0, **fields)


def test_every_image_recursively_any_case_hidden_skipped_sorted(tmp_path):
    root = tmp_path / "images"
    for name in ("b.JPG", "a.jpeg", "sub/c.png", "sub/deeper/d.WebP", "sub/deeper/e.bmp", "sub/f.PNG"):
        _image(root / name)
    for name in (".hidden.png", ".cache/g.png", "sub/.h.jpg"):
        _image(root / name)
    (root / "notes.txt").write_text("not an image")
    (root / "sub" / "empty.jpg").touch()
    files = image_file_list(root, tmp_path / "lists")
    assert files.files == ["a.jpeg", "b.JPG", "sub/c.png", "sub/deeper/d.WebP", "sub/deeper/e.bmp", "sub/f.PNG"]
    assert files.empty == ["sub/empty.jpg"] and files.root == str(root.resolve())


def test_a_flat_folder_is_an_unlabeled_train_split(tmp_path):
    for i in range(3):
        _image(tmp_path / "flat" / f"{i}.png", 60 * i)
    cfg = _folder_data(tmp_path / "flat", tmp_path / "lists")
    dataset = build_dataset(cfg, "train", eval_transform(cfg))
    assert len(dataset) == 3 and dataset.classes == []
    image, label, index = dataset[2]
    assert image.shape == (3, 8, 8) and label == UNLABELED == -1 and index == 2
    assert dataset.sample_path(2) == str((tmp_path / "flat" / "2.png").resolve())
    with pytest.raises(UserError, match="--eval-data NAME --eval-data-root DIR"):
        build_dataset(cfg, "test", None)


def test_the_cached_list_is_reused_without_a_scan_and_rebuilt_after_a_change(tmp_path, monkeypatch):
    root, cache = tmp_path / "images", tmp_path / "lists"
    for name in ("a.png", "x/b.png", "x/y/c.png"):
        _image(root / name)
    _backdate(root)
    assert not image_file_list(root, cache).from_cache
    cache_file = file_list_cache_path(root, cache)
    written = cache_file.stat().st_mtime_ns

    listings = []
    real_scandir = os.scandir
    monkeypatch.setattr(image_files.os, "scandir", lambda path: listings.append(path) or real_scandir(path))
    again = image_file_list(root, cache)
    assert again.from_cache and again.files == ["a.png", "x/b.png", "x/y/c.png"]
    assert listings == [] and cache_file.stat().st_mtime_ns == written  # no scan, no rewrite

    _image(root / "x" / "y" / "new.png")  # a change deep down: only that folder's mtime moves
    changed = image_file_list(root, cache)
    assert not changed.from_cache and "x/y/new.png" in changed.files and listings


def test_a_recently_modified_folder_is_not_cached(tmp_path):
    _image(tmp_path / "images" / "a.png")  # modified just now: a change in the same clock tick could go unseen
    assert not image_file_list(tmp_path / "images", tmp_path / "lists").from_cache
    assert not file_list_cache_path(tmp_path / "images", tmp_path / "lists").exists()


def test_an_unwritable_cache_folder_is_one_warning_not_an_error(tmp_path):
    _image(tmp_path / "images" / "a.png")
    _backdate(tmp_path / "images")
    (tmp_path / "a_file").write_text("")
    with pytest.warns(RuntimeWarning) as warned:
        files = image_file_list(tmp_path / "images", tmp_path / "a_file" / "lists")
    assert files.files == ["a.png"]
    assert len(warned) == 1 and "could not write the cache" in str(warned[0].message)


def test_the_default_cache_folder_follows_xdg_cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_file_list_dir() == tmp_path / "xdg" / "ssl_kd" / "file-lists"
    _image(tmp_path / "images" / "a.png")
    _backdate(tmp_path / "images")
    image_file_list(tmp_path / "images")
    assert file_list_cache_path(tmp_path / "images").parent == tmp_path / "xdg" / "ssl_kd" / "file-lists"
    assert file_list_cache_path(tmp_path / "images").is_file()


def test_an_empty_or_missing_folder_is_one_line(tmp_path):
    (tmp_path / "nothing").mkdir()
    with pytest.raises(UserError, match="no images under"):
        image_file_list(tmp_path / "nothing", tmp_path / "lists")
    with pytest.raises(UserError, match="is not a folder"):
        image_file_list(tmp_path / "missing", tmp_path / "lists")


def test_unreadable_images_are_counted_and_replaced_by_the_next_readable_one(tmp_path):
    root = tmp_path / "images"
    _image(root / "0.png", 0)
    _corrupt(root / "1.png")
    _image(root / "2.png", 200)
    (root / "3.png").touch()  # zero-byte: left out at scan time, counted
    _truncated(root / "4.png")
    cfg = _folder_data(root, tmp_path / "lists")
    dataset = build_dataset(cfg, "train", None)
    assert len(dataset) == 4  # 0, 1, 2, 4

    image, label, used = dataset.load(1)
    assert used == 2 and label == -1 and image.getpixel((0, 0)) == (200, 55, 80)
    assert dataset.load(3)[2] == 0  # the truncated last file wraps around to the first
    assert dataset[1][2] == 2  # __getitem__ = load + transform
    assert dataset.unreadable.indices() == [1, 3] and dataset.unreadable.count() == 3
    examples = dataset.unreadable.examples(dataset.sample_path)
    assert examples[0].endswith("3.png (empty file)") and "1.png (not an image PIL can identify)" in examples[1]
    assert examples[2].endswith("4.png (truncated)")

    assert unreadable_check(dataset, 0.8)() == {"unreadable_images": 3}  # floor(0.8 x 5) = 4 allowed
    with pytest.raises(UserError, match=r"3 of 5 training images are unreadable.*allows \(2\).*raise data.max_bad_fraction"):
        unreadable_check(dataset, 0.5)()


def test_a_corrupt_file_in_class_folders_takes_the_next_image_and_its_label(tmp_path):
    for split in ("train", "val"):
        for label in ("a", "b"):
            for i in range(3):
                _image(tmp_path / "classes" / split / label / f"{i}.png", 40 * i)
    _corrupt(tmp_path / "classes" / "train" / "a" / "2.png")  # the last of class a: replaced by the first of class b
    cfg = DataConfig(name="imagefolder", root=str(tmp_path / "classes"), image_size=8)
    dataset = build_dataset(cfg, "train", None)
    assert [dataset.load(i)[1:] for i in range(6)] == [(0, 0), (0, 1), (1, 3), (1, 3), (1, 4), (1, 5)]
    assert dataset.unreadable.indices() == [2]
    assert dataset.unreadable.examples(dataset.sample_path)[0].endswith("a/2.png (not an image PIL can identify)")


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_loader_workers_mark_unreadable_images_where_the_parent_sees_them(tmp_path, context):
    root = tmp_path / "images"
    for i in range(8):
        _image(root / f"{i}.png", 20 * i)
    _corrupt(root / "3.png")
    _corrupt(root / "6.png")
    cfg = _folder_data(root, tmp_path / "lists")
    dataset = build_dataset(cfg, "train", eval_transform(cfg))
    loader = DataLoader(dataset, batch_size=2, num_workers=2, multiprocessing_context=context)
    used = torch.cat([index for _, _, index in loader]).tolist()
    assert used == [0, 1, 2, 4, 4, 5, 7, 7]
    assert dataset.unreadable.indices() == [3, 6]


def _labeled_folder(root: Path) -> None:
    """Two colour classes, 10 images each (20 % held out as queries)."""
    for label, shade in enumerate((30, 220)):
        for i in range(10):
            _image(root / f"class{label}" / f"{i}.png", shade + i, size=16)


def _job_args(tmp_path: Path, data_root: Path, *extra: str) -> list[str]:
    return ["--teacher", str(TEACHER), "--data", "folder", "--data-root", str(data_root), "--epochs", "1",
            "--out", str(tmp_path / "run"), "data.image_size=32", "train.batch_size=8", "data.num_workers=0",
            "loss.queue_size=16", "eval.knn_ks=[1,5]", "eval.knn_k=5", f"data.file_list_dir={tmp_path / 'lists'}", *extra]


def _pipeline_main():
    """`main` of pipelines/distill_ssl.py, run in this process (no interpreter start-up per run)."""
    spec = importlib.util.spec_from_file_location("distill_ssl_pipeline", REPO / "pipelines" / "distill_ssl.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def _exit_status_and_error(argv: list[str], capsys) -> tuple[int, list[str]]:
    main = _pipeline_main()
    with pytest.raises(SystemExit) as exit_info:
        cli_main(lambda: main(argv))
    return exit_info.value.code, capsys.readouterr().err.strip().splitlines()


def test_unlabeled_data_without_an_eval_set_stops_before_training(tmp_path, capsys):
    for i in range(4):
        _image(tmp_path / "flat" / f"{i}.png", 50 * i)
    status, lines = _exit_status_and_error(_job_args(tmp_path, tmp_path / "flat"), capsys)
    assert status == 2 and lines[-1].startswith("error: dataset 'folder' holds unlabeled images")
    assert "--eval-data NAME --eval-data-root DIR" in lines[-1]
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # nothing trained


def test_too_many_unreadable_images_stop_the_run_with_one_line(tmp_path, capsys):
    for i in range(16):
        _image(tmp_path / "flat" / f"{i:02d}.png", 10 * i)
    (tmp_path / "flat" / "empty.png").touch()
    _corrupt(tmp_path / "flat" / "bad.jpg")
    _labeled_folder(tmp_path / "labeled")
    status, lines = _exit_status_and_error(
        _job_args(tmp_path, tmp_path / "flat", "--eval-data", "imagefolder", "--eval-data-root", str(tmp_path / "labeled")), capsys)
    assert status == 2, lines
    assert lines[-1].startswith("error: ") and "training images are unreadable" in lines[-1] and "empty.png (empty file)" in lines[-1]
    assert "remove or repair these files, or raise data.max_bad_fraction" in lines[-1]


def test_distils_on_an_unlabeled_flat_folder_and_evaluates_on_a_labeled_one(tmp_path):
    for i in range(16):
        _image(tmp_path / "flat" / f"{i:02d}.jpg", 15 * i, size=20)
    (tmp_path / "flat" / "zz_empty.png").touch()  # always counted (a corrupt file might not be drawn in 2 steps)
    _labeled_folder(tmp_path / "labeled")
    report = _pipeline_main()(_job_args(tmp_path, tmp_path / "flat", "--eval-data", "imagefolder", "--eval-data-root", str(tmp_path / "labeled"),
                            "data.max_bad_fraction=0.1"))
    assert report.data.name == "folder" and report.data.evaluation["name"] == "imagefolder"
    assert (report.data.train, report.data.test) == (16, 4)  # the labeled folder's bank and queries
    assert report.data.unreadable_images == 1 and report.training.final["unreadable_images"] == 1
    assert report.teacher.knn["num_classes"] == 2
    markdown = (tmp_path / "run" / "report.md").read_text()
    assert "trained on folder, 1 unreadable training image skipped, evaluated on imagefolder" in markdown
