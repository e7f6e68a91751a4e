"""Typed run configuration: dataclass defaults, YAML presets, `key.sub=value` overrides.

One dataclass per concern; `Config` holds them all. `load_config(file, overrides)` merges, in
order, the dataclass defaults, a YAML file (`--config configs/x.yaml`) and command-line overrides
(`train.epochs=5 loss.queue_size=1024`), through OmegaConf's structured configs, so an unknown key
or a value of the wrong type is a one-line `UserError` naming the key and the fix.
"""

from __future__ import annotations

import difflib
from dataclasses import MISSING, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import UserError


@dataclass
class DataConfig:
    """The dataset and its views. Fields left at None take the dataset's own default
    (`DATASET_DEFAULTS` below: e.g. no flips for digits, blur for 96 px and up)."""

    name: str = "digits"  # digits | cifar10 | cifar100 | stl10 | imagefolder | folder (unlabeled images, train only)
    root: Optional[str] = None  # where torchvision datasets live / the ImageFolder root / the folder of images
    download: bool = True  # torchvision datasets: download when missing (needs internet)
    image_size: Optional[int] = None  # side of the square images the networks see
    num_workers: int = 2
    # views per image: "crops" = two SimCLR crops; "rotations" = one crop turned by 0/90/180/270
    # degrees, four views (DLKD's input)
    views: str = "crops"
    # every augmented view a pure function of (train.seed, image, draw) instead of the loader workers' running
    # streams: the same run whatever data.num_workers, and bit-exact on resume mid-epoch (the teacher cache
    # always seeds its views); false = the workers' own streams (a resumed run then draws other augmentations)
    seeded_views: bool = True
    # SSL augmentation (lightly's SimCLR view transform)
    min_scale: Optional[float] = None  # RandomResizedCrop scale lower bound
    hflip: Optional[float] = None  # horizontal-flip probability
    color_jitter: Optional[float] = None  # colour-jitter probability
    jitter_strength: Optional[float] = None
    grayscale: Optional[float] = None  # random-grayscale probability
    blur: Optional[float] = None  # Gaussian-blur probability
    rotation: Optional[float] = None  # random-rotation probability
    rotation_degrees: float = 15.0
    val_fraction: float = 0.2  # ImageFolder without train/ and val/: fraction held out as test
    subset: Optional[int] = None  # use only the first N images of each split (smoke tests, quick looks)
    # unreadable or corrupt image files (any file-based dataset) are replaced by the next readable one; the run
    # stops once more than floor(max_bad_fraction * N) of the N training images are unreadable (empty files count)
    max_bad_fraction: float = 0.01
    # data.name=folder: where the cached file lists live (one JSON per root); None = $XDG_CACHE_HOME/ssl_kd/file-lists,
    # else ~/.cache/ssl_kd/file-lists
    file_list_dir: Optional[str] = None


@dataclass
class TeacherConfig:
    path: Optional[str] = None  # checkpoint file or timm:NAME.TAG; None: the embedded default teacher (digits only)
    arch: Optional[str] = None  # timm name, for checkpoints that do not say it
    format: str = "auto"  # checkpoint layout; auto detects it (python -m ssl_kd.teachers inspect FILE shows the choice)
    trust_checkpoint: bool = False  # full unpickle of files that pickle foreign classes: only for trusted sources
    image_size: Optional[int] = None  # side the teacher sees; None: the data's (inputs are resized to an int)
    # the space the methods see as the teacher's embedding: backbone (its pooled feature) | head (its SSL projection
    # head's output, for files that carry one) | auto (head for seed and compress*, whose papers use it, when the
    # file has one; backbone otherwise: ssl_kd.distillation.HEAD_SPACE_METHODS). Evaluation always scores the backbone.
    embedding: str = "auto"
    extra: list[str] = field(default_factory=list)  # more teachers (--teacher repeated); arch from the file or its shapes
    weights: list[float] = field(default_factory=list)  # loss weight per teacher, primary first; empty: 1.0 each


@dataclass
class StudentConfig:
    arch: str = "resnet10t"  # any timm model name
    small_stem: bool = False  # 3x3 stride-1 first conv and no max-pool, for 32 px images
    proj_hidden: int = 2048  # hidden width of the projector MLP to the teacher's width
    init_seed: int = 0  # the random-init baseline uses the same seed


@dataclass
class KDConfig:  # Hinton et al. 2015 (RepDistiller CIFAR defaults)
    temperature: float = 4.0  # on real logits; on pseudo-logits the temperature is loss.pseudo_logit_temperature
    weight: float = 1.0


