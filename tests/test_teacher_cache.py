"""The teacher-feature cache: reproducible views, a teacher that is never called, exact equality with the
live teacher, keyed reuse and rebuilds, a resumable build, and the methods it must refuse."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ssl_kd.config import load_config
from ssl_kd.data import build_dataset
from ssl_kd.views import view_draw, views_transform
from ssl_kd.loaders import make_loader
from ssl_kd.defaults import default_teacher
from ssl_kd.distillation import VIEW_RECIPE_KEYS, build_objective, build_student, distill, training_views
from ssl_kd.errors import UserError
from ssl_kd.loop import fit
from ssl_kd.seeded_views import PooledViews, ViewPool, sample_seed, seeded
from ssl_kd.teacher_cache import TeacherCache, build_teacher_cache
from ssl_kd.teachers import load_teacher

CPU = torch.device("cpu")
TINY = ["train.device=cpu", "data.num_workers=0", "data.subset=64", "train.batch_size=32", "loss.queue_size=32",
        "student.proj_hidden=64", "eval.monitor_every=0", "train.epochs=2", "train.log_every=0"]


def _cfg(*overrides: str):
    cfg = load_config(None, [*TINY, *overrides])
    return cfg


@pytest.fixture(scope="module")
def teacher():
    return load_teacher(str(default_teacher("digits")), image_size=32)


class ForwardCounter:
    """Counts the images a module's forward is called on."""

    def __init__(self, module: torch.nn.Module):
        self.images = 0
        self.handle = module.register_forward_hook(self)

    def __call__(self, module, args, output):
        self.images += args[0].shape[0]


def _digits(cfg):
    return build_dataset(cfg.data, "train", views_transform(cfg.data))


def _pool(cfg, size: int = 3) -> ViewPool:
    return ViewPool(view_draw(cfg.data), size=size, draws_per_step=2, seed=cfg.train.seed)


def _views_by_index(loader) -> dict[int, list[torch.Tensor]]:
    out = {}
    for views, _labels, index in loader:
        for row, i in enumerate(index.tolist()):
            out[i] = [v[row] for v in views]
    return out


# ---------------------------------------------------------------------------------------------------
# reproducible views


def test_seeded_block_leaves_the_callers_generators_where_they_were():
    torch.manual_seed(5)
    np.random.seed(5)
    expected = (torch.rand(3), np.random.rand(3))
    torch.manual_seed(5)
    np.random.seed(5)
    with seeded(sample_seed(1, 2, 3)):
        torch.rand(10), np.random.rand(10)
    assert torch.equal(torch.rand(3), expected[0]) and np.array_equal(np.random.rand(3), expected[1])
    assert sample_seed(0, 1, 2) == sample_seed(0, 1, 2) != sample_seed(0, 2, 1)


def test_a_draw_is_the_same_whatever_the_workers_and_batch_size():
    cfg = _cfg("data.subset=24")
    dataset = PooledViews(_digits(cfg), _pool(cfg))
    serial = _views_by_index(make_loader(dataset, 8, train=True, num_workers=0, tag_epoch=True))
    parallel = _views_by_index(make_loader(dataset, 12, train=True, num_workers=2, tag_epoch=True))
    assert sorted(serial) == sorted(parallel) == list(range(24))
    for i in serial:
        assert all(torch.equal(a, b) for a, b in zip(serial[i], parallel[i]))
    assert not torch.equal(serial[0][0], serial[0][1])  # two different draws of one image


def test_every_epoch_trains_on_two_distinct_draws_of_the_pool():
    cfg = _cfg()
    pool = _pool(cfg, size=4)
    image = _digits(cfg).load(7)[0]
    chosen = [pool.chosen(7, epoch) for epoch in range(20)]
    assert all(len(set(c)) == 2 and set(c) <= set(range(4)) for c in chosen)
    assert len({tuple(c) for c in chosen}) > 3  # the choice changes with the epoch
    assert all(torch.equal(a, b) for a, b in zip(pool.draw(image, 7, 2), pool.draw(image, 7, 2)))


# ---------------------------------------------------------------------------------------------------
# training from the cache


