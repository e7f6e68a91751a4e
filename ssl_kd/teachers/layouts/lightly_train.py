"""lightly-train (lightly-ai/lightly-train): its Lightning checkpoints and its exported models.

What lightly-train writes, read from its source (github.com/lightly-ai/lightly-train; the newest
snapshot read says `__version__ = "0.17.0"` and is past the v0.17.0 tag, i.e. what 0.18 ships;
v0.11.0 and v0.17.0 write the same layout). `lightly_train.train(out=OUT, model="timm/<name>", ...)`
writes:

* `OUT/checkpoints/last.ckpt` (and the best one): a Lightning checkpoint, `{"epoch", "global_step",
  "pytorch-lightning_version", "state_dict", "loops", "callbacks", "optimizer_states",
  "lr_schedulers", "lightly_train"}`. `lightly_train` is added by the `ModelCheckpoint` callback
  (`src/lightly_train/_callbacks/checkpoint.py`, `_checkpoint.py` `CheckpointLightlyTrain.to_dict`):
  `{"version", "date", "models": {"model": <the timm nn.Module>, "wrapped_model": <TIMMModelWrapper>,
  "embedding_model": <EmbeddingModel>}, "normalize_args": {"mean": [...], "std": [...]},
  "license_info"}`. Those module objects are why `weights_only=True` refuses the file; they are read
  as inert stand-ins (`ssl_kd/safe_unpickle.py`) and ignored. The weights are the method's attributes
  in `state_dict`: the model passed to the method is an `EmbeddingModel` (`_models/embedding_model.py`:
  `wrapped_model`, `embed_head`), whose `TIMMModelWrapper` (`_models/timm/timm.py`) keeps the timm
  model as `_model` (torchvision ResNets: `ResNetModelWrapper`, `_features` = the
  `IntermediateLayerGetter` up to `layer4`, torchvision = timm names). Which attribute holds it
  depends on the method (`_methods/*/`): `distillation*` keeps it as `student_embedding_model` (its
  DINOv2 teacher is removed from the file by `on_save_checkpoint`) beside `student_projection_head.*`
  and the `teacher_queue` buffer; `dino`/`dinov2` keep it as `teacher_embedding_model` (the EMA
  teacher) beside a `student_embedding_model` deep copy and the heads; `simclr`, `densecl`, `detcon`
  as `embedding_model`. The weights taken are that model's, the one lightly-train itself exports:
  `teacher_embedding_model.wrapped_model._model.*`, else `embedding_model...`, else
  `student_embedding_model...`. timm builds the model with its default classifier (`num_classes`
  1000 unless `model_args` say otherwise); pretraining never uses or trains it, so its `fc.*` /
  `head.*` is dropped as ignored. Mean/std come from `normalize_args`. The methods that keep the
  model as `embedding_model` keep their head as `projection_head.layers.*` (lightly's
  `SimCLRProjectionHead`: Linear-BN-ReLU-Linear-BN); it is kept as the teacher's projection head
  (`teacher.embedding=head`). The DINO and distillation heads are not (DINO's ends in
  prototypes, distillation's maps onto a DINOv2 teacher's space) and are listed as ignored.
* `OUT/exported_models/exported_last.pt`, written every epoch by the `ModelExport` callback
  (`_callbacks/export.py` -> `_models/timm/timm_package.py` `export_model`):
  `torch.save(model.state_dict(), out)`, a bare state dict of the timm model with timm's key names
  (classifier included); `lightly_train.export(part="model", format="torch_state_dict")` writes the
  same. Nothing in it says lightly-train wrote it, so the `lightly_train_export` layout claims it by
  its place (`exported_models/*.pt`, or a file named `exported_last.pt`); elsewhere, pass
  `--teacher-format lightly_train_export`. It converts like the layout that recognises the weights
  (a plain timm ResNet/ViT, a DINOv2 backbone ...), but drops the untrained classifier instead of
  keeping it for logits.

The architecture comes from the shapes (ResNets, ViTs; `resnet_arch.py`, `vit_arch.py`), else
`--teacher-arch`.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Mapping

from ..formats import (
    Converted,
    StateDict,
    head_under,
    inner_state_dict,
    is_state_dict,
    layouts,
    register_layout,
    strip_wrapper_prefixes,
    unused_top_level,
)
from .dino import backbone_converted
from .resnet_arch import resnet_converted, split_prefix
from .vit_arch import read_vit

# the method attribute holding the model lightly-train exports, most specific first (see the docstring)
_EMBEDDING_MODELS = ("teacher_embedding_model.", "embedding_model.", "student_embedding_model.")
_WRAPPERS = ("wrapped_model._model.", "wrapped_model._features.")  # TIMMModelWrapper, torchvision ResNetModelWrapper
EXPORT = "lightly_train_export"
_HEAD = "projection_head.layers."  # the `embedding_model` methods' head (simclr; see the docstring)


def _backbone_prefix(state_dict: Mapping[str, Any]) -> str | None:
    for model in _EMBEDDING_MODELS:
        for wrapper in _WRAPPERS:
            if any(key.startswith(model + wrapper) for key in state_dict):
                return model + wrapper
    return None


def _lightly_state_dict(obj: Any) -> tuple[StateDict | None, str | None]:
    if not isinstance(obj, Mapping) or "state_dict" not in obj:
        return None, None
    state_dict, _ = inner_state_dict(obj, ("state_dict",))
    prefix = _backbone_prefix(state_dict) if state_dict is not None else None
    return (state_dict, prefix) if prefix else (None, None)


def _is_lightly_train(obj: Any) -> bool:
    return _lightly_state_dict(obj)[0] is not None


def _group(keys: list[str], model: str) -> list[str]:
    """`student_projection_head.* (4 tensors)`, `teacher_queue`; keys of the chosen model by its next component."""
    def label(key: str) -> str:
        depth = 2 if key.startswith(model) else 1
        return ".".join(key.split(".")[:depth])

    counts = Counter(label(key) for key in keys)
    return [name if n == 1 and name in keys else f"{name}.* ({n} tensors)" for name, n in counts.items()]


def _normalisation(obj: Mapping[str, Any]) -> dict[str, tuple[float, float, float]]:
    info = obj.get("lightly_train")
    args = info.get("normalize_args") if isinstance(info, Mapping) else None
    out = {}
    for name in ("mean", "std"):
        values = args.get(name) if isinstance(args, Mapping) else None
        if isinstance(values, (list, tuple)) and len(values) == 3 and all(isinstance(v, (int, float)) for v in values):
            out[name] = tuple(float(v) for v in values)
    return out


def _backbone(state_dict: StateDict, **fields: Any) -> Converted:
    """ViT geometry (dynamic size, position-embedding fit) for a timm ViT, the ResNet recipe otherwise."""
    if read_vit(state_dict) is not None:
        converted = backbone_converted(state_dict, None, fields.pop("ignored", []), fields.pop("meta", {}))
        for name, value in fields.items():
            setattr(converted, name, value)
        return converted
    return resnet_converted(state_dict, **fields)


@register_layout(
    "lightly_train",
    "a lightly-train Lightning .ckpt: the timm model under *embedding_model.wrapped_model._model.* in 'state_dict'",
    _is_lightly_train,
    priority=35,
)
def _convert_lightly_train(obj: Mapping[str, Any]) -> Converted:
    state_dict, prefix = _lightly_state_dict(obj)
    prefix = prefix or ""
    backbone, rest = split_prefix(state_dict or {}, prefix)
    model = prefix.split(".", 1)[0]
    head = head_under(state_dict or {}, _HEAD, name="lightly-train SimCLR projection head") if model == "embedding_model" else None
    ignored = _group([key for key in rest if head is None or not key.startswith(_HEAD)], model + ".")
    ignored += [f"{name} (its pickled model objects; only normalize_args is read)" if name == "lightly_train" else name
                for name in unused_top_level(obj, "state_dict")]
    meta: dict[str, Any] = {"weights": model}
    info = obj.get("lightly_train")
    if isinstance(info, Mapping) and isinstance(info.get("version"), str):
        meta["lightly_train"] = info["version"]
    if isinstance(obj.get("epoch"), int):
        meta["epochs"] = obj["epoch"]
    if prefix.endswith("._features."):
        meta["backbone"] = "torchvision ResNet (IntermediateLayerGetter)"
    converted = _backbone(backbone, ignored=ignored, meta=meta, **_normalisation(obj))
    converted.head = head
    return converted


def _is_export(obj: Any) -> bool:
    return is_state_dict(obj)


@register_layout(
    EXPORT,
    "lightly-train's exported_models/exported_last.pt: a bare timm state dict, its untrained classifier dropped",
    _is_export,
    priority=110,  # by content it is any plain state dict: only its place (file_patterns) or the flag selects it
    file_patterns=("exported_models/*.pt", "exported_last.pt"),
)
def _convert_export(obj: Mapping[str, Any]) -> Converted:
    state_dict = strip_wrapper_prefixes(obj)
    specific = [layout for layout in layouts() if layout.name not in (EXPORT, "timm") and layout.detect(state_dict)]
    if specific:  # e.g. a DINOv2 backbone: converted as that layout converts it
        converted = specific[0].convert(state_dict)
        converted.meta = {**converted.meta, "weights": f"lightly-train export, read as {specific[0].name}"}
        return converted
    return _backbone(state_dict, meta={"weights": "lightly-train export"})
