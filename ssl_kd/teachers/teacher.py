"""`Teacher`: a frozen encoder (`ssl_kd.encoder.FrozenEncoder`) with what a teacher file adds (its SSL
projection head, a supervised classifier, the side it was trained at), and what loading it found."""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..embeddings import Embeddings
from ..encoder import FrozenEncoder
from ..errors import UserError
from .heads import HeadInfo

EMBEDDINGS = ("backbone", "head")  # the spaces a teacher's `emb` can be in (teacher.embedding, besides auto)


@dataclass
class LoadInfo:
    """What `load_teacher` found in the file (logged in one line, printed by `python -m ssl_kd.teachers inspect`)."""

    arch_origin: str = "flag"  # where the arch came from: "file" | "shapes" | "flag" | "timm tag"
    loaded: int = 0  # tensors loaded into the model (strictly: all of its state)
    in_file: int = 0  # tensors anywhere in the file (weights, heads, momentum copies, optimizer state)
    ignored: list[str] = field(default_factory=list)  # what was deliberately left out, e.g. "encoder_k.* (320 tensors)"
    head_problem: str | None = None  # why the file's projection head could not be built, when it could not


class Teacher(FrozenEncoder):
    """A frozen timm backbone that normalises and sizes its own input and returns `Embeddings`.

    A `FrozenEncoder` (`ssl_kd/encoder.py`) with what a teacher file adds. Input: images in [0, 1],
    float [B, 3, H, W], not normalised. The teacher applies its own mean/std (the student applies its
    own too: each network sees the normalisation it was trained with).

    Resolution: `input_size` is the side the checkpoint was trained at, when the file says it (None
    otherwise); it is recorded, never enforced. `image_size` is the side the backbone sees: None means
    whatever it is given (the data's resolution, which the student always sees); an int (config key
    `teacher.image_size`) makes the teacher resize every batch to image_size x image_size on the fly
    (bilinear, antialiased) before its backbone, e.g. `teacher.image_size=224` for an ImageNet teacher
    distilled on 96 px STL-10 images. ViT teachers at a side other than their `input_size` need their
    position embeddings resampled; that is the layout's job (`Converted.adapt` / `model_kwargs`).

    Output: `Embeddings(feat=f, emb=e, logits=l)`, f the pooled pre-logits backbone feature
    [B, feat_dim], computed without autograd. `e` is f itself in the `backbone` space (the default), or
    the SSL projection head's output `projection_head(f)` in the `head` space (`with_embedding("head")`,
    config `teacher.embedding`), for files that carry their head (`formats.ProjectionHead`); `embed_dim`
    is e's width. `l` is the classifier's output when the checkpoint is a supervised classifier whose
    head was kept (`has_logits`), else None. `forward(x, maps=True)` also fills `maps`, the backbone's stage outputs
    (`ssl_kd.backbones.backbone_with_maps`), from the same single pass. Every parameter (the projection
    head's too) has `requires_grad=False`, and the module stays in eval mode whatever `.train()` is
    called with, on it or on a parent.
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        arch: str,
        mean: Sequence[float],
        std: Sequence[float],
        input_size: int | None = None,
        image_size: int | None = None,
        has_logits: bool = False,
        format: str = "unknown",
        meta: Mapping[str, Any] | None = None,
        source: str = "",
        info: LoadInfo | None = None,
        model_kwargs: Mapping[str, Any] | None = None,
        projection_head: nn.Module | None = None,
        head_info: HeadInfo | None = None,
    ) -> None:
        super().__init__(backbone, arch=arch, mean=mean, std=std, image_size=image_size, format=format, source=source)
        self.projection_head = projection_head  # the file's SSL head, frozen with the backbone (None: none in the file)
        self.head_info = head_info if projection_head is not None else None
        self.embedding = "backbone"  # which space `emb` is in; `with_embedding` gives the other view
        self.model_kwargs = dict(model_kwargs or {})  # extra timm.create_model kwargs, kept when re-saved
        self.input_size = input_size
        self.has_logits = has_logits
        self.meta = dict(meta or {})
        self.info = info or LoadInfo()
        self.freeze()  # the projection head too

    @classmethod
    def from_module(cls, module: nn.Module, mean: Sequence[float], std: Sequence[float], *, name: str | None = None,
                    feat_dim: int | None = None, image_size: int | None = None, probe_size: int = 32) -> Teacher:
        """Any `nn.Module` that maps normalised images [B, 3, H, W] to features [B, D] as a frozen teacher.

        `mean`/`std` are the normalisation the module was trained with (the teacher applies them, as for
        a checkpoint). `feat_dim` is D; when not given it is the module's `num_features` attribute if it
        has one, else measured by one forward pass of two `probe_size` x `probe_size` images (eval mode,
        no autograd). The module is not copied: it is frozen in place (`requires_grad=False`, eval mode).
        It has no stage maps and no classifier, so methods that need maps (`fitnet`, `sp`) refuse it,
        and its embedding is its output (`teacher.embedding=backbone`).
        """
        if not isinstance(module, nn.Module):
            raise TypeError(f"Teacher.from_module takes an nn.Module, got {type(module).__name__}")
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"mean and std need 3 values (RGB), got {list(mean)} and {list(std)}")
        backbone = ModuleBackbone(module, feat_dim or getattr(module, "num_features", None) or
                                  _output_width(module, mean, std, probe_size))
        kind = f"{type(module).__module__}.{type(module).__qualname__}"
        return cls(backbone, arch=name or type(module).__name__, mean=mean, std=std, image_size=image_size,
                   format="nn.Module", source=kind, info=LoadInfo(arch_origin="module"))

    @torch.no_grad()
    def forward(self, x: Tensor, maps: bool = False) -> Embeddings:
        """`maps=True`: also the backbone's stage maps (`Embeddings.maps`), from the same single pass."""
        x = self.preprocess(x)
        if maps or not self.has_logits:
            feat, stage_maps = self.backbone_pass(x, maps)
        else:
            feat, stage_maps = self.backbone.forward_head(self.backbone.forward_features(x), pre_logits=True), None
        logits = self.backbone.get_classifier()(feat) if self.has_logits else None
        emb = self.projection_head(feat) if self.embedding == "head" else feat
        return Embeddings(feat=feat, emb=emb, logits=logits, maps=stage_maps)

    def with_embedding(self, space: str) -> Teacher:
        """This teacher with `emb` in `space` ("backbone" or "head"): itself when it already is, else a view
        sharing every module, parameter and buffer (nothing is copied; `feat` stays the backbone feature).
        "head" on a teacher whose file carries no usable projection head is a `UserError`."""
        if space not in EMBEDDINGS:
            raise UserError(f"teacher.embedding={space}: not a known choice; give one of: auto, {', '.join(EMBEDDINGS)}")
        if space == self.embedding:
            return self
        if space == "head" and self.projection_head is None:
            raise UserError(no_head_message(self.source, self.format, self.info.head_problem))
        view = copy.copy(self)  # nn.Module's shallow copy: the same _modules/_parameters/_buffers dicts
        view.embedding = space
        view.embed_dim = self.head_info.dim if space == "head" else self.feat_dim
        return view

    def embedding_line(self) -> str:
        """`head (MoCo v2 fc MLP, 128-d)` or `backbone (2048-d)`: the space `emb` is in, for logs and the report."""
        if self.embedding == "head":
            return f"head ({self.head_info.line()})"
        return f"backbone ({self.feat_dim}-d)"

    def extra_repr(self) -> str:
        logits = ", has_logits=True" if self.has_logits else ""
        return (f"arch={self.arch}, format={self.format}, embedding={self.embedding}, embed_dim={self.embed_dim}{logits}, "
                f"source={self.source!r}")


