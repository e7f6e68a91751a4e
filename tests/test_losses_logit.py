"""Logit methods (KD, CKD, DIST, STKD) and their shared logits: by
hand, against plain loops, their properties, gradients, config, and one real distillation step."""

import math

import pytest
import torch
import torch.nn.functional as F

from ssl_kd.config import LossConfig, StudentConfig
from ssl_kd.distillation import DistillObjective
from ssl_kd.embeddings import Embeddings
from ssl_kd.losses import MethodDims, StepContext, build_method
from ssl_kd.losses.ckd import CKD, ckd_loss, ckd_loss_per_view
from ssl_kd.losses.dist import DIST, dist_loss, dist_terms, pearson_distance
from ssl_kd.losses.kd import KD, kd_loss
from ssl_kd.losses.logits import LogitHead, method_logits, pseudo_logits
from ssl_kd.losses.stkd import STKD, draw_mix, mix_views
from ssl_kd.queue import MomentumQueue
from ssl_kd.students import Student
from ssl_kd.teachers import Teacher

NAMES = ["kd", "ckd", "dist", "stkd"]


def _t(rows):
    return torch.tensor(rows, dtype=torch.float64)


# --------------------------------------------------------------------------------------------
# plain-loop references (float64, one row at a time, no torch softmax / F.* losses)


def _softmax(row, tau):
    exps = [math.exp(float(x) / tau) for x in row]
    return [e / sum(exps) for e in exps]


def _ref_kd(s, t, tau):
    total = 0.0
    for i in range(len(s)):
        p, q = _softmax(t[i], tau), _softmax(s[i], tau)
        total += sum(pj * (math.log(pj) - math.log(qj)) for pj, qj in zip(p, q))
    return tau**2 * total / len(s)


def _cos(a, b):
    return float(a @ b) / (float(a.norm()) * float(b.norm()))


def _ref_ckd(s, t, tau):
    total = 0.0
    for i in range(len(t)):
        row = [_cos(t[i], s[j]) / tau for j in range(len(s))]
        total += -(row[i] - math.log(sum(math.exp(x) for x in row)))
    return total / len(t)


def _ref_pearson_distance(a, b):
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    num = sum((x - ma) * (y - mb) for x, y in zip(a, b))
    den = math.sqrt(sum((x - ma) ** 2 for x in a)) * math.sqrt(sum((y - mb) ** 2 for y in b))
    return 1.0 - num / (den + 1e-8)


def _ref_dist(s, t, tau, beta, gamma):
    ys = [_softmax(row, tau) for row in s]  # row-wise softmax, once
    yt = [_softmax(row, tau) for row in t]
    n, c = len(ys), len(ys[0])
    inter = sum(_ref_pearson_distance(ys[i], yt[i]) for i in range(n)) / n
    intra = sum(_ref_pearson_distance([ys[i][k] for i in range(n)], [yt[i][k] for i in range(n)]) for k in range(c)) / c
    return tau**2 * (beta * inter + gamma * intra)


# --------------------------------------------------------------------------------------------
# KD


def test_kd_by_hand():
    # z_T = (1, 0), z_S = (0, 0), tau = 1: p_T = (e/(e+1), 1/(e+1)) = (0.7311, 0.2689), p_S = (0.5, 0.5)
    # KL = 0.7311 ln(0.7311/0.5) + 0.2689 ln(0.2689/0.5) = 0.110944 (research notes s.5.9)
    p = math.e / (math.e + 1)
    expected = p * math.log(p / 0.5) + (1 - p) * math.log((1 - p) / 0.5)
    assert expected == pytest.approx(0.110944, abs=1e-6)
    assert kd_loss(_t([[0, 0]]), _t([[1, 0]]), 1.0).item() == pytest.approx(expected, abs=1e-12)
    # tau = 2 on doubled logits: the same softmaxes, times tau^2 = 4
    assert kd_loss(_t([[0, 0]]), _t([[2, 0]]), 2.0).item() == pytest.approx(4 * expected, abs=1e-12)
    # batchmean: a second, identical-logit row adds 0 and halves the mean
    assert kd_loss(_t([[0, 0], [3, 1]]), _t([[1, 0], [3, 1]]), 1.0).item() == pytest.approx(expected / 2, abs=1e-12)


