"""Export a run's student for use outside this tool (timm, TorchScript, ONNX), each file checked after writing.

    export_model("runs/default", "onnx")                       # -> runs/default/export/student.onnx
    python -m ssl_kd export runs/default --format torchscript  # the same from the command line

The student comes from the run directory through `ssl_kd.evaluation.models.load_eval_model` (the
loader the evaluation uses: `student_timm.pth` + `student_timm.json`). Every exported model maps
images in [0, 1] (float [B, 3, H, W], not normalized) to the student's backbone features: it applies
the student's own mean/std first (`NormalizedBackbone`), exactly `Student.features` /
`Student.backbone_pass`, and returns the pooled pre-logits feature [B, num_features] that the
evaluation reads as `.feat` (the evaluation then L2-normalizes it; the export does not).

Formats:
  * `timm`: the backbone's plain timm state dict plus the JSON beside it (timm name, small stem,
    mean/std), as the run writes them; checked by `timm.create_model(name, num_classes=0)` +
    `load_state_dict(strict=True)` (the small-stem surgery first when the JSON says so).
  * `torchscript`: `torch.jit.trace` of the normalized backbone, `torch.jit.save`d (the JSON rides
    along as the extra file `ssl_kd.json`); checked by `torch.jit.load`.
  * `onnx`: `torch.onnx.export` of the normalized backbone, input `images` [batch, 3, H, W] with a
    dynamic batch axis (H, W fixed at the image size), output `features` [batch, D], opset
    `ONNX_OPSET`; torch's dynamo (`torch.export`) exporter by default, the legacy TorchScript-based
    one on request (`onnx_exporter="legacy"`, deprecated by torch). The JSON is stored in the model's
    metadata (`ssl_kd`). Checked by `onnx.checker` and an `onnxruntime.InferenceSession` on the CPU.

The check: seeded random images at the run's image size (`batch` of them, and for TorchScript and
ONNX a second batch size too, proving the batch axis is not baked in) go through the PyTorch model
and the file loaded back by its runtime; the max abs difference must be at most `RTOL` times the
feature scale (the max abs reference feature). The file is written to a temporary name beside
`out`, checked there, and only then `os.replace`d onto `out`, so a failed export leaves nothing
half-written and never replaces a good file.
"""

from __future__ import annotations

import importlib
import json
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import timm
import torch
import yaml
from torch import Tensor, nn

from .backbones import create_backbone
from .encoder import FrozenEncoder
from .errors import UserError
from .evaluation.models import STUDENT_FILE, STUDENT_INFO, load_eval_model

FORMATS = ("timm", "torchscript", "onnx")
DEFAULT_NAMES = {"timm": "student_timm.pth", "torchscript": "student_torchscript.pt", "onnx": "student.onnx"}
EXPORT_DIR = "export"  # default --out: RUN_DIR/export/<DEFAULT_NAMES[format]>
ONNX_EXPORTERS = ("dynamo", "legacy")
ONNX_OPSET = 18  # supported by both exporters of torch 2.14 and by onnxruntime >= 1.14
RTOL = 1e-4  # allowed max abs difference, relative to the feature scale (max abs reference feature)
EXAMPLE_BATCH = 2  # the batch traced / exported (>= 2: torch.export specializes a dimension of size 1)
INSTALL_HINT = "pip install 'ssl_kd[onnx]' (in a checkout: pip install -e '.[onnx]')"


@dataclass
class Check:
    """One comparison of the exported file (loaded back by `runtime`) with the PyTorch student."""

    runtime: str
    batch: int
    max_abs_diff: float
    scale: float  # max abs reference feature
    tolerance: float  # RTOL * scale

    @property
    def ok(self) -> bool:
        return bool(self.max_abs_diff <= self.tolerance)  # False for NaN too

    def line(self) -> str:
        return (f"checked with {self.runtime}: batch {self.batch}: max abs diff {self.max_abs_diff:.2e} "
                f"(feature scale {self.scale:.3g}, tolerance {self.tolerance:.2e})")


