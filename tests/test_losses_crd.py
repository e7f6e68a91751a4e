"""CRD: scores and NCE by hand, against a plain loop with several views, the
bank updates after a step, the state across a checkpoint, and its input errors."""

import io
import math

import pytest
import torch
import torch.nn.functional as F

from ssl_kd.config import LossConfig
from ssl_kd.embeddings import Embeddings
from ssl_kd.losses import MethodDims, build_method
from ssl_kd.losses.base import StepContext
from ssl_kd.losses.crd import CRD, EPS, nce_loss, nce_scores
from ssl_kd.losses.memory import MemoryBank


def _t(rows):
    return torch.tensor(rows, dtype=torch.float64)


def _n(x):
    norm = math.sqrt(sum(float(v) ** 2 for v in x))
    return [float(v) / norm for v in x]


def _dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def _ref_crd_side(anchors, bank, rows, num_views, tau, num_samples):
    """One CRD direction with Z from this (first) batch: -(1/rows) sum [log h(pos) + sum log(1-h(neg))]."""
    b, k = len(rows), len(rows[0]) - 1
    exps = [[math.exp(_dot(anchors[v * b + i], list(map(float, bank[j]))) / tau) for j in rows[i]]
            for v in range(num_views) for i in range(b)]
    z = num_samples * sum(sum(r) for r in exps) / (len(exps) * (k + 1))
    noise = k / num_samples
    total = 0.0
    for row in exps:
        p = [e / z for e in row]
        total += math.log(p[0] / (p[0] + noise + EPS)) + sum(math.log(noise / (x + noise + EPS)) for x in p[1:])
    return -total / len(exps), z


# --------------------------------------------------------------------------------------------
# CRD


def test_crd_scores_and_nce_by_hand():
    # exp(<v, m> / 0.5): v0 = [1, 0] against [1, 0], [0, 1] -> [e^2, 1]
    scores = nce_scores(_t([[1, 0]]), _t([[1, 0], [0, 1]]), torch.tensor([[0, 1]]), 1, 0.5)
    assert torch.allclose(scores, _t([[math.exp(2), 1.0]]))
    # P = [2, 1] (Z = 1), K = 1 negative, N = 2 images: K/N = 0.5
    # log h(pos) = log(2 / 2.5), log(1 - h(neg)) = log(0.5 / 1.5)
    expected = -(math.log(2 / (2.5 + EPS)) + math.log(0.5 / (1.5 + EPS)))
    assert nce_loss(_t([[2, 1]]), torch.tensor(1.0, dtype=torch.float64), 2).item() == pytest.approx(expected, abs=1e-12)
    # Z divides P: scores [4, 2] with Z = 2 are the same
    assert nce_loss(_t([[4, 2]]), torch.tensor(2.0, dtype=torch.float64), 2).item() == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("drawn", [4, 12])  # fewer rows drawn than the bank has (gather), or more (all dot products)
def test_crd_scores_read_the_drawn_bank_rows_for_every_view(drawn):
    gen = torch.Generator().manual_seed(1)
    anchors, bank = torch.randn(3 * 2, 5, generator=gen, dtype=torch.float64), torch.randn(10, 5, generator=gen, dtype=torch.float64)
    rows = torch.randint(0, 10, (2, drawn), generator=gen)
    expected = torch.stack([torch.exp(anchors[v * 2 + b] @ bank[rows[b]].T / 0.1) for v in range(3) for b in range(2)])
    assert torch.allclose(nce_scores(anchors, bank, rows, 3, 0.1), expected, rtol=1e-12)


def _crd_setup(views=3, b=4, d_s=6, d_t=5, n=10, k=7, seed=5):
    torch.manual_seed(seed)
    method = CRD(d_s, d_t, n, embed_dim=4, negatives=k, temperature=0.2).double()
    gen = torch.Generator().manual_seed(seed)
    student = Embeddings(torch.randn(views * b, d_s, generator=gen, dtype=torch.float64).requires_grad_(), torch.zeros(views * b, d_t))
    teacher = Embeddings(torch.randn(views * b, d_t, generator=gen, dtype=torch.float64).requires_grad_(), torch.zeros(views * b, d_t))
    ctx = StepContext(num_views=views, index=torch.tensor([3, 0, 9, 5][:b]))
    return method, student, teacher, ctx


def _record_negatives(monkeypatch):
    drawn = []
    original = MemoryBank.sample_negatives

    def record(self, idx, k, generator=None):
        drawn.append(original(self, idx, k, generator))
        return drawn[-1]

    monkeypatch.setattr(MemoryBank, "sample_negatives", record)
    return drawn