def test_kd_is_zero_for_equal_logits_and_matches_the_plain_loop():
    gen = torch.Generator().manual_seed(0)
    s, t = torch.randn(7, 5, generator=gen, dtype=torch.float64), torch.randn(7, 5, generator=gen, dtype=torch.float64)
    assert kd_loss(t.clone(), t, 4.0).item() == pytest.approx(0.0, abs=1e-12)
    assert kd_loss(t + 3.0, t, 4.0).item() == pytest.approx(0.0, abs=1e-12)  # softmax ignores a shift
    for tau in (1.0, 4.0):
        assert kd_loss(s, t, tau).item() == pytest.approx(_ref_kd(s, t, tau), rel=1e-10)


# --------------------------------------------------------------------------------------------
# CKD


def test_ckd_by_hand_symmetric_example():
    # u_1 = v_1 = (1, 0), u_2 = v_2 = (0, 1), tau = 1 -> M = [[1, 0], [0, 1]] (symmetric)
    # each row: -log(e / (e + 1)) = log(1 + 1/e) = 0.31326 (research notes s.2.1)
    expected = -math.log(math.e / (math.e + 1))
    assert expected == pytest.approx(0.31326, abs=1e-5)
    student, teacher = _t([[2, 0], [0, 3]]), _t([[1, 0], [0, 1]])  # logit scales do not matter
    assert ckd_loss(student, teacher, 1.0).item() == pytest.approx(expected, abs=1e-12)
    assert ckd_loss(teacher, student, 1.0).item() == pytest.approx(expected, abs=1e-12)  # symmetric M


def test_ckd_is_teacher_anchored_by_hand():
    # u_1 = u_2 = (1, 0) (teacher rows), v_1 = (1, 0), v_2 = (0, 1) (student rows), tau = 1
    # M = u v^T = [[1, 0], [1, 0]]; row 1 target 1: -log(e/(e+1)) = 0.31326; row 2 target 2: log(1+e) = 1.31326
    teacher, student = _t([[1, 0], [1, 0]]), _t([[1, 0], [0, 1]])
    expected = (-math.log(math.e / (math.e + 1)) + math.log(1 + math.e)) / 2  # = 0.81326
    assert ckd_loss(student, teacher, 1.0).item() == pytest.approx(expected, abs=1e-12)
    # student-anchored (M^T = [[1, 1], [0, 0]]) would give log 2 per row instead
    assert ckd_loss(teacher, student, 1.0).item() == pytest.approx(math.log(2), abs=1e-12)


def test_ckd_matches_the_plain_loop_and_contrasts_within_each_view():
    gen = torch.Generator().manual_seed(1)
    views, b = 3, 4
    s = torch.randn(views * b, 6, generator=gen, dtype=torch.float64)
    t = torch.randn(views * b, 6, generator=gen, dtype=torch.float64)
    for tau in (1.0, 0.5):
        assert ckd_loss(s, t, tau).item() == pytest.approx(_ref_ckd(s, t, tau), rel=1e-10)
    per_view = sum(_ref_ckd(s[v * b:(v + 1) * b], t[v * b:(v + 1) * b], 1.0) for v in range(views)) / views
    assert ckd_loss_per_view(s, t, views, 1.0).item() == pytest.approx(per_view, rel=1e-10)
    assert ckd_loss_per_view(s, t, 1, 1.0).item() == pytest.approx(_ref_ckd(s, t, 1.0), rel=1e-10)


# --------------------------------------------------------------------------------------------
# DIST