def test_with_the_cache_built_the_teacher_is_never_called_and_the_cache_is_reused_unwritten(tmp_path, teacher):
    cache_dir = tmp_path / "cache"
    cfg = _cfg("train.teacher_cache=3", f"train.teacher_cache_dir={cache_dir}")
    counter = ForwardCounter(teacher)
    distill(cfg, teacher, tmp_path / "first")
    assert counter.images == 64 * 3  # the build: every image's 3 draws, once
    (entry,) = cache_dir.iterdir()
    stamps = {p.name: p.stat().st_mtime_ns for p in entry.iterdir()}
    assert json.loads((entry / "meta.json").read_text())["complete"] is True

    counter.images = 0
    result = distill(_cfg("train.teacher_cache=3", f"train.teacher_cache_dir={cache_dir}"), teacher, tmp_path / "second")
    counter.handle.remove()
    assert counter.images == 0 and result.fit.steps == 4  # 2 epochs x 2 steps, no teacher forward at all
    assert {p.name: p.stat().st_mtime_ns for p in entry.iterdir()} == stamps  # reused: nothing rewritten


def test_cached_training_equals_the_live_teacher_on_the_same_views(tmp_path, teacher):
    cfg = _cfg("train.teacher_cache=3", "train.teacher_cache_dtype=float32", f"train.teacher_cache_dir={tmp_path / 'cache'}")
    dataset = _digits(cfg)

    def trained(make_dataset, run: str) -> dict:
        torch.manual_seed(0)
        objective = build_objective(cfg, teacher, build_student(cfg, teacher), len(dataset))
        views = make_dataset(objective)
        fit(objective, make_loader(views, 32, train=True, num_workers=0, tag_epoch=True), cfg.train, tmp_path / run, {}, CPU)
        return objective.trainable["student"].state_dict()

    cached = trained(lambda objective: training_views(cfg, dataset, objective, tmp_path, CPU)[0], "cached")
    counter = ForwardCounter(teacher)
    live = trained(lambda objective: PooledViews(dataset, _pool(cfg)), "live")
    counter.handle.remove()
    assert counter.images == 4 * 32 * 2  # the live run did call the teacher: 4 steps of 32 images x 2 views
    assert cached.keys() == live.keys()
    assert all(torch.equal(cached[k], live[k]) for k in cached)


def test_float16_rows_are_the_teachers_float32_rows_rounded(tmp_path, teacher):
    cfg = _cfg("data.subset=16")
    dataset, pool = _digits(cfg), _pool(cfg)
    caches = {dtype: build_teacher_cache(teacher, dataset, pool, directory=tmp_path, recipe="r", dtype=dtype, num_workers=0)
              for dtype in ("float16", "float32")}
    assert caches["float16"].key != caches["float32"].key
    for i in (0, 9):
        half, full = caches["float16"].rows(i, [2, 0])["emb"], caches["float32"].rows(i, [2, 0])["emb"]
        assert half.dtype == torch.float16 and half.shape == (2, teacher.embed_dim)
        assert torch.equal(half, full.half())


# ---------------------------------------------------------------------------------------------------
# keys, rebuilds and an interrupted build


def test_a_changed_teacher_builds_a_new_cache_and_an_unchanged_one_reuses_it(tmp_path, teacher):
    cfg = _cfg("data.subset=16")
    dataset, pool = _digits(cfg), _pool(cfg)
    first = build_teacher_cache(teacher, dataset, pool, directory=tmp_path, recipe="r", num_workers=0)
    again = build_teacher_cache(teacher, dataset, pool, directory=tmp_path, recipe="r", num_workers=0)
    changed_teacher = load_teacher(str(default_teacher("digits")), image_size=32)
    with torch.no_grad():
        next(changed_teacher.backbone.parameters()).add_(0.01)
    changed = build_teacher_cache(changed_teacher, dataset, pool, directory=tmp_path, recipe="r", num_workers=0)
    other_recipe = build_teacher_cache(teacher, dataset, pool, directory=tmp_path, recipe="r2", num_workers=0)
    assert first.directory == again.directory
    assert len({first.directory, changed.directory, other_recipe.directory}) == 3
    assert not torch.equal(first.rows(3, [0])["emb"], changed.rows(3, [0])["emb"])