class ModuleBackbone(nn.Module):
    """A user's feature network as a teacher backbone: `num_features` for the teacher, and a check that
    every output is [B, num_features] (`Teacher.from_module`)."""

    def __init__(self, module: nn.Module, num_features: int) -> None:
        super().__init__()
        self.module = module
        self.num_features = int(num_features)

    def forward(self, x: Tensor) -> Tensor:
        out = self.module(x)
        if not isinstance(out, Tensor) or out.shape != (x.shape[0], self.num_features):
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"the teacher module {type(self.module).__name__} returned {shape} for {x.shape[0]} images; "
                             f"Teacher.from_module needs features [B, {self.num_features}] (pool and flatten inside the module)")
        return out


def _output_width(module: nn.Module, mean: Sequence[float], std: Sequence[float], side: int) -> int:
    """D of the module's [B, D] output, from one no-grad forward pass of two normalised mid-grey images."""
    was_training = module.training
    module.eval()
    try:
        device = next((t.device for t in (*module.parameters(), *module.buffers())), torch.device("cpu"))
        x = (torch.full((2, 3, side, side), 0.5, device=device) - torch.tensor(mean, device=device).view(1, 3, 1, 1)) \
            / torch.tensor(std, device=device).view(1, 3, 1, 1)
        with torch.no_grad():
            out = module(x)
    finally:
        module.train(was_training)
    if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[0] != 2:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"the teacher module {type(module).__name__} returned {shape} for 2 images; Teacher.from_module "
                         "needs features [B, D] (pool and flatten inside the module)")
    return int(out.shape[1])


def no_head_message(source: str, format: str, problem: str | None = None) -> str:
    """The one line for `teacher.embedding=head` on a file without a usable projection head."""
    why = f"has a projection head that cannot be used ({problem})" if problem else "carries no SSL projection head"
    return (f"teacher.embedding=head: {source or 'the teacher'} ({format} format) {why}; "
            "use teacher.embedding=backbone (or auto)")


def note_resolution(teacher: Teacher) -> Teacher:
    """Log one line when the teacher will see images at a side other than the one it was trained at."""
    trained, seen = teacher.input_size, teacher.image_size
    if trained and seen and trained != seen:
        logging.getLogger("ssl_kd").warning(
            "teacher %s was trained at %d px but will see %d px images; set teacher.image_size=%d to resize its "
            "input (the student keeps the data's resolution)", teacher.source, trained, seen, trained,
        )
    return teacher
