"""Long runs: checkpoints inside an epoch, pre-emption signals, exact resume mid-epoch, a changed config on
resume, non-finite gradients, and a disk that fills up while saving."""

from __future__ import annotations

import errno
import json
import os
import signal

import pytest
import torch

from ssl_kd.checkpoint import load_checkpoint
from ssl_kd.errors import EXIT_PREEMPTED, Preempted, UserError, cli_main
from ssl_kd.loop import fit
from ssl_kd.run_checkpoints import config_differences

from test_loop import CPU, Points, Regression, _cfg, _loader


class SignalledRegression(Regression):
    """Sends itself `signum` during forward call `at` (as a scheduler would, mid-step)."""

    def __init__(self, at: int, signum: int = signal.SIGUSR1, **kw):
        super().__init__(**kw)
        self.at, self.signum = at, signum

    def forward(self, views, index=None):
        if self.calls == self.at:
            os.kill(os.getpid(), self.signum)
        return super().forward(views, index)


class InfiniteGradient(Regression):
    """A finite loss whose gradient is not finite at call `at` (d sqrt(x) / dx at x = 0)."""

    def __init__(self, at: int, **kw):
        super().__init__(**kw)
        self.at = at

    def forward(self, views, index=None):
        out = super().forward(views, index)
        if self.calls - 1 == self.at:
            out["loss"] = out["loss"] + torch.sqrt(0.0 * self.trainable["linear"].weight.sum())
        return out


def _weights(objective) -> dict:
    return {k: v.clone() for k, v in objective.trainable.state_dict().items()}


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1, signal.SIGINT])
def test_a_signal_mid_epoch_checkpoints_there_and_the_rerun_continues_exactly(tmp_path, signum):
    data = Points()
    cfg = _cfg(epochs=3)
    straight = Regression()
    fit(straight, _loader(data, cfg), cfg, tmp_path / "straight", {}, CPU)

    stopped = SignalledRegression(at=7, signum=signum)  # 5 steps an epoch: call 7 is step 3 of epoch 2
    with pytest.raises(Preempted, match="rerun the same command"):
        fit(stopped, _loader(data, cfg), cfg, tmp_path / "resumed", {}, CPU)
    assert signal.getsignal(signum) is not None and signal.getsignal(signum) != stopped  # handlers restored
    state = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")
    assert (state["epoch"], state["epoch_step"], state["step"]) == (1, 3, 8)  # the step in flight finished first

    torch.manual_seed(999)  # whatever the generators did in between must not matter
    resumed = Regression(init_seed=7)
    result = fit(resumed, _loader(data, cfg), cfg, tmp_path / "resumed", {}, CPU)
    assert resumed.calls == 15 - 8 and result.steps == 15
    assert all(torch.equal(resumed.trainable.state_dict()[k], v) for k, v in straight.trainable.state_dict().items())


def test_the_entry_point_exits_75_after_the_checkpoint(capsys):
    def main():
        raise Preempted("stopped by SIGTERM at step 8; checkpoint runs/x/checkpoints/last.pt written; rerun the same command")

    with pytest.raises(SystemExit) as exit_info:
        cli_main(main)
    assert exit_info.value.code == EXIT_PREEMPTED == 75
    assert capsys.readouterr().err.count("\n") == 1


def test_checkpoints_every_n_steps_keep_the_last_k_and_the_best(tmp_path):
    data = Points()
    cfg = _cfg(epochs=3, checkpoint_every_steps=2, keep_checkpoints=2)
    knn = iter([50.0, 70.0, 60.0])
    fit(Regression(), _loader(data, cfg), cfg, tmp_path, {}, CPU, on_epoch_end=lambda epoch: {"knn_top1": next(knn)})
    folder = tmp_path / "checkpoints"
    kept = sorted(p.name for p in folder.glob("step_*.pt"))
    assert kept == ["step_00000014.pt", "step_00000015.pt"]  # every 2 steps and every epoch end; the newest 2
    assert load_checkpoint(folder / "step_00000014.pt")["epoch_step"] == 4
    best = load_checkpoint(folder / "best.pt")
    assert best["best_metric"] == 70.0 and best["epoch"] == 2
    assert not list(folder.glob("*.tmp"))