@dataclass
class ExportResult:
    """What `export_model` wrote and how well the file reproduces the student."""

    format: str
    path: Path  # the model file
    files: list[Path]  # every file written (timm: the .pth and its .json)
    arch: str
    image_size: int
    feature_dim: int
    checks: list[Check] = field(default_factory=list)
    exporter: str | None = None  # ONNX only: "dynamo" or "legacy"
    opset: int | None = None  # ONNX only

    @property
    def max_abs_diff(self) -> float:
        return max(check.max_abs_diff for check in self.checks)

    def lines(self) -> list[str]:
        how = f" ({self.exporter} exporter, opset {self.opset})" if self.format == "onnx" else ""
        size = sum(p.stat().st_size for p in self.files) / 2**20
        head = (f"exported {self.arch} ({self.feature_dim}-d features, {self.image_size} px input in [0, 1]) as {self.format}{how}: "
                f"{', '.join(map(str, self.files))} ({size:.1f} MiB)")
        return [head, *(check.line() for check in self.checks)]


class NormalizedBackbone(nn.Module):
    """Images in [0, 1] -> `backbone((x - mean) / std)`: the student's features, as the evaluation sees them."""

    def __init__(self, backbone: nn.Module, mean, std):
        super().__init__()
        self.backbone = backbone
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1).clone())
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1).clone())

    def forward(self, images: Tensor) -> Tensor:
        return self.backbone((images - self.mean) / self.std)


def export_model(run_dir: str | os.PathLike, fmt: str, out: str | os.PathLike | None = None, *, image_size: int | None = None,
                 batch: int = 8, onnx_exporter: str = "dynamo", opset: int = ONNX_OPSET) -> ExportResult:
    """Export the student of `run_dir` as `fmt` (timm, torchscript, onnx) to `out`, check it, return what was done.

    `out` defaults to `run_dir/export/<DEFAULT_NAMES[fmt]>` (an existing directory gets that name
    inside it). `image_size` defaults to the run's `data.image_size` (config.yaml); `batch` is the
    size of the checked batch. Bad input, a missing ONNX package and a failed check are `UserError`s.
    """
    if fmt not in FORMATS:
        raise UserError(f"unknown export format '{fmt}'; choose one of: {', '.join(FORMATS)} (--format)")
    if batch < 1:
        raise UserError(f"--batch {batch}: the check needs at least one image; pass --batch 1 or more")
    if fmt == "onnx":
        if onnx_exporter not in ONNX_EXPORTERS:
            raise UserError(f"unknown ONNX exporter '{onnx_exporter}'; choose one of: {', '.join(ONNX_EXPORTERS)}")
        require_onnx(onnx_exporter)
    run_dir = Path(run_dir)
    model = load_run_student(run_dir)
    info = json.loads((run_dir / STUDENT_INFO).read_text())
    size = run_image_size(run_dir) if image_size is None else int(image_size)
    if size < 1:
        raise UserError(f"--image-size {size}; pass the side in pixels the student was trained at (e.g. 32)")
    out = output_path(run_dir, fmt, out)
    net = NormalizedBackbone(model.backbone, model.mean, model.std).eval()
    images = check_images(batch, size, seed=0)
    # the reference: the student as the evaluation runs it (the frozen model load_eval_model gives)
    references = [(images, reference_features(model, images))]
    if fmt != "timm":
        second = check_images(1 if batch > 1 else 2, size, seed=1)
        references.append((second, reference_features(model, second)))
    info = {**info, "image_size": size, "input": "float images [B, 3, H, W] in [0, 1], not normalized",
            "output": "pooled backbone features [B, D], not L2-normalized"}
    result = ExportResult(format=fmt, path=out, files=[out], arch=model.arch, image_size=size,
                          feature_dim=int(model.embed_dim))
    if fmt == "timm":
        _export_timm(model.backbone, info, out, references, result)
    elif fmt == "torchscript":
        _export_torchscript(net, info, out, check_images(EXAMPLE_BATCH, size, seed=2), references, result)
    else:
        result.exporter, result.opset = onnx_exporter, opset
        _export_onnx(net, info, out, check_images(EXAMPLE_BATCH, size, seed=2), references, result)
    return result


def load_run_student(run_dir: Path) -> FrozenEncoder:
    """The frozen student of a run directory (a `FrozenEncoder`), through the evaluation's loader (`load_eval_model`)."""
    if not run_dir.exists():
        raise UserError(f"run directory {run_dir} does not exist; pass the --out folder of a finished run (e.g. runs/default)")
    if not run_dir.is_dir():
        raise UserError(f"{run_dir} is not a directory; pass the run folder (the one holding {STUDENT_FILE})")
    if not (run_dir / STUDENT_FILE).is_file() or not (run_dir / STUDENT_INFO).is_file():
        if (run_dir / "checkpoints" / "last.pt").is_file():
            raise UserError(f"{run_dir} has a checkpoint but no {STUDENT_FILE} + {STUDENT_INFO}: the run has not finished; "
                            "rerun its training command (it resumes from checkpoints/last.pt) and export afterwards")
        raise UserError(f"{run_dir} is not a run directory (no {STUDENT_FILE} + {STUDENT_INFO}); pass the --out folder of a finished run")
    return load_eval_model(run_dir)


