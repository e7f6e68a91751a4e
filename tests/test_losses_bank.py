"""Methods with memory: SEED and CompRess (1q, 2q) by hand and against
plain loops; the gradients of all methods with memory (CRD included; its own tests: test_losses_crd.py);
CompRess-2q's state across steps of a real DistillObjective. MemoryBank, MomentumStudent: test_memory.py."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ssl_kd.config import LossConfig, StudentConfig
from ssl_kd.distillation import DistillObjective
from ssl_kd.embeddings import Embeddings
from ssl_kd.losses import MethodDims, build_method
from ssl_kd.losses.base import StepContext
from ssl_kd.losses.compress import CompRess, compress_loss
from ssl_kd.losses.dlkd import queue_contrast_loss
from ssl_kd.losses.seed import SEED, seed_loss
from ssl_kd.queue import MomentumQueue
from ssl_kd.students import Student


def _t(rows):
    return torch.tensor(rows, dtype=torch.float64)


def _unit(gen, n, d):
    return F.normalize(torch.randn(n, d, generator=gen, dtype=torch.float64), dim=1)


# --------------------------------------------------------------------------------------------
# plain-loop references (float64 Python floats, one row at a time, no softmax / F.* losses)


def _n(x):
    norm = math.sqrt(sum(float(v) ** 2 for v in x))
    return [float(v) / norm for v in x]


def _dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def _log_softmax(logits):
    top = max(logits)
    norm = top + math.log(sum(math.exp(x - top) for x in logits))
    return [x - norm for x in logits]


def _ref_seed(s, t, queue, tau_s, tau_t):
    total = 0.0
    for si, ti in zip(s, t):
        si, ti = _n(si), _n(ti)
        entries = [ti] + [list(map(float, q)) for q in queue]
        log_q = _log_softmax([_dot(si, e) / tau_s for e in entries])
        log_p = _log_softmax([_dot(ti, e) / tau_t for e in entries])
        total += -sum(math.exp(lp) * lq for lp, lq in zip(log_p, log_q))
    return total / len(s)


def _ref_infonce(s, t, queue, tau):
    total = 0.0
    for si, ti in zip(s, t):
        si, ti = _n(si), _n(ti)
        pos = math.exp(_dot(si, ti) / tau)
        neg = sum(math.exp(_dot(si, list(map(float, q))) / tau) for q in queue)
        total += -math.log(pos / (pos + neg))
    return total / len(s)


def _ref_compress(s, t, teacher_anchors, student_anchors, tau):
    total = 0.0
    for si, ti in zip(s, t):
        si, ti = _n(si), _n(ti)
        log_p = _log_softmax([_dot(ti, list(map(float, a))) / tau for a in teacher_anchors])
        log_q = _log_softmax([_dot(si, list(map(float, a))) / tau for a in student_anchors])
        total += sum(math.exp(lp) * (lp - lq) for lp, lq in zip(log_p, log_q))
    return total / len(s)


# --------------------------------------------------------------------------------------------
# MemoryBank and MomentumStudent


# --------------------------------------------------------------------------------------------
# SEED


def test_seed_by_hand():
    queue = _t([[1, 0]])
    student = _t([[1, 0], [1, 1]])
    teacher = _t([[0, 1], [2, 0]])
    # tau_S = 0.5, tau_T = 1; entries [own teacher row, q]
    # row 0: s=[1,0] t=[0,1]: l^S = [0, 1]/0.5 = [0, 2]; l^T = [1, 0] -> p^T = [e, 1]/(e + 1)
    #        L = -(p0 (0 - log(1 + e^2)) + p1 (2 - log(1 + e^2))) = log(1 + e^2) - 2/(e + 1)
    # row 1: s=n([1,1]) t=[1,0]: l^S = [1/sqrt2, 1/sqrt2]/0.5, equal entries -> log softmax = -log 2 -> L = log 2
    row0 = math.log(1 + math.exp(2)) - 2 / (math.e + 1)
    expected = (row0 + math.log(2)) / 2  # = 1.0592...
    assert seed_loss(student, teacher, queue, 0.5, 1.0).item() == pytest.approx(expected, abs=1e-12)


def test_seed_matches_the_plain_loop_on_random_data():
    gen = torch.Generator().manual_seed(2)
    s, t = (torch.randn(9, 5, generator=gen, dtype=torch.float64) for _ in range(2))
    queue = _unit(gen, 7, 5)
    for tau_s, tau_t in [(0.2, 0.05), (0.5, 1.0), (0.1, 0.3)]:
        assert seed_loss(s, t, queue, tau_s, tau_t).item() == pytest.approx(_ref_seed(s, t, queue, tau_s, tau_t), rel=1e-10)


def test_seed_with_a_near_zero_teacher_temperature_is_infonce():
    gen = torch.Generator().manual_seed(3)
    s, t = (torch.randn(8, 6, generator=gen, dtype=torch.float64) for _ in range(2))
    queue = _unit(gen, 16, 6)
    seed = seed_loss(s, t, queue, 0.2, 1e-4).item()
    assert seed == pytest.approx(_ref_infonce(s, t, queue, 0.2), rel=1e-9)
    assert seed == pytest.approx(queue_contrast_loss(s, t, queue, 0.2).item(), rel=1e-9)
    assert seed_loss(s, t, queue, 0.2, 0.5).item() != pytest.approx(seed, rel=1e-3)  # a soft target differs


def test_seed_without_a_queue_is_zero_and_backpropagates():
    s = torch.randn(4, 3, requires_grad=True)
    loss = seed_loss(s, torch.randn(4, 3), None, 0.2, 1e-4)
    assert loss.item() == pytest.approx(0.0, abs=1e-7)
    loss.backward()
    assert s.grad is not None


def test_seed_module_uses_the_config():
    cfg = LossConfig(method="seed")
    cfg.seed.student_temperature, cfg.seed.teacher_temperature, cfg.seed.weight = 0.3, 0.05, 2.5
    method = build_method(cfg, MethodDims(6, 4))
    assert isinstance(method, SEED) and method.needs_queue
    assert (method.student_temperature, method.teacher_temperature, method.weight) == (0.3, 0.05, 2.5)
    defaults = build_method(LossConfig(method="seed"), MethodDims(6, 4))
    assert (defaults.student_temperature, defaults.teacher_temperature, defaults.weight) == (0.2, 1e-4, 1.0)
    gen = torch.Generator().manual_seed(9)
    s, t, queue = torch.randn(6, 4, generator=gen), torch.randn(6, 4, generator=gen), F.normalize(torch.randn(5, 4, generator=gen), dim=1)
    out = method(Embeddings(s, s), Embeddings(t, t), queue, StepContext(num_views=2))
    assert out["seed"].item() == pytest.approx(seed_loss(s, t, queue, 0.3, 0.05).item(), rel=1e-6)
    assert out["loss"].item() == pytest.approx(2.5 * out["seed"].item(), rel=1e-6)


# --------------------------------------------------------------------------------------------
# CompRess


def test_compress_1q_by_hand():
    anchors = _t([[1, 0], [0, 1]])
    teacher = _t([[1, 0], [1, 1]])
    student = _t([[0, 3], [1, 0]])
    # tau = 0.5, p = e^2 / (e^2 + 1)
    # row 0: teacher logits [2, 0] -> [p, 1-p]; student logits [0, 2] -> [1-p, p]
    #        KL = p log(p/(1-p)) + (1-p) log((1-p)/p) = (2p - 1) * 2
    # row 1: teacher logits [sqrt2, sqrt2] -> [1/2, 1/2]; student [2, 0] -> [p, 1-p]
    #        KL = 1/2 log(1/2 / p) + 1/2 log(1/2 / (1-p))
    p = math.exp(2) / (math.exp(2) + 1)
    row0 = p * math.log(p / (1 - p)) + (1 - p) * math.log((1 - p) / p)
    row1 = 0.5 * math.log(0.5 / p) + 0.5 * math.log(0.5 / (1 - p))
    assert row0 == pytest.approx((2 * p - 1) * 2)
    expected = (row0 + row1) / 2  # batchmean
    assert compress_loss(student, teacher, anchors, anchors, 0.5).item() == pytest.approx(expected, abs=1e-12)


def test_compress_2q_by_hand_uses_the_student_anchors_for_the_student():
    teacher_anchors, student_anchors = _t([[1, 0], [0, 1]]), _t([[0, 1], [1, 0]])  # the student's anchors swapped
    # t = s = [1, 0]: p^T = softmax([2, 0]) = [p, 1-p]; p^S = softmax([<s, a^S>]/0.5) = softmax([0, 2]) = [1-p, p]
    p = math.exp(2) / (math.exp(2) + 1)
    expected = p * math.log(p / (1 - p)) + (1 - p) * math.log((1 - p) / p)
    loss = compress_loss(_t([[1, 0]]), _t([[1, 0]]), teacher_anchors, student_anchors, 0.5)
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    assert compress_loss(_t([[1, 0]]), _t([[1, 0]]), teacher_anchors, teacher_anchors, 0.5).item() == pytest.approx(0.0, abs=1e-12)


def test_compress_matches_the_plain_loop_on_random_data():
    gen = torch.Generator().manual_seed(4)
    s, t = torch.randn(6, 4, generator=gen, dtype=torch.float64), torch.randn(6, 4, generator=gen, dtype=torch.float64)
    a_t, a_s = _unit(gen, 9, 4), _unit(gen, 9, 4)
    for tau in (0.04, 0.3):
        assert compress_loss(s, t, a_t, a_t, tau).item() == pytest.approx(_ref_compress(s, t, a_t, a_t, tau), rel=1e-9)
        assert compress_loss(s, t, a_t, a_s, tau).item() == pytest.approx(_ref_compress(s, t, a_t, a_s, tau), rel=1e-9)
    with pytest.raises(ValueError):
        compress_loss(s, t, a_t, a_s[:5], 0.04)


def test_compress_without_anchors_is_zero_and_backpropagates():
    s = torch.randn(4, 3, requires_grad=True)
    out = CompRess(3)(Embeddings(s, s), Embeddings(torch.randn(4, 3), torch.randn(4, 3)), torch.zeros(0, 3), StepContext(num_views=2))
    assert out["loss"].item() == 0.0
    out["loss"].backward()
    assert s.grad is not None


def test_compress_builders_and_2q_misalignment_error():
    dims = MethodDims(6, 5)
    cfg = LossConfig(method="compress", queue_size=32)
    cfg.compress.temperature, cfg.compress.momentum, cfg.compress.weight = 0.1, 0.9, 2.0
    one = build_method(cfg, dims)
    assert isinstance(one, CompRess) and one.queues == 1 and one.student_queue is None
    assert (one.temperature, one.momentum, one.weight) == (0.1, 0.9, 2.0)
    cfg.compress.queues = 2
    assert build_method(cfg, dims).queues == 2
    assert build_method(LossConfig(method="compress_1q"), dims).queues == 1
    two = build_method(LossConfig(method="compress_2q", queue_size=32), dims)
    assert two.queues == 2 and two.student_queue.size == 32 and two.student_queue.dim == 5
    assert (two.temperature, two.momentum) == (0.04, 0.999)
    with pytest.raises(ValueError):
        CompRess(5, queues=3)
    emb = Embeddings(torch.randn(4, 5), torch.randn(4, 5))
    with pytest.raises(RuntimeError, match="anchors"):
        two(emb, emb, F.normalize(torch.randn(8, 5), dim=1), StepContext(num_views=2))  # its own FIFO is empty


# --------------------------------------------------------------------------------------------
# gradients: the student side (and CRD's heads) only


def _grad_case(name):
    gen = torch.Generator().manual_seed(6)
    s_feat, s_emb = torch.randn(8, 6, generator=gen).requires_grad_(), torch.randn(8, 5, generator=gen).requires_grad_()
    t_feat, t_emb = torch.randn(8, 5, generator=gen).requires_grad_(), torch.randn(8, 5, generator=gen).requires_grad_()
    queue = F.normalize(torch.randn(12, 5, generator=gen), dim=1).requires_grad_()
    torch.manual_seed(0)
    method = build_method(LossConfig(method=name, queue_size=12), MethodDims(6, 5, num_samples=20))
    if name == "compress_2q":
        method.student_queue.enqueue(torch.randn(12, 5, generator=gen))
    ctx = StepContext(num_views=2, index=torch.tensor([1, 4, 7, 19]))
    return method, Embeddings(s_feat, s_emb), Embeddings(t_feat, t_emb), queue, ctx


@pytest.mark.parametrize("name", ["seed", "compress_1q", "compress_2q", "crd"])
def test_gradients_reach_the_student_side_never_the_teacher_queue_or_banks(name):
    method, student, teacher, queue, ctx = _grad_case(name)
    banks = {k: v.clone() for k, v in method.state_dict().items()}
    out = method(student, teacher, queue, ctx)
    out["loss"].backward()
    used = student.feat if name == "crd" else student.emb
    assert used.grad is not None and used.grad.abs().sum() > 0
    assert teacher.feat.grad is None and teacher.emb.grad is None and queue.grad is None
    assert all(not b.requires_grad for b in method.buffers())
    for k, v in method.state_dict().items():
        assert k == "z" or torch.equal(v, banks[k]), k  # the forward writes no bank or queue (only Z, once)
    for p in method.parameters():  # CRD's W_S and W_T learn; the others have no parameters
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert (len(list(method.parameters())) > 0) == (name == "crd")
    assert all(not value.requires_grad for key, value in out.items() if key != "loss")


@pytest.mark.parametrize("name", ["seed", "compress_1q", "crd"])
def test_half_precision_embeddings_give_the_full_precision_loss(name):
    """Under bf16 autocast the similarities and their temperatures are computed in float32."""
    method, student, teacher, queue, ctx = _grad_case(name)
    rounded = [Embeddings(e.feat.detach().bfloat16(), e.emb.detach().bfloat16()) for e in (student, teacher)]
    torch.manual_seed(0)  # CRD: the same negatives in both runs
    full = method(*[Embeddings(e.feat.float(), e.emb.float()) for e in rounded], queue.detach(), ctx)["loss"].item()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.manual_seed(0)
        low = method(*rounded, queue.detach(), ctx)["loss"]
    assert low.dtype == torch.float32
    # CRD's linear heads run in bf16 under autocast (about 3 significant digits); the rest is exact
    assert low.item() == pytest.approx(full, rel=1e-3 if name == "crd" else 1e-6)


# --------------------------------------------------------------------------------------------
# CompRess-2q inside the real objective: the student FIFO stays aligned with the teacher queue


class _FakeTeacher(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.proj = nn.Linear(3, dim).requires_grad_(False)

    def forward(self, x, maps=False):  # the objective may ask stage maps of a teacher; this one has none
        feat = self.proj(x.mean(dim=(2, 3)) + x[:, :, :4, :4].flatten(2).std(dim=2))
        return Embeddings(feat=feat, emb=feat)


def test_compress_2q_keeps_its_student_fifo_aligned_with_the_teacher_queue_over_steps():
    torch.manual_seed(0)
    dim, size, views, b = 8, 12, 2, 3  # 6 rows a step: the ring wraps at the second step
    student = Student(StudentConfig(arch="resnet10t", proj_hidden=16), dim, [0.5] * 3, [0.25] * 3)
    teacher = _FakeTeacher(dim)
    method = build_method(LossConfig(method="compress_2q", queue_size=size), MethodDims(student.feat_dim, dim))
    method.momentum = 0.5
    objective = DistillObjective(teacher, student, method, MomentumQueue(size, dim))
    optimizer = torch.optim.SGD([p for p in objective.trainable.parameters() if p.requires_grad], lr=0.5)
    objective.train()
    batchnorms = [m for m in method.momentum_student.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert batchnorms and all(m.training for m in batchnorms)  # batch statistics, as CompRess's student_key
    teacher_rows, student_rows = [], []
    for step in range(3):
        views_ = [torch.rand(b, 3, 16, 16) for _ in range(views)]
        out, state = objective(views_, torch.arange(b) + step * b)
        images = torch.cat(views_)
        teacher_rows.append(F.normalize(teacher(images).emb, dim=1))
        student_rows.append(F.normalize(method.momentum_student(images).emb, dim=1))  # what after_step will embed
        if step > 0:  # the loss compares against both queues as they stand before this step's rows
            s_out, t_out = state.branches[0].student, state.branches[0].teacher
            anchors = (objective.trainable["queue"].get(), method.student_queue.get())
            assert out["compress"].item() == pytest.approx(compress_loss(s_out.emb, t_out.emb, *anchors, 0.04).item(), rel=1e-5)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        ema_before = [p.clone() for p in method.momentum_student.parameters()]
        objective.after_step(state)
        for old, new, online in zip(ema_before, method.momentum_student.parameters(), student.parameters()):
            assert torch.allclose(new, 0.5 * old + 0.5 * online.detach(), atol=1e-6)

        teacher_queue, student_queue = objective.trainable["queue"], method.student_queue
        assert int(teacher_queue.ptr) == int(student_queue.ptr) and int(teacher_queue.count) == int(student_queue.count)
        assert torch.allclose(teacher_queue.ordered(), torch.cat(teacher_rows)[-size:], atol=1e-5)
        assert torch.allclose(student_queue.ordered(), torch.cat(student_rows)[-size:], atol=1e-5)
    state = objective.trainable.state_dict()
    assert any(k.startswith("method.momentum_student.") for k in state) and "method.student_queue.embeddings" in state
    assert not any(k.startswith("method._online") for k in state)
