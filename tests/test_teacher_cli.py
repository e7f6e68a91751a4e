"""`python -m ssl_kd.teachers inspect FILE`: a MoCo v2 file is described; every malformed file is one
`error: ` line on stderr and exit status 2, never a traceback.

The cases run in-process through the real `cli_main` (a subprocess costs ~6 s of imports); two
subprocess runs, one success and one failure, prove the `python -m` entry point itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

from ssl_kd.errors import cli_main
from ssl_kd.teachers.__main__ import main

REPO = Path(__file__).resolve().parents[1]


class PickledConfig:
    """A class only this module defines, pickled into a checkpoint as a training script's config."""

    def __init__(self) -> None:
        self.lr = 0.03


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One file per case, all from one random resnet10t."""
    root = tmp_path_factory.mktemp("teacher_cli")
    torch.manual_seed(0)
    backbone = timm.create_model("resnet10t", num_classes=0).state_dict()
    paths = {name: root / f"{name}.pth" for name in ("moco", "plain", "missing", "extra", "shape", "foreign", "objects")}
    state = {f"module.encoder_q.{k}": v for k, v in backbone.items()}
    state.update({"module.encoder_q.fc.0.weight": torch.randn(512, 512), "module.encoder_q.fc.0.bias": torch.zeros(512),
                  "module.encoder_q.fc.2.weight": torch.randn(128, 512), "module.encoder_q.fc.2.bias": torch.zeros(128),
                  "module.queue": torch.randn(128, 64), "module.queue_ptr": torch.zeros(1, dtype=torch.long)})
    torch.save({"epoch": 200, "arch": "resnet10t", "state_dict": state, "optimizer": {"state": {}}}, paths["moco"])
    torch.save(backbone, paths["plain"])
    torch.save({k: v for k, v in backbone.items() if k != "layer4.0.conv2.weight"}, paths["missing"])
    torch.save({**backbone, "adapter.weight": torch.ones(3)}, paths["extra"])
    torch.save({**backbone, "conv1.0.weight": torch.randn(24, 3, 5, 5)}, paths["shape"])
    torch.save({"state_dict": backbone, "arch": "resnet10t", "config": PickledConfig()}, paths["foreign"])
    torch.save({"state_dict": PickledConfig(), "arch": "resnet10t"}, paths["objects"])  # no tensor outside it
    data = paths["plain"].read_bytes()
    (root / "truncated.pth").write_bytes(data[: len(data) // 2])
    (root / "notes.txt").write_text("these are my notes, not weights\n")
    return {**paths, "truncated": root / "truncated.pth", "text": root / "notes.txt"}


def run_in_process(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """The command as `python -m ssl_kd.teachers` runs it, minus the interpreter start: (status, stdout, stderr)."""
    with pytest.raises(SystemExit) as exited:
        cli_main(lambda: main(argv))
    out, err = capsys.readouterr()
    return exited.value.code, out, err


def start_subprocess(*args: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "ssl_kd.teachers", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_inspect_moco_v2(files: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    status, out, err = run_in_process(["inspect", str(files["moco"])], capsys)
    assert status == 0 and err == ""
    for line in ("format:     moco", "arch:       resnet10t (from the file's own arch field)", "embed dim:  512",
                 "MoCo v2 head", "queue_ptr", "optimizer", "logits:     no", "meta:       method=mocov2, epochs=200"):
        assert line in out, line
    n = len(timm.create_model("resnet10t", num_classes=0).state_dict())
    assert f"tensors:    {n} loaded of {n + 6} in the file" in out


def test_inspect_plain_file_with_flag(files: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    status, out, _ = run_in_process(["inspect", str(files["plain"]), "--teacher-arch", "resnet10t"], capsys)
    assert status == 0
    assert "format:     timm" in out and "resnet10t (inferred" in out and "ignored:    nothing" in out


@pytest.mark.parametrize(
    "case, extra, phrase",
    [
        ("truncated", [], "not a readable PyTorch checkpoint"),
        ("text", [], "not a readable PyTorch checkpoint"),
        ("missing", ["--teacher-arch", "resnet10t"], "1 missing keys (layer4.0.conv2.weight)"),
        ("extra", ["--teacher-arch", "resnet10t"], "1 unexpected keys (adapter.weight)"),
        ("shape", ["--teacher-arch", "resnet10t"], "shape mismatch at conv1.0.weight"),
        ("plain", ["--teacher-arch", "resnet18"], "shapes say resnet10t but --teacher-arch is resnet18"),
        ("moco", ["--teacher-arch", "resnet50"], "says its arch is resnet10t but --teacher-arch is resnet50"),
        ("missing", [], "does not say its architecture; pass --teacher-arch"),
        ("plain", ["--teacher-format", "simclr-v9"], "unknown teacher format 'simclr-v9'"),
        ("objects", [], f"pickles {__name__}.PickledConfig and holds no tensors outside those objects"),
    ],
)
def test_bad_input_is_one_error_line(files: dict[str, Path], capsys: pytest.CaptureFixture,
                                     case: str, extra: list[str], phrase: str) -> None:
    status, out, err = run_in_process(["inspect", str(files[case]), *extra], capsys)
    lines = err.splitlines()
    assert status == 2 and out == ""
    assert len(lines) == 1 and lines[0].startswith("error: ") and phrase in lines[0], err
    assert "Traceback" not in err


def test_entry_point(files: dict[str, Path], tmp_path: Path) -> None:
    """Both runs at once: each spends its time importing torch and timm. The file that loads pickles a
    class of this test module, which the fresh process could not even import: it is stood in for."""
    ok = start_subprocess("inspect", str(files["foreign"]), cwd=tmp_path)
    refused = start_subprocess("inspect", str(files["objects"]), cwd=tmp_path)
    ok_out, ok_err = ok.communicate(timeout=300)
    _, refused_err = refused.communicate(timeout=300)
    assert ok.returncode == 0, ok_err[-2000:]
    assert "format:       timm" in ok_out and "embed dim:    512" in ok_out
    assert f"stood in for: {__name__}.PickledConfig (1 pickled, read as inert stand-ins, never run)" in ok_out

    assert refused.returncode == 2
    lines = refused_err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--trust-checkpoint" in lines[0], refused_err
