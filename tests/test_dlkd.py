"""DLKD: the three terms by hand, against plain loops, their properties,
and the module (weights, gradients, config, lookup)."""

import math

import pytest
import torch
import torch.nn.functional as F

from ssl_kd.config import DLKDConfig, LossConfig
from ssl_kd.embeddings import Embeddings
from ssl_kd.errors import UserError
from ssl_kd.losses.base import StepContext
from ssl_kd.losses import DLKD, MethodDims, build_method
from ssl_kd.losses.dlkd import alignment_loss, correlation_loss, queue_contrast_loss


def _t(rows):
    return torch.tensor(rows, dtype=torch.float64)


# --------------------------------------------------------------------------------------------
# plain-loop references (float64, one row at a time, no torch.softmax / F.* losses)


def _cos(a, b):
    return float(a @ b) / (float(a.norm()) * float(b.norm()))


def _ref_align(s, t):
    return 2.0 - 2.0 * sum(_cos(s[i], t[i]) for i in range(len(s))) / len(s)


def _ref_corr(s, t, num_views, tau):
    b = len(s) // num_views
    total, rows = 0.0, 0
    for v in range(1, num_views):
        for i in range(b):
            a = v * b + i
            s_logits = [_cos(s[a], s[j]) / tau for j in range(b)]
            t_logits = [_cos(t[a], t[j]) / tau for j in range(b)]
            s_norm = math.log(sum(math.exp(x) for x in s_logits))
            t_norm = math.log(sum(math.exp(x) for x in t_logits))
            for j in range(b):
                log_p, log_q = t_logits[j] - t_norm, s_logits[j] - s_norm
                total += math.exp(log_p) * (log_p - log_q)
            rows += 1
    return total / rows


def _ref_contrast(s, t, queue, tau):
    total = 0.0
    for i in range(len(s)):
        pos = math.exp(_cos(s[i], t[i]) / tau)
        neg = sum(math.exp(_cos(s[i], q) / tau) for q in queue)
        total += -math.log(pos / (pos + neg))
    return total / len(s)


# --------------------------------------------------------------------------------------------
# by hand: 2 views x B=2 images, rows view-major (v0i0, v0i1, v1i0, v1i1)


def test_alignment_by_hand():
    student = _t([[1, 0], [0, 3], [2, 2], [5, 0]])  # scales do not matter
    teacher = _t([[2, 0], [1, 0], [1, 0], [0, 1]])
    # cosines per row: 1, 0, 1/sqrt(2), 0 -> mean = (1 + 1/sqrt 2) / 4
    expected = 2 - 2 * (1 + 1 / math.sqrt(2)) / 4  # = 1.6464466
    assert alignment_loss(student, teacher).item() == pytest.approx(expected, abs=1e-9)


def test_correlation_by_hand():
    # anchors = view 0 rows (n0, n1); compared = view 1 rows (a0, a1); tau_c = 0.5
    teacher = _t([[1, 0], [0, 1], [1, 0], [0, 1]])  # a0 ~ n0, a1 ~ n1
    student = _t([[1, 0], [0, 1], [0, 1], [0, 2]])  # a0 ~ n1 (wrong), a1 ~ n1 (right)
    # a0: teacher cos [1, 0] -> logits [2, 0]; student cos [0, 1] -> logits [0, 2]
    #     P_T = [p, 1 - p] with p = e^2 / (e^2 + 1);  log P_S = [log(1 - p), log p]
    #     KL = p (log p - log(1-p)) + (1-p) (log(1-p) - log p) = (2p - 1) * log(p / (1-p))
    # a1: teacher and student both cos [0, 1] -> KL = 0
    # batchmean over the |A| = 2 compared rows
    p = math.exp(2) / (math.exp(2) + 1)
    kl_a0 = p * (math.log(p) - math.log(1 - p)) + (1 - p) * (math.log(1 - p) - math.log(p))
    expected = (kl_a0 + 0.0) / 2  # = tanh(1) = 0.7615942
    assert expected == pytest.approx(math.tanh(1))
    assert correlation_loss(student, teacher, 2, 0.5).item() == pytest.approx(expected, abs=1e-9)


