"""SSL projection heads: build the `nn.Sequential` a file's head tensors describe, generically from their keys.

A layout hands over a `formats.ProjectionHead` (tensors keyed relative to the head). `build_head` reads
the indices: `N.weight` 2-D is `nn.Linear` (with a bias when `N.bias` is stored), `N.running_mean` is
`nn.BatchNorm1d` (affine when `N.weight` is stored, as solo-learn's and SimSiam's last `affine=False` BN is
not), and each run of missing indices between two of them is the head's parameter-free activation (ReLU
for MoCo / SimCLR / solo-learn / lightly / SwAV, GELU for DINO) followed by Identity for any further gap
index (Dropout in eval). A head stored as one bare Linear (`weight`, `bias`: MoCo v1's fc, SwAV without
hidden layer, DINO with one layer) is that Linear. The indices of the file are kept, so the module's state
dict has the file's own keys and loads strictly.

The head must start at index 0, take the backbone's feature width, and chain widths layer to layer;
anything else is a `HeadError` (the file then loads as a backbone with no usable head, and
`teacher.embedding=head` says why).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass

from torch import Tensor, nn

from .formats import ProjectionHead

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}
_KEY = re.compile(r"(\d+)\.(weight|bias|running_mean|running_var|num_batches_tracked)")
_BARE = ("weight", "bias")


class HeadError(ValueError):
    """The head's tensors do not describe a head this module can build (the reason, for one line)."""


@dataclass(frozen=True)
class HeadInfo:
    """What a loaded projection head is, for the load line, `inspect` and the report."""

    name: str  # "MoCo v2 fc MLP"
    source: str  # "encoder_q.fc.*"
    layers: str  # "Linear 2048->2048, ReLU, Linear 2048->128"
    dim: int  # its output width

    def line(self) -> str:
        """`MoCo v2 fc MLP, 128-d`."""
        return f"{self.name}, {self.dim}-d"


def build_head(spec: ProjectionHead, in_dim: int) -> tuple[nn.Sequential, HeadInfo]:
    """The head module of `spec`, its weights loaded strictly, for a backbone of width `in_dim`; and its `HeadInfo`.
    A `HeadError` when the tensors do not describe one (see the module docstring)."""
    if spec.activation not in ACTIVATIONS:
        raise HeadError(f"unknown activation {spec.activation!r}")
    tensors = dict(spec.state_dict)
    if tensors and set(tensors) <= set(_BARE):  # one bare Linear
        tensors = {f"0.{k}": v for k, v in tensors.items()}
    by_index: dict[int, dict[str, Tensor]] = {}
    for key, value in tensors.items():
        match = _KEY.fullmatch(key)
        if match is None:
            raise HeadError(f"key {key!r} is not N.weight/bias/running_mean/running_var")
        by_index.setdefault(int(match.group(1)), {})[match.group(2)] = value
    if not by_index:
        raise HeadError("no tensors")
    indices = sorted(by_index)
    if indices[0] != 0:
        raise HeadError(f"its first layer is index {indices[0]}, not 0")
    modules: OrderedDict[str, nn.Module] = OrderedDict()
    width, previous = in_dim, -1
    for index in indices:
        for gap in range(previous + 1, index):  # parameter-free layers between two stored ones
            modules[str(gap)] = ACTIVATIONS[spec.activation]() if gap == previous + 1 else nn.Identity()
        module, width = _layer(index, by_index[index], width, spec.bn_eps)
        modules[str(index)] = module
        previous = index
    head = nn.Sequential(modules)
    if not any(isinstance(m, nn.Linear) for m in head):
        raise HeadError("no Linear layer")
    expected = head.state_dict()
    state = {k: tensors[k] if k in tensors else expected[k] for k in expected}  # num_batches_tracked when absent
    head.load_state_dict(state, strict=True)
    return head, HeadInfo(spec.name, spec.source, describe_layers(head), width)


def _layer(index: int, params: dict[str, Tensor], width: int, eps: float) -> tuple[nn.Module, int]:
    """The module stored at `index` and the width after it."""
    weight = params.get("weight")
    if weight is not None and weight.ndim == 2:
        if "running_mean" in params:
            raise HeadError(f"layer {index} has a 2-D weight and running statistics")
        out_dim, in_dim = weight.shape
        if in_dim != width:
            raise HeadError(f"layer {index} (Linear {in_dim}->{out_dim}) takes {in_dim} features, but {width} reach it")
        bias = params.get("bias")
        if bias is not None and tuple(bias.shape) != (out_dim,):
            raise HeadError(f"layer {index}'s bias has shape {list(bias.shape)}, not [{out_dim}]")
        return nn.Linear(in_dim, out_dim, bias=bias is not None), int(out_dim)
    mean = params.get("running_mean")
    if mean is not None and mean.ndim == 1:
        if mean.shape[0] != width:
            raise HeadError(f"layer {index} (BatchNorm1d {mean.shape[0]}) follows a {width}-d layer")
        affine = weight is not None
        return nn.BatchNorm1d(width, eps=eps, affine=affine), width
    raise HeadError(f"layer {index} is neither a Linear (2-D weight) nor a BatchNorm1d (running_mean)")


def describe_layers(head: nn.Sequential) -> str:
    """`Linear 2048->2048, ReLU, Linear 2048->128` (BatchNorm1d as `BN`, Identity left out)."""
    parts = []
    for module in head:
        if isinstance(module, nn.Linear):
            parts.append(f"Linear {module.in_features}->{module.out_features}")
        elif isinstance(module, nn.BatchNorm1d):
            parts.append(f"BN {module.num_features}" + ("" if module.affine else " (no affine)"))
        elif not isinstance(module, nn.Identity):
            parts.append(type(module).__name__)
    return ", ".join(parts)