def test_an_interrupted_build_embeds_only_the_missing_images(tmp_path, teacher):
    cfg = _cfg("data.subset=16")
    dataset, pool = _digits(cfg), _pool(cfg)
    cache = build_teacher_cache(teacher, dataset, pool, directory=tmp_path, recipe="r", num_workers=0)
    expected = np.load(cache.directory / "emb.npy").copy()
    emb = np.load(cache.directory / "emb.npy", mmap_mode="r+")
    done = np.load(cache.directory / "done.npy", mmap_mode="r+")
    emb[5:9], done[5:9] = 0, False  # as if killed before these four were written
    emb.flush(), done.flush()
    meta = json.loads((cache.directory / "meta.json").read_text())
    (cache.directory / "meta.json").write_text(json.dumps({**meta, "complete": False}))

    counter = ForwardCounter(teacher)
    resumed = build_teacher_cache(teacher, dataset, pool, directory=tmp_path, recipe="r", num_workers=0)
    counter.handle.remove()
    assert resumed.directory == cache.directory and counter.images == 4 * 3
    assert np.array_equal(np.load(cache.directory / "emb.npy"), expected)


def test_rows_come_back_in_the_order_the_views_are_made(tmp_path, teacher):
    cfg = _cfg("data.subset=8")
    dataset, pool = _digits(cfg), _pool(cfg)
    cache = build_teacher_cache(teacher, dataset, pool, directory=tmp_path, recipe="r", dtype="float32", num_workers=0)
    image = dataset.load(4)[0]
    views = torch.stack([v for d in (2, 1) for v in pool.draw(image, 4, d)])
    with torch.inference_mode():
        live = teacher(views).emb
    assert torch.equal(cache.rows(4, [2, 1])["emb"], live)
    assert isinstance(TeacherCache(cache.directory), TeacherCache)


# ---------------------------------------------------------------------------------------------------
# what a cache cannot hold


@pytest.mark.parametrize("overrides, message", [
    (["loss.method=fitnet"], "stage feature maps"),
    (["loss.method=sp"], "stage feature maps"),
    (["loss.method=stkd"], "cannot be cached"),
    (["train.teacher_cache=1"], "2 distinct draws"),
    (["train.teacher_cache=-2"], "number of cached draws"),
])
def test_what_the_cache_cannot_serve_is_one_line(tmp_path, teacher, overrides, message):
    cfg = _cfg("train.teacher_cache=3", *overrides)
    with pytest.raises(UserError, match=message):
        distill(cfg, teacher, tmp_path / "run")


# ---------------------------------------------------------------------------------------------------
# several processes


def test_two_processes_build_the_cache_one_process_builds_and_train_from_it(tmp_path, teacher):
    """torchrun with 2 gloo processes: the main job builds the cache sharded over both ranks and trains from
    it; one process builds a cache of the same key with the same rows."""
    from torchrun_helpers import REPO, run_torchrun

    cache_dir = tmp_path / "cache"
    result = run_torchrun(REPO / "pipelines" / "distill_ssl.py", "--epochs", "1", "--out", str(tmp_path / "run"), "data.subset=64",
                          "train.batch_size=32", "data.num_workers=0", "loss.queue_size=32", "eval.knn_ks=[1,20]",
                          "eval.linear_probe=false", "train.teacher_cache=3", f"train.teacher_cache_dir={cache_dir}",
                          nproc=2, cwd=tmp_path, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("teacher cache: embedding 64 images") == 1  # rank 0 alone reports the build
    (two,) = cache_dir.iterdir()
    assert json.loads((two / "meta.json").read_text())["complete"] is True
    assert json.loads((tmp_path / "run" / "report.json").read_text())["training"]["world_size"] == 2

    cfg = _cfg()
    one = build_teacher_cache(teacher, _digits(cfg), _pool(cfg), directory=tmp_path / "one",
                              recipe=repr({k: getattr(cfg.data, k) for k in VIEW_RECIPE_KEYS}), num_workers=0)
    assert one.key == two.name
    assert np.array_equal(np.load(one.directory / "emb.npy"), np.load(two / "emb.npy"))
    assert np.load(two / "done.npy").all()


def test_a_rewritten_image_in_an_unlabeled_folder_changes_the_key(tmp_path, teacher):
    import os

    from PIL import Image

    from ssl_kd.config import DataConfig
    from ssl_kd.teacher_cache import teacher_cache_key

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(4):
        Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(folder / f"{i}.png")
    cfg = DataConfig(name="folder", root=str(folder), file_list_dir=str(tmp_path / "lists"), image_size=16)

    def key() -> str:
        dataset = build_dataset(cfg, "train", None)
        return teacher_cache_key(teacher, dataset, ViewPool(view_draw(cfg), 2, 2, 0), recipe="r", dtype="float16", logits=False)

    first = key()
    assert key() == first
    Image.new("RGB", (8, 8), (0, 0, 255)).save(folder / "2.png")  # same name, new content
    os.utime(folder / "2.png", ns=(1, 1))
    assert key() != first