def test_pearson_distance_by_hand():
    # (1, 2, 3) vs (1, 3, 2): centred (-1, 0, 1), (-1, 1, 0): dot 1, norms sqrt2 * sqrt2 = 2 -> r = 0.5, d_p = 0.5
    assert pearson_distance(_t([[1, 2, 3]]), _t([[1, 3, 2]])).item() == pytest.approx(0.5, abs=1e-8)
    # a reversed 2-class row: r = -1 -> d_p = 2 (research notes s.3.2); a scaled, shifted copy: d_p = 0
    assert pearson_distance(_t([[0.7, 0.3]]), _t([[0.3, 0.7]])).item() == pytest.approx(2.0, abs=1e-6)
    assert pearson_distance(_t([[1, 2, 4]]), _t([[5, 7, 11]])).item() == pytest.approx(0.0, abs=1e-8)


def test_dist_by_hand():
    # z_S = [[1, 0], [0, 1]], z_T = [[0, 1], [1, 0]]: Y_S = [[p, q], [q, p]], Y_T = [[q, p], [p, q]]
    # every row reversed -> d_p = 2 each -> L_inter = 2; every column (p, q) vs (q, p) -> L_intra = 2
    s, t = _t([[1, 0], [0, 1]]), _t([[0, 1], [1, 0]])
    inter, intra = dist_terms(s, t, 1.0)
    assert (inter.item(), intra.item()) == (pytest.approx(2.0, abs=1e-6), pytest.approx(2.0, abs=1e-6))
    assert dist_loss(s, t, 1.0, 1.0, 1.0).item() == pytest.approx(4.0, abs=1e-6)
    # tau = 2 (still reversed) with beta = 2, gamma = 3: 2^2 * (2*2 + 3*2) = 40
    assert dist_loss(s, t, 2.0, 2.0, 3.0).item() == pytest.approx(40.0, rel=1e-6)


def test_dist_is_zero_for_identical_inputs_and_matches_the_plain_loop():
    gen = torch.Generator().manual_seed(2)
    s, t = torch.randn(6, 5, generator=gen, dtype=torch.float64), torch.randn(6, 5, generator=gen, dtype=torch.float64)
    # exactly 0 but for eps: each d_p is then eps / (||y - mean y||^2 + eps) ~ 1e-7 for these rows
    assert dist_loss(t.clone(), t, 1.0, 2.0, 2.0).item() == pytest.approx(0.0, abs=1e-5)
    for tau, beta, gamma in ((1.0, 2.0, 2.0), (4.0, 1.0, 3.0)):
        assert dist_loss(s, t, tau, beta, gamma).item() == pytest.approx(_ref_dist(s, t, tau, beta, gamma), rel=1e-9)


# --------------------------------------------------------------------------------------------
# logits: pseudo-logits over the queue, the first-step fallback, a supervised teacher


def test_pseudo_logits_are_cosines_over_the_temperature():
    gen = torch.Generator().manual_seed(3)
    emb = torch.randn(6, 4, generator=gen, dtype=torch.float64)
    queue = F.normalize(torch.randn(9, 4, generator=gen, dtype=torch.float64), dim=1)
    out = pseudo_logits(emb, queue, 0.1)
    assert out.shape == (6, 9)
    expected = torch.tensor([[_cos(emb[i], queue[k]) / 0.1 for k in range(9)] for i in range(6)], dtype=torch.float64)
    assert torch.allclose(out, expected, atol=1e-10)
    student = Embeddings(feat=torch.randn(6, 3, dtype=torch.float64), emb=emb)
    teacher = Embeddings(feat=emb, emb=2 * emb.flip(0))
    s_logits, t_logits = method_logits(student, teacher, queue, temperature=0.1)
    assert torch.allclose(s_logits, expected) and torch.allclose(t_logits, pseudo_logits(teacher.emb, queue, 0.1))


@pytest.mark.parametrize("queue", [None, torch.zeros(0, 4, dtype=torch.float64)])
def test_first_step_anchors_are_the_batch_teacher_embeddings(queue):
    gen = torch.Generator().manual_seed(4)
    student = Embeddings(feat=torch.randn(5, 3), emb=torch.randn(5, 4, generator=gen, dtype=torch.float64))
    teacher = Embeddings(feat=torch.randn(5, 4), emb=torch.randn(5, 4, generator=gen, dtype=torch.float64))
    s_logits, t_logits = method_logits(student, teacher, queue, temperature=0.5)
    anchors = F.normalize(teacher.emb, dim=1)
    assert s_logits.shape == t_logits.shape == (5, 5)
    assert torch.allclose(s_logits, pseudo_logits(student.emb, anchors, 0.5))
    assert torch.allclose(t_logits.diagonal(), torch.full((5,), 2.0, dtype=torch.float64))  # cos(t_i, t_i) / 0.5