def test_resuming_with_a_changed_config_names_the_keys(tmp_path):
    data = Points()
    config = {"loss": {"method": "dlkd", "align_weight": 1.0}, "train": {"epochs": 1, "lr": 0.1}, "eval": {"knn_k": 20}}
    fit(Regression(), _loader(data, _cfg(epochs=1)), _cfg(epochs=1), tmp_path, config, CPU)
    changed = {"loss": {"method": "seed", "align_weight": 1.0}, "train": {"epochs": 1, "lr": 0.5}, "eval": {"knn_k": 20}}
    with pytest.raises(UserError, match=r"differs in loss.method \('dlkd' -> 'seed'\), train.lr \(0.1 -> 0.5\)"):
        fit(Regression(), _loader(data, _cfg(epochs=1)), _cfg(epochs=1), tmp_path, changed, CPU)
    longer = {"loss": {"method": "dlkd", "align_weight": 1.0}, "train": {"epochs": 2, "lr": 0.1}, "eval": {"knn_k": 5}}
    result = fit(Regression(), _loader(data, _cfg(epochs=2)), _cfg(epochs=2), tmp_path, longer, CPU)
    assert result.resumed_from_epoch == 1 and len(result.history) == 1  # more epochs and another k may change
    assert config_differences({"a": 1, "b": {"c": 2}}, {"a": 1, "b": {"c": 3}, "new": 4}) == ["b.c (2 -> 3)"]


def test_a_non_finite_gradient_stops_before_the_step_and_names_the_last_checkpoint(tmp_path):
    data = Points()
    cfg = _cfg(epochs=3)
    objective = InfiniteGradient(at=6)
    with pytest.raises(UserError) as err:
        fit(objective, _loader(data, cfg), cfg, tmp_path, {}, CPU)
    message = str(err.value)
    assert "gradient became non-finite at step 6" in message and "last.pt" in message and "\n" not in message
    state = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert state["step"] == 5  # epoch 1's checkpoint stands; nothing from the bad step was saved


def test_a_full_disk_while_saving_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import ssl_kd.checkpoint as checkpoint_module

    data = Points()
    cfg = _cfg(epochs=2)
    real_save, calls = checkpoint_module.torch.save, []

    def save(obj, path, *a, **k):
        calls.append(path)
        if len(calls) == 2:  # the second checkpoint: half written, then the disk is full
            with open(path, "wb") as f:
                f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, path, *a, **k)

    monkeypatch.setattr(checkpoint_module.torch, "save", save)
    with pytest.raises(UserError, match=r"the disk is full\); the previous last.pt is intact"):
        fit(Regression(), _loader(data, cfg), cfg, tmp_path, {}, CPU)
    monkeypatch.setattr(checkpoint_module.torch, "save", real_save)
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["epoch"] == 1
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))


