"""The training loop: the LR schedule, learning, logs and checkpoints, exact resume, NaN stop."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from ssl_kd.checkpoint import load_checkpoint
from ssl_kd.config import TrainConfig
from ssl_kd.loaders import make_loader
from ssl_kd.errors import UserError
from ssl_kd.loop import cosine_schedule, fit

CPU = torch.device("cpu")


# --------------------------------------------------------------------------------------------
# cosine_schedule


def test_warmup_is_linear_to_the_base_lr():
    lr = cosine_schedule(0.5, 100, 10)
    assert lr.shape == (100,)
    assert np.allclose(lr[:10], 0.5 * np.arange(1, 11) / 10)  # 0.05, 0.10, ..., 0.5
    assert lr[9] == pytest.approx(0.5) and lr[10] == pytest.approx(0.5)
    assert lr.max() == pytest.approx(0.5)


def test_decays_monotonically_to_near_zero():
    lr = cosine_schedule(0.5, 100, 10)
    after = lr[10:]
    assert np.all(np.diff(after) <= 1e-12)
    assert after[-1] < 0.005 * 0.5 and after[-1] >= 0
    assert lr[55] == pytest.approx(0.25, rel=1e-6)  # half-way through the decay: base / 2
    assert np.all(lr > 0)


def test_no_warmup_starts_at_the_base_lr():
    lr = cosine_schedule(1e-3, 50, 0)
    assert lr[0] == pytest.approx(1e-3)
    assert np.all(np.diff(lr) <= 1e-15) and lr[-1] < 1e-5


# --------------------------------------------------------------------------------------------
# a tiny objective: a linear layer regressing a fixed linear map, with input noise from torch's RNG


class Points(Dataset):
    """(views, label, index) items like the SSL datasets; one 'view' per item."""

    def __init__(self, n=40, dim=4):
        gen = torch.Generator().manual_seed(123)
        self.x = torch.randn(n, dim, generator=gen)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return [self.x[i]], 0, i


class Regression(nn.Module):
    def __init__(self, dim=4, init_seed=0, nan_at_call=None, stop_at_call=None):
        super().__init__()
        torch.manual_seed(init_seed)
        self.trainable = nn.ModuleDict({"linear": nn.Linear(dim, 1)})
        self.register_buffer("w_true", torch.linspace(-0.5, 0.5, dim).unsqueeze(1))
        self.calls, self.after_steps = 0, 0
        self.nan_at_call, self.stop_at_call = nan_at_call, stop_at_call

    def forward(self, views, index=None):
        if self.calls == self.stop_at_call:
            raise KeyboardInterrupt  # the run is killed here
        x = views[0]
        noisy = x + 0.01 * torch.randn_like(x)  # draws from torch's global RNG, restored on resume
        loss = F.mse_loss(self.trainable["linear"](noisy), x @ self.w_true)
        if self.calls == self.nan_at_call:
            loss = loss * float("nan")
        self.calls += 1
        return {"loss": loss, "mse": loss.detach()}

    def after_step(self):
        self.after_steps += 1

    @torch.no_grad()
    def full_loss(self, data):
        return F.mse_loss(self.trainable["linear"](data.x), data.x @ self.w_true).item()


def _cfg(**kw):
    base = dict(epochs=2, batch_size=8, lr=0.1, weight_decay=0.0, warmup_epochs=1, grad_clip=3.0,
                precision="fp32", device="cpu", seed=0, resume=True, log_every=1)
    base.update(kw)
    return TrainConfig(**base)


def _loader(data, cfg):
    return make_loader(data, cfg.batch_size, train=True, num_workers=0, seed=cfg.seed)


def test_fit_lowers_the_loss_and_writes_logs_and_checkpoint(tmp_path):
    data = Points()
    objective = Regression()
    cfg = _cfg(epochs=4)
    before = objective.full_loss(data)
    result = fit(objective, _loader(data, cfg), cfg, tmp_path, {"note": "test"}, CPU)

    assert objective.full_loss(data) < 0.5 * before
    assert result.epochs == 4 and result.steps == 4 * 5 and result.resumed_from_epoch == 0
    assert len(result.history) == 4 and result.history[-1]["loss"] < result.history[0]["loss"]
    assert objective.after_steps == 20

    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "seconds" not in r]
    epochs = [r for r in records if "seconds" in r]
    assert [r["epoch"] for r in epochs] == [1, 2, 3, 4]
    assert [r["step"] for r in steps] == list(range(20))  # log_every=1: every step
    assert all({"loss", "mse", "lr"} <= set(r) for r in steps)
    schedule = cosine_schedule(cfg.lr, 20, 5)
    assert [r["lr"] for r in steps] == pytest.approx(list(schedule))  # the lr actually applied

    state = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    assert state["epoch"] == 4 and state["step"] == 20 and state["config"] == {"note": "test"}
    assert torch.equal(state["trainable"]["linear.weight"], objective.trainable["linear"].weight.detach())
    assert not (tmp_path / "checkpoints" / "last.pt.tmp").exists()


def test_resume_after_an_interruption_matches_an_uninterrupted_run(tmp_path):
    data = Points()
    cfg = _cfg(epochs=3)

    straight = Regression()
    fit(straight, _loader(data, cfg), cfg, tmp_path / "straight", {}, CPU)

    steps_per_epoch = len(_loader(data, cfg))
    killed = Regression(stop_at_call=steps_per_epoch + 2)  # dies inside epoch 2, after epoch 1 was saved
    with pytest.raises(KeyboardInterrupt):
        fit(killed, _loader(data, cfg), cfg, tmp_path / "resumed", {}, CPU)
    assert load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")["epoch"] == 1

    torch.manual_seed(999)  # whatever the RNG did in between must not matter
    resumed = Regression(init_seed=7)  # other initial weights: they must come from the checkpoint
    result = fit(resumed, _loader(data, cfg), cfg, tmp_path / "resumed", {}, CPU)
    assert result.resumed_from_epoch == 1 and result.steps == 3 * steps_per_epoch
    assert [h["epoch"] for h in result.history] == [2, 3]
    for name, value in straight.trainable.state_dict().items():
        assert torch.equal(resumed.trainable.state_dict()[name], value), name


def test_epochs_split_across_calls_match_one_call(tmp_path):
    """Running the first epoch, then resuming for the rest (same train.epochs), is the same run."""
    data = Points()
    cfg = _cfg(epochs=2)
    once = Regression()
    fit(once, _loader(data, cfg), cfg, tmp_path / "once", {}, CPU)

    first = Regression(stop_at_call=len(_loader(data, cfg)))  # stops right at the start of epoch 2
    with pytest.raises(KeyboardInterrupt):
        fit(first, _loader(data, cfg), cfg, tmp_path / "twice", {}, CPU)
    second = Regression(init_seed=3)
    fit(second, _loader(data, cfg), cfg, tmp_path / "twice", {}, CPU)
    for name, value in once.trainable.state_dict().items():
        assert torch.equal(second.trainable.state_dict()[name], value), name


def test_resume_false_starts_over(tmp_path):
    data = Points()
    cfg = _cfg(epochs=1)
    fit(Regression(), _loader(data, cfg), cfg, tmp_path, {}, CPU)
    again = Regression()
    result = fit(again, _loader(data, cfg), _cfg(epochs=1, resume=False), tmp_path, {}, CPU)
    assert result.resumed_from_epoch == 0 and len(result.history) == 1 and again.calls == 5


def test_a_finished_run_resumes_to_nothing(tmp_path):
    data = Points()
    cfg = _cfg(epochs=1)
    first = Regression()
    fit(first, _loader(data, cfg), cfg, tmp_path, {}, CPU)
    again = Regression(init_seed=5)
    result = fit(again, _loader(data, cfg), cfg, tmp_path, {}, CPU)
    assert result.history == [] and again.calls == 0
    assert torch.equal(again.trainable["linear"].weight, first.trainable["linear"].weight)


def test_a_nan_loss_stops_with_the_step(tmp_path):
    data = Points()
    cfg = _cfg(epochs=3)
    objective = Regression(nan_at_call=7)  # 5 steps per epoch: step 7 is in epoch 2
    with pytest.raises(UserError) as err:
        fit(objective, _loader(data, cfg), cfg, tmp_path, {}, CPU)
    message = str(err.value)
    assert "step 7" in message and "epoch 2" in message and "nan" in message.lower()
    assert "last.pt" in message  # epoch 1's checkpoint is the last good one
    assert "\n" not in message
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["epoch"] == 1

    straight = Regression()
    fit(straight, _loader(data, cfg), cfg, tmp_path / "straight", {}, CPU)
    resumed = Regression(init_seed=5)  # the last good checkpoint resumes; the run ends as one that never failed
    result = fit(resumed, _loader(data, cfg), cfg, tmp_path, {}, CPU)
    assert result.resumed_from_epoch == 1 and resumed.calls == 10
    assert all(torch.equal(resumed.trainable.state_dict()[k], v) for k, v in straight.trainable.state_dict().items())


def test_a_nan_on_the_first_step_says_there_is_no_checkpoint(tmp_path):
    data = Points()
    cfg = _cfg(epochs=1)
    with pytest.raises(UserError, match="step 0") as err:
        fit(Regression(nan_at_call=0), _loader(data, cfg), cfg, tmp_path, {}, CPU)
    assert "none yet" in str(err.value)
    assert not math.isfinite(float("nan"))
