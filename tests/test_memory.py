"""The shared memory mechanism of the bank methods: MemoryBank and MomentumStudent."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ssl_kd.losses.memory import MemoryBank, MomentumStudent


def _t(rows):
    return torch.tensor(rows, dtype=torch.float64)


def _n(x):
    norm = math.sqrt(sum(float(v) ** 2 for v in x))
    return [float(v) / norm for v in x]


def test_memory_bank_rows_start_normalized_and_follow_the_momentum_rule():
    bank = MemoryBank(4, 2, generator=torch.Generator().manual_seed(0)).double()
    assert torch.allclose(bank.memory.norm(dim=1), torch.ones(4, dtype=torch.float64))
    assert "memory" in bank.state_dict()
    bank.memory.copy_(_t([[1, 0], [0, 1], [1, 0], [0, 1]]))
    bank.update(torch.tensor([0, 3]), _t([[0, 5], [3, 0]]), momentum=0.5)
    # row 0: n(0.5 [1, 0] + 0.5 [0, 5]) = n([0.5, 2.5]); row 3: n(0.5 [0, 1] + 0.5 [3, 0]) = n([1.5, 0.5])
    expected = _t([_n([0.5, 2.5]), [0, 1], [1, 0], _n([1.5, 0.5])])
    assert torch.allclose(bank.memory, expected, atol=1e-12)
    bank.update(torch.tensor([1]), _t([[-2, 0]]), momentum=0.0)  # momentum 0 overwrites (normalized)
    assert torch.allclose(bank.get(torch.tensor([1, 2])), _t([[-1, 0], [1, 0]]), atol=1e-12)
    assert torch.allclose(bank.get(torch.tensor([[0], [3]])), expected[[0, 3]].unsqueeze(1), atol=1e-12)


def test_memory_bank_negatives_are_uniform_over_the_other_rows():
    bank = MemoryBank(5, 3)
    idx = torch.tensor([0, 2, 4])
    draws = bank.sample_negatives(idx, 6000, generator=torch.Generator().manual_seed(1))
    assert draws.shape == (3, 6000) and draws.dtype == torch.long
    for row, own in zip(draws, idx.tolist()):
        assert not (row == own).any()
        counts = torch.bincount(row, minlength=5).double() / 6000
        others = [j for j in range(5) if j != own]
        assert torch.allclose(counts[others], torch.full((4,), 0.25, dtype=torch.float64), atol=0.03)


def _tiny_net(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Dropout(0.5), nn.Linear(4, 2))


def test_momentum_student_averages_parameters_only_and_takes_no_gradient():
    online = _tiny_net(0)
    ema = MomentumStudent(online)
    assert all(not p.requires_grad for p in ema.parameters())
    start = {k: v.clone() for k, v in ema.module.state_dict().items()}

    with torch.no_grad():  # move the online net: parameters and BatchNorm statistics
        for p in online.parameters():
            p.add_(torch.randn_like(p))
    online(torch.randn(8, 3))  # train mode: updates running_mean / running_var / num_batches_tracked
    new = online.state_dict()

    ema.update(online, 1.0)  # m = 1 keeps the copy
    assert all(torch.equal(ema.module.state_dict()[k], start[k]) for k in start)
    ema.update(online, 0.9)
    parameters = dict(online.named_parameters())
    for k, old in start.items():
        expected = 0.9 * old + 0.1 * new[k] if k in parameters else old  # buffers stay the copy's own
        assert torch.allclose(ema.module.state_dict()[k], expected, atol=1e-6), k
    ema.update(online, 0.0)  # m = 0 copies the parameters
    assert all(torch.equal(ema.module.state_dict()[k], new[k]) for k in parameters)
    assert not ema(torch.randn(5, 3, requires_grad=True)).requires_grad


def test_momentum_student_trains_batchnorm_on_the_batch_and_nothing_else_as_compress_does():
    """CompRess train_student.py: `student_key.eval()`, then every BatchNorm back to `.train()`."""
    online = _tiny_net(0)
    ema = MomentumStudent(online)
    ema.train()
    batchnorm, dropout = ema.module[1], ema.module[3]
    assert ema.training and batchnorm.training and not dropout.training and not ema.module[0].training
    x = torch.randn(16, 3)
    before = batchnorm.running_mean.clone()
    out = ema(x)
    hidden = F.relu(F.batch_norm(online[0](x), None, None, online[1].weight, online[1].bias, training=True))
    assert torch.allclose(out, online[4](hidden), atol=1e-6)  # batch statistics, no dropout
    assert torch.allclose(batchnorm.running_mean, 0.9 * before + 0.1 * online[0](x).mean(0).detach(), atol=1e-6)

    ema.eval()
    assert not batchnorm.training
    online.eval()
    with torch.no_grad():
        online[1].running_mean.copy_(batchnorm.running_mean)
        online[1].running_var.copy_(batchnorm.running_var)
    assert torch.allclose(ema(x), online(x), atol=1e-6)  # eval: its own running statistics