def test_a_supervised_teacher_gives_real_logits_and_the_student_a_head():
    gen = torch.Generator().manual_seed(5)
    head = LogitHead(3, 7)
    student = Embeddings(feat=torch.randn(4, 3, generator=gen), emb=torch.randn(4, 5, generator=gen))
    teacher = Embeddings(feat=torch.randn(4, 5), emb=torch.randn(4, 5), logits=torch.randn(4, 7, generator=gen))
    s_logits, t_logits = method_logits(student, teacher, torch.randn(2, 5), temperature=0.1, head=head)
    assert torch.equal(t_logits, teacher.logits) and torch.allclose(s_logits, head(student.feat))
    with pytest.raises(ValueError, match="no logits"):
        method_logits(student, Embeddings(teacher.feat, teacher.emb), None, temperature=0.1, head=head)
    supervised, label_free = build_method(LossConfig(method="kd"), MethodDims(3, 5, num_classes=7)), build_method(LossConfig(method="kd"), MethodDims(3, 5))
    assert supervised.needs_logits and not supervised.needs_queue and supervised.head.fc.out_features == 7
    assert label_free.needs_queue and not label_free.needs_logits and label_free.head is None


# --------------------------------------------------------------------------------------------
# STKD's virtual samples


def _views(gen, views=2, b=5):
    return [torch.rand(b, 3, 4, 4, generator=gen) for _ in range(views)]


def test_stkd_mixes_every_view_with_the_same_lam_and_permutation():
    views = _views(torch.Generator().manual_seed(6), views=3)
    method = STKD(MethodDims(4, 4), mixup_alpha=1.0)
    torch.manual_seed(11)
    mixed = method.batch_transform(views)
    torch.manual_seed(11)
    lam, perm = draw_mix(5, 1.0)  # the same draws, redone
    assert 0.0 <= lam <= 1.0 and sorted(perm.tolist()) == list(range(5))
    for x, out in zip(views, mixed):
        assert torch.allclose(out, lam * x + (1 - lam) * x[perm])
    assert all(torch.equal(a, b) for a, b in zip(mixed, mix_views(views, lam, perm)))


def test_stkd_mixing_is_reproducible_under_the_seed_and_varies_without_it():
    views = _views(torch.Generator().manual_seed(7))
    method = STKD(MethodDims(4, 4), mixup_alpha=0.4)
    torch.manual_seed(3)
    first = method.batch_transform(views)
    torch.manual_seed(3)
    again = method.batch_transform(views)
    later = method.batch_transform(views)  # the RNG has moved on
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, later))
    lams = []
    for seed in range(20):
        torch.manual_seed(seed)
        lams.append(draw_mix(5, 0.4)[0])
    assert all(0.0 <= x <= 1.0 for x in lams) and len(set(lams)) == 20


def test_stkd_without_mixing_and_with_mismatched_views():
    views = _views(torch.Generator().manual_seed(8))
    unmixed = STKD(MethodDims(4, 4), mixup_alpha=0.0).batch_transform(views)
    assert all(torch.equal(a, b) for a, b in zip(unmixed, views))
    with pytest.raises(ValueError, match="same images"):
        STKD(MethodDims(4, 4)).batch_transform([torch.rand(4, 3, 2, 2), torch.rand(5, 3, 2, 2)])


# --------------------------------------------------------------------------------------------
# the modules: totals, gradients, config


