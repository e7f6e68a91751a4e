"""The typed results every report is made of: one model's scores, the protocol they were measured under,
and what a run trained on and for how long.

    scores = evaluate_model(...)                   # ModelScores: knn_top1, ..., the full k-NN/retrieval/probe records
    scores.headline()                              # {"knn_top1": ..., "knn_top5": ..., "recall_at_1": ..., ...}
    Protocol.from_config(cfg.eval).line()          # "Protocol: weighted k-NN (k=20, T=0.07) ...; linear probe: ...; ..."

`ssl_kd.evaluation.report` (`RunReport`, `MultiRunReport`) and `ssl_kd.evaluation.compare`
(`Comparison`) are built from these; every one has `to_dict()` (what report.json / compare.json hold)
and `from_dict()` (which reads the files earlier versions wrote, too). Accuracies, recall@1 and MAP@R
are percent on the test split.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field, fields
from typing import Any

from ..config import EvalConfig
from .linear_probe import PROTOCOL as LINEAR_PROTOCOL

SCORE_KEYS = ("knn_top1", "knn_top5", "linear_top1", "recall_at_1", "map_at_r")  # the headline numbers, in table order


class Record:
    """A dataclass that is one JSON object: `to_dict()` leaves out the fields that are None, `from_dict()`
    takes the entries that are fields (older or newer files may carry others), `to_json()` is the text."""

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    @classmethod
    def from_dict(cls, record: dict):
        names = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in record.items() if key in names})


@dataclass
class ModelScores(Record):
    """One model's numbers under the evaluation protocol, and what the model is.

    The headline numbers (percent, test split): weighted k-NN top-1/top-5, recall@1 and MAP@R of the
    test queries against the train split, and the linear probe's top-1/top-5 when it ran. `knn`,
    `knn_classwise`, `retrieval` and `linear` are the full records of each measurement (`KNNResult.to_json()`,
    per-class accuracy, `RetrievalResult.to_json()`, `linear_probe`'s dict). The description (`arch`,
    `params`, `images_per_s`, `source`, `embedding`) is filled in by the report where it is known.
    """

    knn_top1: float
    knn_top5: float
    recall_at_1: float
    map_at_r: float
    linear_top1: float | None = None
    linear_top5: float | None = None
    feature_dim: int | None = None
    knn: dict | None = None
    knn_classwise: dict | None = None
    retrieval: dict | None = None
    linear: dict | None = None
    arch: str | None = None
    params: int | None = None
    images_per_s: float | None = None
    source: str | None = None
    embedding: dict | None = None  # the space a method saw this teacher's embedding in (`distillation.embedding_record`)

    def headline(self) -> dict[str, float]:
        """The headline numbers that were measured, by `SCORE_KEYS` name."""
        return {key: getattr(self, key) for key in SCORE_KEYS if getattr(self, key) is not None}


@dataclass(frozen=True)
class Protocol:
    """How the numbers were measured; its text is built from these fields (`line()`)."""

    knn_k: int
    knn_temperature: float
    linear_probe: bool = True  # whether the linear probe ran (eval.linear_probe)

    @classmethod
    def from_config(cls, cfg: EvalConfig) -> Protocol:
        return cls(knn_k=cfg.knn_k, knn_temperature=cfg.knn_temperature, linear_probe=cfg.linear_probe)

    def texts(self) -> dict[str, str]:
        """{"knn", "linear" (when the probe ran), "retrieval"}: one clause each."""
        texts = {"knn": f"weighted k-NN (k={self.knn_k}, T={self.knn_temperature}) on L2-normalized backbone features, "
                        "train split as the bank"}
        if self.linear_probe:
            texts["linear"] = f"linear probe: {LINEAR_PROTOCOL} on standardized features, weight decay chosen on 20% of train"
        texts["retrieval"] = ("retrieval: test queries against the train split by cosine similarity, same class = relevant; "
                              "recall@K = a relevant item among the K nearest (metric-learning convention), "
                              "MAP@R (Musgrave et al. 2020)")
        return texts

    def line(self) -> str:
        """"Protocol: <k-NN>; <linear probe>; <retrieval>." for the reports."""
        return "Protocol: " + "; ".join(self.texts().values()) + "."

    def to_dict(self) -> dict[str, Any]:
        return {"knn_k": self.knn_k, "knn_temperature": self.knn_temperature, "linear_probe": self.linear_probe, **self.texts()}

    @classmethod
    def from_dict(cls, record: dict) -> Protocol:
        return cls(knn_k=record["knn_k"], knn_temperature=record["knn_temperature"],
                   linear_probe=record.get("linear_probe", "linear" in record))


@dataclass
class DataSummary(Record):
    """The training data (name, image size) and the sizes of the evaluation's bank (`train`) and query
    (`test`) splits: the training data's own, unless a separate set (--eval-data) is named in `evaluation`
    ({"name", "root", "image_size"}). `unreadable_images`: training images skipped as unreadable."""

    name: str
    train: int
    test: int
    image_size: int | None = None
    unreadable_images: int = 0
    evaluation: dict | None = None

    def line(self) -> str:
        """Which images the numbers come from, for report.md."""
        count = self.unreadable_images
        skipped = f", {count} unreadable training image{'s' if count != 1 else ''} skipped" if count else ""
        if self.evaluation:
            return (f"trained on {self.name}{skipped}, evaluated on {self.evaluation['name']} ({self.train} bank / {self.test} "
                    f"query images at {self.evaluation['image_size']} px)")
        return f"{self.train} train / {self.test} test images at {self.image_size} px{skipped}"

    def to_dict(self) -> dict[str, Any]:
        record = super().to_dict()
        if not self.unreadable_images:
            record.pop("unreadable_images")
        return record


@dataclass
class TrainingSummary(Record):
    """How a run trained: epochs, optimizer steps and seconds, the last epoch's logged means (`final`),
    the process layout and batch sizes, and each teacher cache it read (`TeacherCache.describe()`)."""

    epochs: int
    steps: int
    seconds: float
    final: dict = field(default_factory=dict)
    world_size: int | None = None
    batch_size: int | None = None
    batch_per_process: int | None = None
    teacher_cache: list[dict] = field(default_factory=list)

    def cache_line(self) -> str:
        """" The teacher's outputs came from its cache of V augmented draws per image (...)." or "" without a cache."""
        if not self.teacher_cache:
            return ""
        cache = self.teacher_cache[0]
        how = f"built by this run in {cache['build_seconds']:.0f} s" if cache["built_now"] else "reused from an earlier run"
        return (f" The teacher's outputs came from its cache of {cache['draws']} augmented draws per image ({how}); "
                "the teacher was not run during training.")


@dataclass(frozen=True)
class Summary:
    """One metric over seeds: mean, sample standard deviation (n - 1; 0 for one value), n, the values."""

    mean: float
    std: float
    n: int
    values: tuple[float, ...]

    @classmethod
    def of(cls, values: list[float]) -> Summary:
        return cls(mean=statistics.fmean(values), std=statistics.stdev(values) if len(values) > 1 else 0.0,
                   n=len(values), values=tuple(values))

    def to_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std, "n": self.n, "values": list(self.values)}

    @classmethod
    def from_dict(cls, record: dict) -> Summary:
        return cls(mean=record["mean"], std=record["std"], n=record["n"], values=tuple(record.get("values", ())))