@dataclass
class CKDConfig:  # Zhu et al. 2024, ZhouXinzzzzz/CKD (ImageNet: w_cl 10, tau 1)
    temperature: float = 1.0
    weight: float = 10.0


@dataclass
class DISTConfig:  # Huang et al. 2022 (ImageNet: tau 1, beta = gamma = 2 after the kd weight)
    temperature: float = 1.0
    beta: float = 2.0  # inter-class relation (per sample)
    gamma: float = 2.0  # intra-class relation (per class)


@dataclass
class STKDConfig:  # Zhao et al. 2021 (no official code: reconstructed from the paper; README "Methods")
    temperature: float = 4.0
    mixup_alpha: float = 1.0
    weight: float = 1.0


@dataclass
class SEEDConfig:  # Fang et al. 2021, jacobswan1/SEED
    student_temperature: float = 0.2
    teacher_temperature: float = 1e-4
    weight: float = 1.0


@dataclass
class CompRessConfig:  # Abbasi Koohpayegani et al. 2020, UMBCvision/CompRess
    temperature: float = 0.04
    queues: int = 1  # 1: one bank of teacher anchors; 2: teacher bank + momentum-student bank
    momentum: float = 0.999  # EMA of the momentum student (2q)
    weight: float = 1.0


@dataclass
class CRDConfig:  # Tian et al. 2020, HobbitLong/RepDistiller
    temperature: float = 0.07
    embed_dim: int = 128
    negatives: int = 4096  # 16384 in the paper (ImageNet-sized banks)
    momentum: float = 0.5  # memory-bank update
    weight: float = 0.8


@dataclass
class RKDConfig:  # Park et al. 2019 (RepDistiller weights)
    distance_weight: float = 25.0
    angle_weight: float = 50.0


@dataclass
class SPConfig:  # Tung & Mori 2019
    weight: float = 3000.0


@dataclass
class FitNetConfig:  # Romero et al. 2015 (RepDistiller: hint at the middle stage, weight 100)
    weight: float = 100.0
    hint_stage: int = 2  # index of the backbone stage whose feature map is the hint


DLKD_CONTRASTS = ("queue", "supcon")


@dataclass
class DLKDConfig:  # Ding et al. 2024, ifding/DLKD: total = d * align + a * corr + b * contrast (ssl_kd/losses/dlkd.py)
    # d, a, b measured on the embedded digits default (README "Choosing DLKD's weights"); the paper's scripts use
    # d=10 a=20 b=0.5 (scripts/run_imagenet_mlkd.sh) and d=20 a=50 b=1 (scripts/run_cifar_mlkd.sh): the presets
    align_weight: float = 1.0  # d
    corr_weight: float = 2.0  # a
    contrast_weight: float = 1.0  # b
    corr_temperature: float = 0.5  # tau_c (the reference's CorrLoss)
    contrast_temperature: float = 0.07  # tau (the reference's SupConLoss)
    # queue: InfoNCE against the momentum queue of teacher embeddings (this project's label-free variant);
    # supcon: the reference's SupConLoss without labels (instance form, in-batch negatives, linear heads)
    contrast: str = "queue"
    supcon_dim: int = 128  # width of the supcon heads (the reference's feat_dim)


@dataclass
class LossConfig:
    method: str = "dlkd"
    dlkd: DLKDConfig = field(default_factory=DLKDConfig)
    # momentum queue of teacher embeddings (negatives; anchors of pseudo-logits); keep it below the number of
    # training images, or the queue holds the positive's own embedding as a negative
    queue_size: int = 1024
    # logit methods with label-free teachers: logits = cos(embedding, queue anchors) / pseudo_logit_temperature,
    # their one temperature (kd/stkd/dist.temperature apply to a supervised teacher's real logits only)
    pseudo_logit_temperature: float = 0.1
    kd: KDConfig = field(default_factory=KDConfig)
    ckd: CKDConfig = field(default_factory=CKDConfig)
    dist: DISTConfig = field(default_factory=DISTConfig)
    stkd: STKDConfig = field(default_factory=STKDConfig)
    seed: SEEDConfig = field(default_factory=SEEDConfig)
    compress: CompRessConfig = field(default_factory=CompRessConfig)
    crd: CRDConfig = field(default_factory=CRDConfig)
    rkd: RKDConfig = field(default_factory=RKDConfig)
    sp: SPConfig = field(default_factory=SPConfig)
    fitnet: FitNetConfig = field(default_factory=FitNetConfig)