def test_queue_contrast_by_hand():
    e1, e2, e3 = [1, 0, 0], [0, 1, 0], [0, 0, 1]
    student = _t([e1, [0, 2, 0], e1, [0, 0, 3]])
    teacher = _t([[4, 0, 0], e1, e2, e3])
    queue = _t([e2, e3])  # the queue holds normalized rows
    # tau = 0.5; per row: positive cosine, queue cosines -> logits / tau -> -log softmax[0]
    # row 0: s=e1 t=e1: [1 | 0, 0] -> [2, 0, 0] -> log(e^2 + 2) - 2
    # row 1: s=e2 t=e1: [0 | 1, 0] -> [0, 2, 0] -> log(1 + e^2 + 1) - 0
    # row 2: s=e1 t=e2: [0 | 0, 0] -> [0, 0, 0] -> log 3
    # row 3: s=e3 t=e3: [1 | 0, 1] -> [2, 0, 2] -> log(2 e^2 + 1) - 2
    rows = [
        math.log(math.exp(2) + 2) - 2,
        math.log(math.exp(2) + 2),
        math.log(3),
        math.log(2 * math.exp(2) + 1) - 2,
    ]
    expected = sum(rows) / 4  # = 1.1016...
    assert queue_contrast_loss(student, teacher, queue, 0.5).item() == pytest.approx(expected, abs=1e-9)


# --------------------------------------------------------------------------------------------
# against the plain loops on random data


def test_terms_match_plain_loops_on_random_data():
    gen = torch.Generator().manual_seed(0)
    views, b, d_s, d_t, k = 3, 5, 6, 4, 7
    s_feat = torch.randn(views * b, d_s, generator=gen, dtype=torch.float64)
    s_emb = torch.randn(views * b, d_t, generator=gen, dtype=torch.float64)
    t = torch.randn(views * b, d_t, generator=gen, dtype=torch.float64)
    queue = F.normalize(torch.randn(k, d_t, generator=gen, dtype=torch.float64), dim=1)

    assert alignment_loss(s_emb, t).item() == pytest.approx(_ref_align(s_emb, t), abs=1e-9)
    # correlation compares within each network, so the widths may differ (d_s vs d_t)
    assert correlation_loss(s_feat, t, views, 0.5).item() == pytest.approx(_ref_corr(s_feat, t, views, 0.5), abs=1e-9)
    assert correlation_loss(s_feat, t, views, 0.2).item() == pytest.approx(_ref_corr(s_feat, t, views, 0.2), abs=1e-9)
    assert queue_contrast_loss(s_emb, t, queue, 0.07).item() == pytest.approx(_ref_contrast(s_emb, t, queue, 0.07), rel=1e-9)


# --------------------------------------------------------------------------------------------
# properties


def test_alignment_is_zero_when_equal_up_to_scale_and_four_when_opposite():
    gen = torch.Generator().manual_seed(1)
    teacher = torch.randn(8, 5, generator=gen)
    scale = torch.rand(8, 1, generator=gen) + 0.5
    assert alignment_loss(teacher * scale, teacher).item() == pytest.approx(0.0, abs=1e-6)
    assert alignment_loss(-3 * teacher, teacher).item() == pytest.approx(4.0, abs=1e-6)


def test_correlation_is_zero_for_identical_cosine_structure():
    gen = torch.Generator().manual_seed(2)
    teacher = torch.randn(2 * 6, 5, generator=gen, dtype=torch.float64)
    rotation, _ = torch.linalg.qr(torch.randn(5, 5, generator=gen, dtype=torch.float64))
    student = 2.5 * teacher @ rotation  # same cosines between every pair of rows
    assert correlation_loss(student, teacher, 2, 0.5).item() == pytest.approx(0.0, abs=1e-10)
    # and a different structure gives a positive loss
    other = torch.randn(2 * 6, 5, generator=gen, dtype=torch.float64)
    assert correlation_loss(other, teacher, 2, 0.5).item() > 1e-3