def test_a_distillation_on_the_teacher_cache_stopped_mid_epoch_resumes_bit_exact(tmp_path, monkeypatch):
    """The cache's pool of seeded draws makes the whole run, loader workers included, exact (fresh seeded
    draws, the default: tests/test_kill_and_resume.py, on the main job in a subprocess)."""
    from ssl_kd import loop
    from ssl_kd.config import load_config
    from ssl_kd.defaults import default_teacher
    from ssl_kd.distillation import distill
    from ssl_kd.teachers import load_teacher

    def config():
        cfg = load_config(None, ["train.device=cpu", "data.num_workers=2", "data.subset=96", "train.batch_size=32",
                                 "loss.queue_size=32", "student.proj_hidden=64", "eval.monitor_every=0", "train.epochs=2",
                                 "train.teacher_cache=3", f"train.teacher_cache_dir={tmp_path / 'cache'}"])
        return cfg

    teacher = load_teacher(str(default_teacher("digits")), image_size=32)
    straight = distill(config(), teacher, tmp_path / "straight").student.state_dict()

    real_call, calls = loop.StepRunner.__call__, []

    def signalling_call(self, *args):
        calls.append(1)
        if len(calls) == 4:  # step 2 of epoch 2 (3 steps an epoch)
            os.kill(os.getpid(), signal.SIGTERM)
        return real_call(self, *args)

    monkeypatch.setattr(loop.StepRunner, "__call__", signalling_call)
    with pytest.raises(Preempted):
        distill(config(), teacher, tmp_path / "stopped")
    monkeypatch.setattr(loop.StepRunner, "__call__", real_call)
    assert load_checkpoint(tmp_path / "stopped" / "checkpoints" / "last.pt")["epoch_step"] == 1
    resumed = distill(config(), teacher, tmp_path / "stopped")
    assert resumed.fit.steps == 6
    assert all(torch.equal(resumed.student.state_dict()[k], v) for k, v in straight.items())


def test_every_checkpoint_carries_the_reproducibility_record(tmp_path):
    import hashlib

    from ssl_kd.config import Config
    from ssl_kd.defaults import default_teacher
    from ssl_kd.provenance import reproducibility_record

    record = reproducibility_record(Config(), argv=["--epochs", "1"])
    path = str(default_teacher("digits"))
    assert record["teacher_sha256"][path] == hashlib.sha256(open(path, "rb").read()).hexdigest()
    assert {"torch", "timm", "lightly", "numpy"} <= set(record["versions"]) and record["command"][1:] == ["--epochs", "1"]
    data = Points()
    fit(Regression(), _loader(data, _cfg(epochs=1)), _cfg(epochs=1), tmp_path, {}, CPU, record=record)
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["record"] == record


def test_tensorboard_gets_the_numbers_of_metrics_jsonl(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data = Points()
    cfg = _cfg(epochs=2, tensorboard=True)
    fit(Regression(), _loader(data, cfg), cfg, tmp_path, {}, CPU)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    losses = [(e.step, e.value) for e in events.Scalars("train/loss")]
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert losses == [(r["step"], pytest.approx(r["loss"])) for r in lines if "seconds" not in r]
    assert [e.step for e in events.Scalars("epoch/images_per_s")] == [4, 9]


def test_resuming_with_another_teacher_file_is_refused(tmp_path):
    data = Points()
    first = {"teacher_sha256": {"moco.pth": "a" * 64}}
    fit(Regression(), _loader(data, _cfg(epochs=1)), _cfg(epochs=1), tmp_path, {}, CPU, record=first)
    moved = {"teacher_sha256": {"elsewhere/moco.pth": "a" * 64}}
    fit(Regression(), _loader(data, _cfg(epochs=2)), _cfg(epochs=2), tmp_path, {}, CPU, record=moved)  # same file, moved
    with pytest.raises(UserError, match="teacher files differ"):
        fit(Regression(), _loader(data, _cfg(epochs=3)), _cfg(epochs=3), tmp_path, {}, CPU,
            record={"teacher_sha256": {"moco.pth": "b" * 64}})


def test_seeded_views_train_the_same_with_any_number_of_loader_workers(tmp_path):
    from ssl_kd.config import load_config
    from ssl_kd.defaults import default_teacher
    from ssl_kd.distillation import distill
    from ssl_kd.teachers import load_teacher

    teacher = load_teacher(str(default_teacher("digits")), image_size=32)

    def trained(workers: int) -> dict:
        cfg = load_config(None, ["train.device=cpu", f"data.num_workers={workers}", "data.subset=64", "train.batch_size=32",
                                 "loss.queue_size=32", "student.proj_hidden=64", "eval.monitor_every=0", "train.epochs=1",
                                 "data.seeded_views=true"])
        return distill(cfg, teacher, tmp_path / f"workers{workers}").student.state_dict()

    serial, parallel = trained(0), trained(2)
    assert all(torch.equal(serial[k], parallel[k]) for k in serial)