def run_image_size(run_dir: Path) -> int:
    """The side the student was trained at: `data.image_size` of the run's config.yaml."""
    path = run_dir / "config.yaml"
    try:
        size = (yaml.safe_load(path.read_text()) or {}).get("data", {}).get("image_size")
    except (OSError, yaml.YAMLError, AttributeError):
        size = None
    if not isinstance(size, int) or size < 1:
        raise UserError(f"cannot read data.image_size from {path}; pass --image-size N (the side the student was trained at)")
    return size


def output_path(run_dir: Path, fmt: str, out: str | os.PathLike | None) -> Path:
    """Where to write: `out`, or its default; its folder is created and proven writable here."""
    path = run_dir / EXPORT_DIR / DEFAULT_NAMES[fmt] if out is None else Path(out)
    if path.is_dir() or str(out).endswith(("/", os.sep)):
        path = path / DEFAULT_NAMES[fmt]
    if fmt == "timm" and path.suffix == ".json":
        raise UserError(f"--out {path}: the timm export writes X.pth and X.json beside it; give the .pth name")
    probe = _temp(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise UserError(f"cannot write {path}: its folder {path.parent} cannot be created or written into "
                        f"({err.strerror or err}); pass --out FILE in a writable folder") from None
    return path


def require_onnx(exporter: str = "dynamo") -> None:
    """A one-line `UserError` when a package the ONNX export and its check need is missing."""
    needed = ["onnx", "onnxruntime"] + (["onnxscript"] if exporter == "dynamo" else [])
    missing = []
    for name in needed:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise UserError(f"--format onnx needs {', '.join(needed)}, and {', '.join(missing)} is not installed; {INSTALL_HINT}")


def check_images(batch: int, size: int, seed: int) -> Tensor:
    """`batch` seeded random images in [0, 1], [batch, 3, size, size]."""
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def reference_features(model: nn.Module, images: Tensor) -> Tensor:
    """The student's `.feat` on `images`, as the evaluation computes it."""
    try:
        return model(images).feat.float()
    except Exception as err:  # e.g. a ViT refusing another resolution
        raise UserError(f"the student cannot take {images.shape[-1]} px images ({type(err).__name__}: {_short(str(err))}); "
                        "pass --image-size N with the side it was trained at (the run's data.image_size)") from None


def _export_timm(backbone: nn.Module, info: dict, out: Path, references, result: ExportResult) -> None:
    json_out = out.with_suffix(".json")
    info = {**info, "load": f"timm.create_model('{info['timm_name']}', num_classes=0, checkpoint_path='{out.name}')"}
    state = {k: v.detach().cpu() for k, v in backbone.state_dict().items()}

    def write(tmp: Path) -> None:
        torch.save(state, tmp)

    def load(tmp: Path) -> Callable[[Tensor], Tensor]:
        if info.get("small_stem"):  # stock timm model, then the 3x3 stem the run trained with
            loaded = create_backbone(info["timm_name"], small_stem=True)
        else:  # `model_kwargs`: what timm needs to rebuild the model (e.g. a ViT's dynamic_img_size), when the JSON has it
            loaded = timm.create_model(info["timm_name"], pretrained=False, num_classes=0, **info.get("model_kwargs", {}))
        loaded.load_state_dict(torch.load(tmp, map_location="cpu", weights_only=True), strict=True)
        net = NormalizedBackbone(loaded, info["mean"], info["std"]).eval()
        return lambda x: _no_grad(net, x)

    _write_checked(out, write, load, f"timm {timm.__version__} (create_model + load_state_dict)", references, result)
    tmp_json = _temp(json_out)
    try:
        tmp_json.write_text(json.dumps(info, indent=2))
        os.replace(tmp_json, json_out)
    finally:
        tmp_json.unlink(missing_ok=True)
    result.files.append(json_out)


def _export_torchscript(net: nn.Module, info: dict, out: Path, example: Tensor, references, result: ExportResult) -> None:
    def write(tmp: Path) -> None:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.\w+.* is deprecated", category=FutureWarning)
            try:
                traced = torch.jit.trace(net, example, check_trace=False)
            except Exception as err:  # an architecture the tracer cannot follow
                raise UserError(f"torch.jit.trace cannot trace {info.get('timm_name')} ({type(err).__name__}: {_short(str(err))}); "
                                "try --format onnx or --format timm") from None
            torch.jit.save(traced, str(tmp), _extra_files={"ssl_kd.json": json.dumps(info)})

    def load(tmp: Path) -> Callable[[Tensor], Tensor]:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.\w+.* is deprecated", category=FutureWarning)
            loaded = torch.jit.load(str(tmp), map_location="cpu").eval()
        return lambda x: _no_grad(loaded, x)

    _write_checked(out, write, load, f"torch.jit.load (torch {torch.__version__})", references, result)


def _export_onnx(net: nn.Module, info: dict, out: Path, example: Tensor, references, result: ExportResult) -> None:
    import onnx
    import onnxruntime

    def write(tmp: Path) -> None:
        _onnx_export(net, example, tmp, result.exporter, result.opset, info)
        model = onnx.load(str(tmp))
        onnx.helper.set_model_props(model, {"ssl_kd": json.dumps(info)})
        onnx.checker.check_model(model)
        onnx.save(model, str(tmp))

    def load(tmp: Path) -> Callable[[Tensor], Tensor]:
        session = onnxruntime.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda x: torch.from_numpy(np.asarray(session.run(None, {name: x.numpy()})[0]))

    _write_checked(out, write, load, f"onnxruntime {onnxruntime.__version__} (CPUExecutionProvider)", references, result)


def _onnx_export(net: nn.Module, example: Tensor, tmp: Path, exporter: str, opset: int, info: dict) -> None:
    """`torch.onnx.export` to one self-contained file, the batch axis dynamic."""
    names = {"input_names": ["images"], "output_names": ["features"], "opset_version": opset}
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter announces its deprecation
            if exporter == "dynamo":
                program = torch.onnx.export(net, (example,), dynamo=True, dynamic_shapes=({0: torch.export.Dim("batch")},),
                                            verbose=False, **names)
                program.save(str(tmp), external_data=False)
            else:
                torch.onnx.export(net, (example,), str(tmp), dynamo=False, verbose=False,
                                  dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}}, **names)
    except Exception as err:  # torch.export / the ONNX translation raise many types on an unsupported model
        other = "legacy" if exporter == "dynamo" else "dynamo"
        raise UserError(f"the {exporter} ONNX exporter cannot export {info.get('timm_name')} ({type(err).__name__}: "
                        f"{_short(str(err))}); try --onnx-exporter {other}, or --format torchscript") from None