def _embed_by_hand(x, linear):
    w, bias = linear.weight.detach().tolist(), linear.bias.detach().tolist()
    return [_n([_dot(row, wr) + bi for wr, bi in zip(w, bias)]) for row in x.detach().tolist()]


def test_crd_matches_the_plain_loop_with_views_and_sets_z_once(monkeypatch):
    drawn = _record_negatives(monkeypatch)
    method, student, teacher, ctx = _crd_setup()
    out = method(student, teacher, None, ctx)
    rows = [[i] + negs for i, negs in zip(ctx.index.tolist(), drawn[0].tolist())]
    e_s, e_t = _embed_by_hand(student.feat, method.embed_student), _embed_by_hand(teacher.feat, method.embed_teacher)
    s_side, z_s = _ref_crd_side(e_s, method.teacher_bank.memory.tolist(), rows, 3, 0.2, 10)
    t_side, z_t = _ref_crd_side(e_t, method.student_bank.memory.tolist(), rows, 3, 0.2, 10)
    assert out["crd_student"].item() == pytest.approx(s_side, rel=1e-9)
    assert out["crd_teacher"].item() == pytest.approx(t_side, rel=1e-9)
    assert out["loss"].item() == pytest.approx(0.8 * (s_side + t_side), rel=1e-9)
    assert method.z.tolist() == pytest.approx([z_s, z_t], rel=1e-9)
    z = method.z.clone()
    method(Embeddings(3 * student.feat, student.emb), teacher, None, ctx)  # another batch: Z stays
    assert torch.equal(method.z, z)


def test_crd_after_step_updates_the_banks_with_view_zero_rows():
    method, student, teacher, ctx = _crd_setup()
    before_s, before_t = method.student_bank.memory.clone(), method.teacher_bank.memory.clone()
    out = method(student, teacher, None, ctx)
    assert torch.equal(method.student_bank.memory, before_s)  # the forward does not write
    method.after_step(student, teacher, ctx, out.memo)  # the rows come from this forward, not from state kept in between
    idx = ctx.index
    e_s = torch.tensor(_embed_by_hand(student.feat[:4], method.embed_student), dtype=torch.float64)
    e_t = torch.tensor(_embed_by_hand(teacher.feat[:4], method.embed_teacher), dtype=torch.float64)
    assert torch.allclose(method.student_bank.memory[idx], F.normalize(0.5 * before_s[idx] + 0.5 * e_s, dim=1), atol=1e-12)
    assert torch.allclose(method.teacher_bank.memory[idx], F.normalize(0.5 * before_t[idx] + 0.5 * e_t, dim=1), atol=1e-12)
    untouched = torch.tensor([i for i in range(10) if i not in idx.tolist()])
    assert torch.equal(method.student_bank.memory[untouched], before_s[untouched])


def test_crd_state_dict_round_trip_keeps_banks_and_z():
    method, student, teacher, ctx = _crd_setup()
    out = method(student, teacher, None, ctx)
    method.after_step(student, teacher, ctx, out.memo)
    state = method.state_dict()
    assert {"student_bank.memory", "teacher_bank.memory", "z"} <= set(state)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    fresh = CRD(6, 5, 10, embed_dim=4, negatives=7, temperature=0.2).double()
    assert (fresh.z < 0).all()
    fresh.load_state_dict(torch.load(buffer))
    for key, value in state.items():
        assert torch.equal(fresh.state_dict()[key], value), key
    torch.manual_seed(11)
    a = method(student, teacher, None, ctx)["loss"].item()
    torch.manual_seed(11)
    assert fresh(student, teacher, None, ctx)["loss"].item() == pytest.approx(a, rel=1e-12)


def test_crd_needs_indices_and_the_training_set_size():
    method, student, teacher, _ = _crd_setup()
    with pytest.raises(ValueError, match="index"):
        method(student, teacher, None, StepContext(num_views=3))
    with pytest.raises(ValueError, match="num_samples"):
        build_method(LossConfig(method="crd"), MethodDims(6, 5))
    built = build_method(LossConfig(method="crd"), MethodDims(6, 5, num_samples=50))
    assert isinstance(built, CRD) and (built.negatives, built.temperature, built.momentum, built.weight) == (4096, 0.07, 0.5, 0.8)
    assert built.embed_student.out_features == 128 and built.student_bank.memory.shape == (50, 128)