def _embeddings(gen, n=6, d_s=5, d_t=4, num_classes=0, requires_grad=False):
    student = Embeddings(feat=torch.randn(n, d_s, generator=gen).requires_grad_(), emb=torch.randn(n, d_t, generator=gen).requires_grad_())
    logits = torch.randn(n, num_classes, generator=gen).requires_grad_(requires_grad) if num_classes else None
    teacher = Embeddings(
        feat=torch.randn(n, d_t, generator=gen).requires_grad_(requires_grad),
        emb=torch.randn(n, d_t, generator=gen).requires_grad_(requires_grad),
        logits=logits,
    )
    return student, teacher


def test_totals_are_the_weighted_parts():
    gen = torch.Generator().manual_seed(9)
    student, teacher = _embeddings(gen)
    queue = F.normalize(torch.randn(8, 4, generator=gen), dim=1)
    ctx, dims = StepContext(num_views=2), MethodDims(5, 4)
    s, t = pseudo_logits(student.emb, queue, 0.2), pseudo_logits(teacher.emb, queue, 0.2)
    cases = [  # on pseudo-logits tau = 1 whatever the method's temperature: the one temperature is t_p
        (KD(dims, temperature=3.0, weight=0.5, pseudo_temperature=0.2), {"kd": kd_loss(s, t, 1.0)}, lambda p: 0.5 * p["kd"]),
        (CKD(dims, temperature=0.7, weight=4.0, pseudo_temperature=0.2), {"ckd": ckd_loss_per_view(s, t, 2, 0.7)}, lambda p: 4.0 * p["ckd"]),
        (STKD(dims, temperature=2.0, weight=3.0, pseudo_temperature=0.2), {"kd": kd_loss(s, t, 1.0)}, lambda p: 3.0 * p["kd"]),
        (DIST(dims, temperature=2.0, beta=1.5, gamma=2.5, pseudo_temperature=0.2),
         dict(zip(("inter", "intra"), dist_terms(s, t, 1.0))), lambda p: 1.5 * p["inter"] + 2.5 * p["intra"]),
    ]
    for method, parts, total in cases:
        out = method(student, teacher, queue, ctx)
        assert set(out) == {"loss", *parts} and out["loss"].ndim == 0
        for name, value in parts.items():
            assert out[name].item() == pytest.approx(value.item(), rel=1e-6) and not out[name].requires_grad
        assert out["loss"].item() == pytest.approx(total(parts).item(), rel=1e-6)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("num_classes", [0, 7])
def test_gradients_reach_only_the_student_side(name, num_classes):
    gen = torch.Generator().manual_seed(10)
    method = build_method(LossConfig(method=name), MethodDims(5, 4, num_classes=num_classes))
    student, teacher = _embeddings(gen, num_classes=num_classes, requires_grad=True)
    queue = F.normalize(torch.randn(8, 4, generator=gen), dim=1).requires_grad_()
    method(student, teacher, queue, StepContext(num_views=2))["loss"].backward()
    used = student.feat if num_classes else student.emb  # the head reads feat; pseudo-logits read emb
    assert used.grad is not None and used.grad.abs().sum() > 0
    assert teacher.feat.grad is None and teacher.emb.grad is None and queue.grad is None
    if num_classes:
        assert teacher.logits.grad is None
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.head.parameters())


def test_build_method_uses_each_config_section():
    cfg = LossConfig(pseudo_logit_temperature=0.3)
    cfg.kd.temperature, cfg.kd.weight = 2.0, 0.9
    cfg.ckd.temperature, cfg.ckd.weight = 0.5, 7.0
    cfg.dist.temperature, cfg.dist.beta, cfg.dist.gamma = 3.0, 1.0, 4.0
    cfg.stkd.temperature, cfg.stkd.mixup_alpha, cfg.stkd.weight = 5.0, 0.2, 0.6
    expected = {
        "kd": (KD, {"temperature": 2.0, "weight": 0.9}),
        "ckd": (CKD, {"temperature": 0.5, "weight": 7.0}),
        "dist": (DIST, {"temperature": 3.0, "beta": 1.0, "gamma": 4.0}),
        "stkd": (STKD, {"temperature": 5.0, "mixup_alpha": 0.2, "weight": 0.6}),
    }
    for name, (cls, values) in expected.items():
        cfg.method = name
        method = build_method(cfg, MethodDims(5, 4))
        assert isinstance(method, cls) and method.pseudo_temperature == 0.3
        assert {key: getattr(method, key) for key in values} == values
    assert build_method(LossConfig(method="ckd"), MethodDims(5, 4)).weight == 10.0  # the paper's default


