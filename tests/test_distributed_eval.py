"""The evaluation path under torchrun: 2 gloo ranks on 97 images give exactly the features and numbers
of one process, and rank 1 writes no files; the sharding and gather-by-index logic on its own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ssl_kd.errors import UserError
from ssl_kd.evaluation.on_main import on_main_process
from ssl_kd.feature_shards import PADDING_INDEX, assemble_by_index, gather_by_index, pad_rows, shard_indices, sharded_features
from ssl_kd.features import extract_features
from torchrun_helpers import REPO, run_torchrun

WORKER = REPO / "tests" / "dist_eval_worker.py"


def worker_results(out: Path, nproc: int) -> dict[tuple[int, str], object]:
    """{(rank, check name): value} from the worker's RESULT lines."""
    done = run_torchrun(WORKER, str(out), nproc=nproc, cwd=REPO, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    results = {}
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            _, rank, name, value = line.split(" ", 3)
            results[int(rank), name] = json.loads(value)
    return results


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("dist_eval")
    return {nproc: (base / f"nproc{nproc}", worker_results(base / f"nproc{nproc}", nproc)) for nproc in (1, 2)}


CHECKS = ("features", "features_from_cache", "features_one_image", "monitor", "evaluate_model", "eval_knn", "eval_retrieval",
          "error_on_rank_0")


@pytest.mark.parametrize("check", CHECKS)
def test_two_ranks_get_exactly_what_one_process_gets(runs, check: str) -> None:
    _, single = runs[1]
    _, double = runs[2]
    assert single[0, "world"] == 1 and double[0, "world"] == double[1, "world"] == 2
    assert double[0, check] == single[0, check]
    assert double[1, check] == single[0, check]  # every rank returns rank 0's numbers


def test_features_from_the_cache_are_the_extracted_ones(runs) -> None:
    _, double = runs[2]
    assert double[0, "features_from_cache"] == double[0, "features"]


def test_only_rank_0_writes_files(runs) -> None:
    single_out, _ = runs[1]
    double_out, _ = runs[2]
    assert not (double_out / "rank1").exists()
    written = sorted(p.relative_to(double_out / "rank0") for p in (double_out / "rank0").rglob("*") if p.is_file())
    assert written == sorted(p.relative_to(single_out / "rank0") for p in (single_out / "rank0").rglob("*") if p.is_file())
    assert len([p for p in written if p.suffix == ".safetensors"]) == 4 and Path("knn.json") in written


# --- sharding and gathering by index, in one process ---------------------------------------


@pytest.mark.parametrize("num_samples", [0, 1, 2, 7, 97, 100])
@pytest.mark.parametrize("num_shards", [1, 2, 3, 8])
def test_shards_cover_every_sample_once_and_differ_by_at_most_one(num_samples: int, num_shards: int) -> None:
    shards = [shard_indices(num_samples, num_shards, shard) for shard in range(num_shards)]
    assert sorted(i for shard in shards for i in shard) == list(range(num_samples))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_shard_of_a_missing_rank_is_an_error() -> None:
    with pytest.raises(ValueError):
        shard_indices(10, 2, 2)


def test_pad_rows_appends_rows_of_the_value() -> None:
    padded = pad_rows(torch.tensor([3, 4]), 4, PADDING_INDEX)
    assert padded.tolist() == [3, 4, -1, -1]
    assert pad_rows(torch.ones(2, 3), 2).shape == (2, 3)
    with pytest.raises(ValueError):
        pad_rows(torch.ones(3, 1), 2)


@pytest.mark.parametrize("num_samples, world", [(97, 2), (10, 3), (2, 4), (1, 2)])
def test_padded_shards_assemble_to_dataset_order(num_samples: int, world: int) -> None:
    """What every rank does with an all_gather of padded shards: cut the padding, place rows by index."""
    data = torch.randn(num_samples, 5)
    shards = [shard_indices(num_samples, world, r) for r in range(world)]
    longest = max(map(len, shards))
    rows = [pad_rows(data[shard], longest) for shard in shards]
    indices = [pad_rows(torch.tensor(shard, dtype=torch.long), longest, PADDING_INDEX) for shard in shards]
    assert torch.equal(assemble_by_index(rows, indices, num_samples), data)


def test_assembly_rejects_a_missing_or_repeated_index() -> None:
    rows = [torch.zeros(2, 1), torch.ones(2, 1)]
    with pytest.raises(ValueError, match="exactly once"):
        assemble_by_index(rows, [torch.tensor([0, 1]), torch.tensor([1, 2])], 4)
    with pytest.raises(ValueError, match="exactly once"):
        assemble_by_index(rows, [torch.tensor([0, 1]), torch.tensor([2, -1])], 4)


def test_gather_in_one_process_orders_rows_by_index() -> None:
    rows = torch.arange(6.0).reshape(3, 2)
    assert gather_by_index(rows, [2, 0, 1], 3).tolist() == [[2.0, 3.0], [4.0, 5.0], [0.0, 1.0]]


def test_sharded_features_in_one_process_are_extract_features_and_leave_the_global_rng_alone() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 4))
    data = TensorDataset(torch.randn(11, 3, 2, 2), torch.arange(11) % 3)
    expected = extract_features(model, DataLoader(data, batch_size=4), progress=False)
    state = torch.get_rng_state()
    feats, labels = sharded_features(model, data, batch_size=4, progress=False)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(feats, expected[0]) and torch.equal(labels, expected[1])


def test_on_main_process_in_one_process_is_the_call_itself() -> None:
    def fail():
        raise UserError("bad input")

    assert on_main_process(lambda: {"a": 1}) == {"a": 1}
    with pytest.raises(UserError, match="bad input"):
        on_main_process(fail)