@dataclass
class TrainConfig:
    epochs: int = 12
    # the GLOBAL batch: images per optimizer step summed over all processes; under torchrun each of the
    # W processes takes batch_size / W (which must divide). A config trains the same on 1 GPU or 8, so
    # train.lr needs no rescaling when the number of processes changes (README "Launching").
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_epochs: int = 1
    grad_clip: float = 3.0  # 0 disables
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 (auto: bf16 on CUDA, fp32 on CPU)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    seed: int = 0
    resume: bool = True  # continue from out/checkpoints/last.pt when it exists (the config must agree: README "Long runs")
    # checkpoints: always at the end of every epoch and when the run is asked to stop (SIGTERM, SIGUSR1, Ctrl-C)
    checkpoint_every_steps: int = 0  # also every N steps (0 = not by steps)
    checkpoint_every_minutes: float = 30.0  # also every N minutes (0 = not by time)
    keep_checkpoints: int = 0  # also keep the last K as checkpoints/step_NNNNNNNN.pt (0: last.pt and best.pt only)
    log_every: int = 10  # steps between metrics.jsonl lines
    tensorboard: bool = False  # also TensorBoard event files in out/tensorboard (needs the tensorboard package)
    # several processes (torchrun): auto = NCCL on CUDA, gloo on the CPU
    dist_backend: str = "auto"  # auto | nccl | gloo
    sync_bn: bool = False  # SyncBatchNorm: the student's BatchNorm statistics over the global batch
    # speed on one device
    channels_last: Optional[bool] = None  # NHWC memory format; None: on CUDA only
    compile: bool = False  # torch.compile the student and teacher backbones (nn.Module.compile: same state-dict keys)
    # teacher-feature cache: V > 0 gives every image V reproducible augmented draws, the teacher embeds them all
    # once (before the first epoch; reused by later runs with the same teacher, data, views, V and seed), and
    # each step trains on draws of the pool with the teacher's rows read from disk instead of calling it.
    # 0 = off (fresh augmentations every epoch, the teacher runs every step). README "Teacher-feature cache".
    teacher_cache: int = 0
    teacher_cache_dir: Optional[str] = None  # where caches live; None: <out>/teacher_cache
    teacher_cache_dtype: str = "float16"  # float16 | float32 (float32: twice the disk, exactly the live teacher's values)
    # recorded by the run (not read): processes taking part and the images each takes per step
    world_size: Optional[int] = None
    batch_per_process: Optional[int] = None


@dataclass
class EvalConfig:
    knn_k: int = 20
    knn_ks: list[int] = field(default_factory=lambda: [1, 10, 20, 50, 200])
    knn_temperature: float = 0.07
    linear_probe: bool = True
    batch_size: int = 256
    monitor_every: int = 2  # student k-NN top-1 on the test split every N epochs (and the last), in metrics.jsonl; 0 = never
    cache_dir: Optional[str] = None  # feature cache for evaluation (keyed by weights + data + transform); None = no cache
    # neighbour search of k-NN and retrieval: auto (exact; FAISS's GPU index where there is one, torch on the
    # CPU) | torch | faiss | hnsw (approximate FAISS HNSW, for banks past ~1M rows; asked for, never chosen)
    search: str = "auto"


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    # a separate labeled evaluation set (--eval-data NAME --eval-data-root DIR) for the k-NN monitor, k-NN,
    # retrieval and the probe, with its own train (bank) / test (queries) split; null: the training data's
    # splits. Its image_size defaults to the training data's (the size the networks were trained at).
    eval_data: Optional[DataConfig] = None
    out: str = "runs/default"


# Per-dataset defaults for the DataConfig fields left at None.
_NATURAL = dict(min_scale=0.08, hflip=0.5, color_jitter=0.8, jitter_strength=1.0, grayscale=0.2, blur=0.5, rotation=0.0)
_SMALL = dict(_NATURAL, min_scale=0.2, jitter_strength=0.5, blur=0.0)  # 32 px: SimCLR's CIFAR recipe
DATASET_DEFAULTS: dict[str, dict] = {
    # grey 8x8 glyphs: no flips (a mirrored 2 is not a 2), no colour, slight rotations
    "digits": dict(image_size=32, min_scale=0.4, hflip=0.0, color_jitter=0.8, jitter_strength=0.5, grayscale=0.0, blur=0.0, rotation=0.5),
    "cifar10": dict(_SMALL, image_size=32),
    "cifar100": dict(_SMALL, image_size=32),
    "stl10": dict(_NATURAL, image_size=96),
    "imagefolder": dict(_NATURAL, image_size=224),
    "folder": dict(_NATURAL, image_size=224),
}