# --------------------------------------------------------------------------------------------
# a real distillation step: teacher, student, method, momentum queue


def _teacher(num_classes):
    import timm

    torch.manual_seed(0)
    backbone = timm.create_model("test_resnet", num_classes=num_classes)
    return Teacher(backbone, arch="test_resnet", mean=[0.5] * 3, std=[0.25] * 3, has_logits=num_classes > 0)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("num_classes", [0, 5])
def test_a_distill_objective_step_runs_forward_and_backward(name, num_classes):
    teacher = _teacher(num_classes)
    student = Student(StudentConfig(arch="test_resnet", proj_hidden=16), teacher.embed_dim, [0.5] * 3, [0.25] * 3)
    method = build_method(LossConfig(method=name, queue_size=16), MethodDims(student.feat_dim, teacher.embed_dim, num_classes=num_classes))
    queue = MomentumQueue(16, teacher.embed_dim) if method.needs_queue else None
    objective = DistillObjective(teacher, student, method, queue)
    gen = torch.Generator().manual_seed(12)
    for step in range(2):  # step 0: empty queue (batch anchors); step 1: the queue holds step 0's 8 rows
        views = [torch.rand(4, 3, 32, 32, generator=gen) for _ in range(2)]
        out, state = objective(views)
        assert torch.isfinite(out["loss"])
        objective.zero_grad()
        out["loss"].backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.backbone.parameters())
        objective.after_step(state)
    if queue is not None:
        assert int(queue.count) == 16


def test_ckd_on_pseudo_logits_does_not_depend_on_their_temperature():
    # n(z / t_p) = n(z): the pseudo-logit temperature cancels in CKD's normalization
    gen = torch.Generator().manual_seed(13)
    student, teacher = _embeddings(gen)
    queue = F.normalize(torch.randn(8, 4, generator=gen), dim=1)
    losses = [CKD(MethodDims(5, 4), pseudo_temperature=t)(student, teacher, queue, StepContext(2))["ckd"].item() for t in (0.05, 0.1, 1.0)]
    assert losses == pytest.approx([losses[0]] * 3, rel=1e-5)


def test_kd_on_pseudo_logits_has_one_temperature_and_on_real_logits_its_own():
    """softmax(cos / t_p), by hand: KD's tau = 4 does not stack on t_p = 0.1 (which would be cos / 0.4)."""
    gen = torch.Generator().manual_seed(3)
    student, teacher = _embeddings(gen)
    queue = F.normalize(torch.randn(8, 4, generator=gen), dim=1)
    cos_s, cos_t = F.normalize(student.emb, dim=1) @ queue.T, F.normalize(teacher.emb, dim=1) @ queue.T
    p_t, p_s = torch.softmax(cos_t / 0.1, dim=1), torch.softmax(cos_s / 0.1, dim=1)
    by_hand = (p_t * (p_t.log() - p_s.log())).sum(dim=1).mean()
    for tau in (1.0, 4.0):
        out = KD(MethodDims(5, 4), temperature=tau, pseudo_temperature=0.1)(student, teacher, queue, StepContext(2))
        assert out["kd"].item() == pytest.approx(by_hand.item(), rel=1e-5)

    student, teacher = _embeddings(gen, num_classes=3)
    method = KD(MethodDims(5, 4, num_classes=3), temperature=4.0)
    z_s, z_t = method.head(student.feat), teacher.logits
    q_t, q_s = torch.softmax(z_t / 4.0, dim=1), torch.softmax(z_s / 4.0, dim=1)
    by_hand = 16.0 * (q_t * (q_t.log() - q_s.log())).sum(dim=1).mean()
    assert method(student, teacher, None, StepContext(2))["kd"].item() == pytest.approx(by_hand.item(), rel=1e-5)
