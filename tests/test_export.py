"""`python -m ssl_kd export RUN_DIR --format timm|torchscript|onnx`: each format, loaded back the way a user
loads it (plain timm, torch.jit.load, onnxruntime), gives the run's student features within the tolerance
(ONNX at several batch sizes); a failed check writes nothing; bad input is one `error: ` line, exit 2.

One tiny run of the main job (1 epoch on 64 digits) serves the whole module. The bad inputs run in-process
through the real `cli_main`; one subprocess proves the `python -m ssl_kd` entry point itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import timm
import torch

from ssl_kd import export
from ssl_kd.__main__ import main
from ssl_kd.config import StudentConfig
from ssl_kd.distillation import export_student
from ssl_kd.errors import UserError, cli_main
from ssl_kd.evaluation.models import load_eval_model
from ssl_kd.export import RTOL, export_model
from ssl_kd.students import Student

REPO = Path(__file__).resolve().parents[1]
TINY = ["--epochs", "1", "data.subset=64", "train.batch_size=32", "data.num_workers=0", "loss.queue_size=32",
        "eval.linear_probe=false", "eval.knn_ks=[1,20]", "eval.monitor_every=0"]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run of the main job at tiny size (student_timm.pth + .json, config.yaml, ...)."""
    root = tmp_path_factory.mktemp("export_run")
    # one thread: only the run's files matter here, and on 2 shared cores OpenMP's spinning threads made it 3x slower
    result = subprocess.run([sys.executable, str(REPO / "pipelines" / "distill_ssl.py"), *TINY, "--out", "run"], cwd=root,
                            env={**_env(), "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    return root / "run"


def _images(n: int, seed: int = 7) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def _student_features(run_dir: Path, images: torch.Tensor) -> torch.Tensor:
    """What the evaluation measures: the `.feat` of the run's student as load_eval_model rebuilds it."""
    return load_eval_model(run_dir)(images).feat


def _assert_close(got: torch.Tensor, expected: torch.Tensor) -> None:
    assert got.shape == expected.shape
    assert float((got - expected).abs().max()) <= RTOL * float(expected.abs().max())


def test_timm_export_loads_with_plain_timm(run_dir: Path, tmp_path: Path) -> None:
    result = export_model(run_dir, "timm", tmp_path / "r10.pth")
    assert result.files == [tmp_path / "r10.pth", tmp_path / "r10.json"] and all(c.ok for c in result.checks)
    assert result.image_size == 32 and result.feature_dim == 512 and result.max_abs_diff == 0.0
    info = json.loads((tmp_path / "r10.json").read_text())
    assert info["timm_name"] == "resnet10t" and "checkpoint_path='r10.pth'" in info["load"]
    model = timm.create_model(info["timm_name"], num_classes=0, checkpoint_path=str(tmp_path / "r10.pth")).eval()
    mean, std = torch.tensor(info["mean"]).view(1, 3, 1, 1), torch.tensor(info["std"]).view(1, 3, 1, 1)
    images = _images(4)
    with torch.no_grad():
        assert torch.equal(model((images - mean) / std), _student_features(run_dir, images))
    assert not list(tmp_path.glob(".*.tmp"))


def test_timm_export_of_a_small_stem_student(tmp_path: Path) -> None:
    """The JSON's small_stem makes the check rebuild the 3x3 stem the student trained with."""
    student = Student(StudentConfig(arch="resnet18", small_stem=True, proj_hidden=32), 16, mean=(0.2, 0.3, 0.4), std=(0.5, 0.6, 0.7))
    export_student(student, tmp_path)
    (tmp_path / "config.yaml").write_text("data:\n  image_size: 24\n")
    result = export_model(tmp_path, "timm", batch=2)
    assert result.path == tmp_path / "export" / "student_timm.pth" and result.image_size == 24 and result.max_abs_diff == 0.0
    assert json.loads((tmp_path / "export" / "student_timm.json").read_text())["small_stem"] is True


def test_torchscript_export_round_trips(run_dir: Path, tmp_path: Path) -> None:
    result = export_model(run_dir, "torchscript", tmp_path, batch=4)  # a folder: the default name inside it
    assert result.path == tmp_path / "student_torchscript.pt"
    assert [c.batch for c in result.checks] == [4, 1] and all(c.ok for c in result.checks)
    extra = {"ssl_kd.json": ""}
    model = torch.jit.load(str(result.path), _extra_files=extra)
    assert json.loads(extra["ssl_kd.json"])["image_size"] == 32
    for n in (3, 6):
        images = _images(n)
        with torch.no_grad():
            _assert_close(model(images), _student_features(run_dir, images))


@pytest.mark.parametrize("exporter", ["dynamo", "legacy"])
def test_onnx_export_has_a_dynamic_batch(run_dir: Path, tmp_path: Path, exporter: str) -> None:
    result = export_model(run_dir, "onnx", tmp_path / "student.onnx", batch=5, onnx_exporter=exporter)
    assert result.exporter == exporter and result.opset == export.ONNX_OPSET
    assert [c.batch for c in result.checks] == [5, 1] and all(c.ok for c in result.checks)
    assert result.files == [tmp_path / "student.onnx"]  # self-contained: no external data file
    session = onnxruntime.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    assert json.loads(session.get_modelmeta().custom_metadata_map["ssl_kd"])["timm_name"] == "resnet10t"
    for n in (2, 7):
        images = _images(n)
        features = torch.from_numpy(np.asarray(session.run(None, {"images": images.numpy()})[0]))
        _assert_close(features, _student_features(run_dir, images))


def test_a_failed_check_writes_nothing(run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "old.pth").write_bytes(b"a good earlier file")
    monkeypatch.setattr(export, "RTOL", -1.0)  # no difference passes
    with pytest.raises(UserError, match="differs from the PyTorch student"):
        export_model(run_dir, "timm", tmp_path / "old.pth")
    assert (tmp_path / "old.pth").read_bytes() == b"a good earlier file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.pth"]


def _cli_error(capsys: pytest.CaptureFixture, *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        cli_main(lambda: main(list(argv)))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_bad_input_is_one_line(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    assert "does not exist" in _cli_error(capsys, "export", str(tmp_path / "nothing"), "--format", "onnx")
    assert "unknown export format 'tflite'" in _cli_error(capsys, "export", str(run_dir), "--format", "tflite")
    assert "is not a run directory" in _cli_error(capsys, "export", str(tmp_path), "--format", "timm")
    (tmp_path / "file").write_text("")
    assert "cannot write" in _cli_error(capsys, "export", str(run_dir), "--format", "timm", "--out", str(tmp_path / "file" / "x.pth"))
    assert "required: --format" in _cli_error(capsys, "export", str(run_dir))
    assert "no command given" in _cli_error(capsys)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    assert "pip install 'ssl_kd[onnx]'" in _cli_error(capsys, "export", str(run_dir), "--format", "onnx")


def test_cli_prints_the_checks(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    result = main(["export", str(run_dir), "--format", "timm", "--out", str(tmp_path / "s.pth"), "--batch", "2"])
    out = capsys.readouterr().out
    assert f"exported resnet10t (512-d features, 32 px input in [0, 1]) as timm: {tmp_path / 's.pth'}" in out
    assert "batch 2: max abs diff 0.00e+00" in out and result.files[1] == tmp_path / "s.json"


def test_python_dash_m_entry_point(tmp_path: Path) -> None:
    """`python -m ssl_kd` runs `__main__` under `cli_main` (a command-line error needs no torch import: fast)."""
    result = subprocess.run([sys.executable, "-m", "ssl_kd", "export", "--format", "onnx"], cwd=tmp_path, env=_env(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == "error: the following arguments are required: RUN_DIR; see python -m ssl_kd export --help\n"