def test_correlation_is_invariant_to_permuting_the_images():
    gen = torch.Generator().manual_seed(3)
    views, b = 3, 6
    student = torch.randn(views * b, 4, generator=gen, dtype=torch.float64)
    teacher = torch.randn(views * b, 7, generator=gen, dtype=torch.float64)
    perm = torch.randperm(b, generator=gen)
    rows = torch.cat([v * b + perm for v in range(views)])  # the same permutation in every view
    base = correlation_loss(student, teacher, views, 0.5).item()
    assert correlation_loss(student[rows], teacher[rows], views, 0.5).item() == pytest.approx(base, abs=1e-10)


def test_correlation_needs_two_views():
    with pytest.raises(ValueError):
        correlation_loss(torch.randn(4, 3), torch.randn(4, 3), 1, 0.5)


def test_contrast_without_negatives_is_zero():
    gen = torch.Generator().manual_seed(4)
    student, teacher = torch.randn(6, 4, generator=gen), torch.randn(6, 4, generator=gen)
    assert queue_contrast_loss(student, teacher, None, 0.07).item() == pytest.approx(0.0, abs=1e-7)
    assert queue_contrast_loss(student, teacher, torch.zeros(0, 4), 0.07).item() == pytest.approx(0.0, abs=1e-7)


def test_contrast_falls_as_the_positive_cosine_grows():
    gen = torch.Generator().manual_seed(5)
    queue = F.normalize(torch.randn(16, 3, generator=gen), dim=1)
    student = torch.tensor([[1.0, 0.0, 0.0]])
    losses = []
    for angle in torch.linspace(math.pi, 0, 9):  # positive cosine -1 -> 1
        teacher = torch.tensor([[math.cos(angle), math.sin(angle), 0.0]])
        losses.append(queue_contrast_loss(student, teacher, queue, 0.2).item())
    assert all(later < earlier for earlier, later in zip(losses, losses[1:])), losses


# --------------------------------------------------------------------------------------------
# the module


def _embeddings(gen, views=2, b=4, d_s=6, d_t=5, requires_grad=False):
    n = views * b
    student = Embeddings(
        feat=torch.randn(n, d_s, generator=gen).requires_grad_(),
        emb=torch.randn(n, d_t, generator=gen).requires_grad_(),
    )
    teacher = Embeddings(
        feat=torch.randn(n, d_t, generator=gen).requires_grad_(requires_grad),
        emb=torch.randn(n, d_t, generator=gen).requires_grad_(requires_grad),
    )
    return student, teacher


def test_total_is_the_weighted_sum_of_the_parts():
    gen = torch.Generator().manual_seed(6)
    torch.manual_seed(0)
    method = DLKD(MethodDims(6, 5), DLKDConfig(align_weight=3.0, corr_weight=5.0, contrast_weight=7.0, corr_temperature=0.4,
                                             contrast_temperature=0.1))
    student, teacher = _embeddings(gen)
    queue = F.normalize(torch.randn(10, 5, generator=gen), dim=1)
    out = method(student, teacher, queue, StepContext(num_views=2))

    align = alignment_loss(student.emb, teacher.emb)
    corr = correlation_loss(method.corr_head(student.feat), teacher.feat, 2, 0.4)
    contrast = queue_contrast_loss(student.emb, teacher.emb, queue, 0.1)
    assert out["align"].item() == pytest.approx(align.item(), abs=1e-6)
    assert out["corr"].item() == pytest.approx(corr.item(), abs=1e-6)
    assert out["contrast"].item() == pytest.approx(contrast.item(), abs=1e-6)
    expected = 3.0 * align + 5.0 * corr + 7.0 * contrast
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert out["loss"].ndim == 0
    assert all(not out[name].requires_grad for name in ("align", "corr", "contrast"))


@pytest.mark.parametrize("off", ["align", "corr", "contrast"])
def test_a_zero_weight_removes_its_term(off):
    gen = torch.Generator().manual_seed(7)
    torch.manual_seed(0)
    weights = {"align": 2.0, "corr": 3.0, "contrast": 4.0}
    weights[off] = 0.0
    method = DLKD(MethodDims(6, 5), DLKDConfig(align_weight=weights["align"], corr_weight=weights["corr"], contrast_weight=weights["contrast"]))
    student, teacher = _embeddings(gen)
    queue = F.normalize(torch.randn(10, 5, generator=gen), dim=1)
    out = method(student, teacher, queue, StepContext(num_views=2))
    assert off not in out  # the part is not even computed ...
    expected = sum(weights[name] * out[name].item() for name in weights if name != off)
    assert out["loss"].item() == pytest.approx(expected, rel=1e-6)  # ... and the rest add up
    out["loss"].backward()
    if off == "corr":  # the correlation head then learns nothing
        assert all(p.grad is None or not p.grad.any() for p in method.corr_head.parameters())