def resolve_data_config(cfg: DataConfig) -> DataConfig:
    """Fill the fields left at None with the dataset's defaults (an unknown dataset is an error). `load_config`
    does it once, for `data`; a `DataConfig` built in code goes through it where it enters (`ssl_kd.api`,
    `build_dataset`, the view transforms). Idempotent."""
    if cfg.name not in DATASET_DEFAULTS:
        raise UserError(f"unknown dataset '{cfg.name}'; choose one of: {', '.join(DATASET_DEFAULTS)} (data.name / --data)")
    filled = {key: value for key, value in DATASET_DEFAULTS[cfg.name].items() if getattr(cfg, key) is None}
    return replace(cfg, **filled)


def load_config(config_file: str | None = None, overrides: list[str] | None = None, schema: type = Config) -> Any:
    """Defaults < YAML file < overrides, validated against `schema`; returns a typed instance whose `data`
    has its dataset's defaults filled in (`resolve_data_config`; `eval_data` takes the training data's
    size, so it is resolved against it where it is used: `evaluation.inputs.evaluation_data`)."""
    merged = OmegaConf.structured(schema)
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise UserError(f"config file {path} does not exist; pass a YAML file such as configs/digits-default.yaml")
        merged = _merge(merged, _read_yaml(path), schema, f"config file {path}")
    for item in overrides or []:
        if "=" not in item:
            raise UserError(f"override '{item}' is not key=value; write it like train.epochs=5")
        key, value = item.split("=", 1)
        key = key.strip()
        merged = _merge(merged, OmegaConf.from_dotlist([f"{key}={value}"]), schema, f"override '{item}'", key)
    cfg = OmegaConf.to_object(merged)
    if isinstance(getattr(cfg, "data", None), DataConfig):
        cfg.data = resolve_data_config(cfg.data)  # once, here: every later reader sees the dataset's defaults filled in
    return cfg


def to_dict(cfg: Any) -> dict:
    """A plain, JSON/YAML-ready dict of a config dataclass."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)


def to_yaml(cfg: Any) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def _read_yaml(path: Path):
    try:
        loaded = OmegaConf.load(path)
    except Exception as err:  # yaml.YAMLError and friends: any parse failure is bad input
        raise UserError(f"config file {path} is not valid YAML ({' '.join(str(err).split())[:160]}); fix its syntax") from None
    if not OmegaConf.is_dict(loaded):
        raise UserError(f"config file {path} must hold a mapping of sections (data:, train:, ...); it holds something else")
    return loaded


def _merge(base, extra, schema: type, source: str, written_key: str | None = None):
    try:
        return OmegaConf.merge(base, extra)
    except OmegaConfBaseException as err:
        key = written_key or getattr(err, "full_key", None) or ""
        raise UserError(_explain(err, key, schema, source)) from None


def _explain(err: OmegaConfBaseException, key: str, schema: type, source: str) -> str:
    name = type(err).__name__
    if "Key" in name or "not in struct" in str(err):
        hint = _closest_key(key, schema)
        suggestion = f"; did you mean '{hint}'?" if hint else "; see configs/digits-default.yaml for every key"
        return f"{source}: unknown config key '{key}'{suggestion}"
    message = " ".join(str(err).split("\n")[0].split())
    return f"{source}: bad value for '{key}' ({message}); give a value of the type the default has"


def _all_keys(schema: type, prefix: str = "") -> list[str]:
    keys = []
    for f in fields(schema):
        default = f.default if f.default_factory is MISSING else f.default_factory()
        if is_dataclass(default):
            keys.append(f"{prefix}{f.name}")
            keys += _all_keys(type(default), f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def _closest_key(key: str, schema: type) -> str | None:
    match = difflib.get_close_matches(key, _all_keys(schema), n=1, cutoff=0.6)
    return match[0] if match else None


@dataclass
class PretrainConfig:
    """`pipelines/pretrain_ssl.py`: a self-supervised teacher trained with lightly's SimCLR."""

    data: DataConfig = field(default_factory=DataConfig)
    arch: str = "resnet14t"
    method: str = "simclr"
    proj_dim: int = 128
    temperature: float = 0.2
    train: TrainConfig = field(default_factory=TrainConfig)
    out: str = "runs/pretrain"