def _write_checked(out: Path, write: Callable[[Path], None], load: Callable[[Path], Callable[[Tensor], Tensor]], runtime: str,
                   references, result: ExportResult) -> None:
    """Write to a temporary file beside `out`, load it back, compare with the references, then move it onto `out`."""
    tmp = _temp(out)
    try:
        write(tmp)
        run = load(tmp)
        for images, expected in references:
            result.checks.append(_compare(runtime, run(images), expected))
        del run  # release the runtime's hold on the file before it moves
        failed = [check for check in result.checks if not check.ok]
        if failed:
            check = failed[0]
            raise UserError(f"the {result.format} export differs from the PyTorch student by {check.max_abs_diff:.3g} at batch "
                            f"{check.batch} (tolerance {check.tolerance:.3g} = {RTOL:g} x feature scale {check.scale:.3g}); "
                            f"nothing was written to {out}; try another --format or --onnx-exporter")
        os.replace(tmp, out)
    except OSError as err:
        raise UserError(f"cannot write {out} ({err.strerror or err}); pass --out FILE in a writable folder") from None
    finally:
        tmp.unlink(missing_ok=True)


def _compare(runtime: str, got: Tensor, expected: Tensor) -> Check:
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    tolerance = RTOL * scale if scale > 0 else RTOL
    got = got.float()
    diff = float((got - expected).abs().max()) if got.shape == expected.shape else float("inf")
    return Check(runtime=runtime, batch=int(expected.shape[0]), max_abs_diff=diff, scale=scale, tolerance=tolerance)


def _no_grad(module: nn.Module, images: Tensor) -> Tensor:
    with torch.no_grad():
        return module(images)


def _temp(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