def test_gradients_reach_the_student_and_the_head_never_the_teacher():
    gen = torch.Generator().manual_seed(8)
    torch.manual_seed(0)
    method = DLKD(MethodDims(6, 5), DLKDConfig())
    student, teacher = _embeddings(gen, requires_grad=True)
    queue = F.normalize(torch.randn(10, 5, generator=gen), dim=1).requires_grad_()
    method(student, teacher, queue, StepContext(num_views=2))["loss"].backward()
    assert student.feat.grad is not None and student.feat.grad.abs().sum() > 0
    assert student.emb.grad is not None and student.emb.grad.abs().sum() > 0
    for p in method.corr_head.parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert teacher.feat.grad is None
    assert teacher.emb.grad is None


def test_build_method_uses_the_dlkd_section_of_the_config():
    settings = DLKDConfig(align_weight=1.5, corr_weight=2.5, contrast_weight=3.5, corr_temperature=0.3, contrast_temperature=0.2)
    method = build_method(LossConfig(dlkd=settings), MethodDims(6, 5))
    assert isinstance(method, DLKD) and method.settings == settings and method.needs_queue
    assert method.corr_head[0].in_features == 6 and method.corr_head[-1].out_features == 6
    ablation = build_method(LossConfig(method="dlkd_corr", dlkd=settings), MethodDims(6, 5))
    assert (ablation.settings.align_weight, ablation.settings.corr_weight, ablation.settings.contrast_weight) == (0.0, 2.5, 0.0)
    assert settings.align_weight == 1.5  # the ablation copied the section, never changed it
    supcon = build_method(LossConfig(dlkd=DLKDConfig(contrast="supcon", supcon_dim=16)), MethodDims(6, 5))
    assert not supcon.needs_queue and supcon.supcon_heads.student.weight.shape == (16, 6)
    assert supcon.supcon_heads.teacher.weight.shape == (16, 5)


def test_build_method_rejects_an_unknown_name():
    with pytest.raises(UserError, match="dlkd") as err:
        build_method(LossConfig(method="nope"), MethodDims(6, 5))
    assert "nope" in str(err.value)


def test_supcon_contrast_trains_both_heads_and_the_student_never_the_teacher():
    gen = torch.Generator().manual_seed(9)
    torch.manual_seed(0)
    method = DLKD(MethodDims(6, 5), DLKDConfig(contrast="supcon", supcon_dim=8, align_weight=0.0, corr_weight=0.0))
    student, teacher = _embeddings(gen, requires_grad=True)
    out = method(student, teacher, None, StepContext(num_views=2))  # no queue: in-batch negatives only
    out["loss"].backward()
    assert set(out) == {"loss", "contrast"} and out["contrast"].item() > 0
    assert student.feat.grad is not None and student.feat.grad.abs().sum() > 0
    for head in (method.supcon_heads.student, method.supcon_heads.teacher):
        assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0
    assert teacher.feat.grad is None and teacher.emb.grad is None


def test_supcon_contrast_does_not_depend_on_the_order_of_the_images():
    gen = torch.Generator().manual_seed(10)
    torch.manual_seed(0)
    method = DLKD(MethodDims(6, 5), DLKDConfig(contrast="supcon", align_weight=0.0, corr_weight=0.0))
    student, teacher = _embeddings(gen)
    perm = torch.randperm(student.feat.shape[0], generator=gen)
    permuted_s = Embeddings(feat=student.feat[perm], emb=student.emb[perm])
    permuted_t = Embeddings(feat=teacher.feat[perm], emb=teacher.emb[perm])
    ctx = StepContext(num_views=2)
    torch.testing.assert_close(method(student, teacher, None, ctx)["contrast"], method(permuted_s, permuted_t, None, ctx)["contrast"])
