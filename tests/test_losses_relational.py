"""RKD, SP and FitNet: values by hand and against plain loops, their
invariances, gradients, the lazy FitNet regressor, and the feature-map path of students and teachers."""

import math

import pytest
import timm
import torch

from ssl_kd.config import LossConfig, StudentConfig, TrainConfig
from ssl_kd.distillation import DistillObjective
from ssl_kd.embeddings import Embeddings
from ssl_kd.errors import UserError
from ssl_kd.loop import build_optimizer
from ssl_kd.losses import MethodDims, build_method
from ssl_kd.losses.base import StepContext
from ssl_kd.losses.fitnet import FitNet, HintRegressor, resize_to
from ssl_kd.losses.rkd import RKD, rkd_angle_loss, rkd_distance_loss, triplet_angles
from ssl_kd.losses.sp import SP, similarity_preserving_loss
from ssl_kd.students import Student
from ssl_kd.teachers import Teacher

CTX = StepContext(num_views=2)


def _t(rows):
    return torch.tensor(rows, dtype=torch.float64)


def _randn(*shape, seed=0):
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def _emb(feat=None, maps=None):
    return Embeddings(feat=feat, emb=feat, maps=maps)


# --------------------------------------------------------------------------------------------
# plain-loop references (float64 scalars, no F.* losses)


def _huber(x, y):
    d = abs(x - y)
    return 0.5 * d * d if d < 1 else d - 0.5


def _dist(a, b):
    return math.sqrt(sum((float(p) - float(q)) ** 2 for p, q in zip(a, b)))


def _ref_distance(s, t):
    n = len(s)

    def normalized(x):
        d = [[_dist(x[i], x[j]) for j in range(n)] for i in range(n)]
        nonzero = [v for row in d for v in row if v > 0]
        mu = sum(nonzero) / len(nonzero)
        return [[v / mu for v in row] for row in d]

    ds, dt = normalized(s), normalized(t)
    return sum(_huber(ds[i][j], dt[i][j]) for i in range(n) for j in range(n)) / n**2


def _ref_angle(s, t):
    n = len(s)

    def cos_at(x, a, b, c):
        u, v = [float(p - q) for p, q in zip(x[b], x[a])], [float(p - q) for p, q in zip(x[c], x[a])]
        nu, nv = math.sqrt(sum(e * e for e in u)), math.sqrt(sum(e * e for e in v))
        if nu == 0 or nv == 0:
            return 0.0  # n(0) = 0, as F.normalize
        return sum(p * q for p, q in zip(u, v)) / (nu * nv)

    total = sum(_huber(cos_at(s, a, b, c), cos_at(t, a, b, c)) for a in range(n) for b in range(n) for c in range(n))
    return total / n**3


def _ref_sp(s, t):
    n = len(s)

    def gram(x):
        q = [row.flatten().tolist() for row in x]
        g = [[sum(p * r for p, r in zip(q[i], q[j])) for j in range(n)] for i in range(n)]
        return [[v / math.sqrt(sum(w * w for w in row)) for v in row] for row in g]

    gs, gt = gram(s), gram(t)
    return sum((gt[i][j] - gs[i][j]) ** 2 for i in range(n) for j in range(n)) / n**2


# --------------------------------------------------------------------------------------------
# RKD


def test_rkd_distance_by_hand():
    # teacher: a 3-4-5 triangle; mean non-zero distance (3+4+5)/3 = 4 -> d^T = 0.75, 1, 1.25
    teacher = _t([[0, 0], [3, 0], [0, 4]])
    # student: a 1-1-sqrt2 triangle; mu_S = (2 + sqrt 2)/3 -> d^S = 1/mu, 1/mu, sqrt2/mu
    student = _t([[0, 0], [1, 0], [0, 1]])
    mu = (2 + math.sqrt(2)) / 3
    diffs = [1 / mu - 0.75, 1 / mu - 1.0, math.sqrt(2) / mu - 1.25]  # pairs (0,1), (0,2), (1,2); all |.| < 1
    # each pair appears twice in the 3x3 matrix, the diagonal is 0 - 0; SmoothL1 = 0.5 d^2; mean over 9
    expected = 2 * sum(0.5 * d * d for d in diffs) / 9
    assert rkd_distance_loss(student, teacher).item() == pytest.approx(expected, abs=1e-12)
    assert expected == pytest.approx(0.0034812, abs=1e-7)


def test_rkd_matches_plain_loops_on_random_data():
    student, teacher = _randn(4, 3, seed=1), 5 * _randn(4, 6, seed=2)  # widths may differ
    assert rkd_distance_loss(student, teacher).item() == pytest.approx(_ref_distance(student, teacher), abs=1e-12)
    assert rkd_angle_loss(student, teacher).item() == pytest.approx(_ref_angle(student, teacher), abs=1e-12)
    far = _t([[0, 0], [10, 0], [0, 0.1], [0.1, 0.1]])  # normalized distances that differ by > 1: SmoothL1's linear part
    assert rkd_distance_loss(far, student[:, :2]).item() == pytest.approx(_ref_distance(far, student[:, :2]), abs=1e-12)


def test_rkd_angles_from_the_gram_matrix_equal_the_direct_form_with_its_gradient():
    """triplet_angles never forms the N x N x D differences; values and gradients equal the direct form."""
    def direct(x):
        d = torch.nn.functional.normalize(x[None] - x[:, None], p=2, dim=2)
        return d @ d.transpose(1, 2)

    gen = torch.Generator().manual_seed(3)
    x = (torch.randn(24, 16, generator=gen, dtype=torch.float64) + 3.0).requires_grad_()
    target = direct(torch.randn(24, 9, generator=gen, dtype=torch.float64))
    assert torch.allclose(triplet_angles(x), direct(x), atol=1e-12)
    (grad_gram,) = torch.autograd.grad(torch.nn.functional.smooth_l1_loss(triplet_angles(x), target), x)
    (grad_direct,) = torch.autograd.grad(torch.nn.functional.smooth_l1_loss(direct(x), target), x)
    assert torch.allclose(grad_gram, grad_direct, atol=1e-15)
    wide = 5 * torch.rand(64, 512, generator=gen)  # float32, post-ReLU-like features far from the origin
    assert (triplet_angles(wide) - direct(wide.double())).abs().max() < 1e-5


def test_rkd_is_invariant_to_rotation_translation_and_scale():
    teacher = _randn(6, 3, seed=3)
    rotation, _ = torch.linalg.qr(_randn(3, 3, seed=4))
    student = 7.0 * teacher @ rotation + _t([[1.0, -2.0, 3.0]])
    assert rkd_distance_loss(student, teacher).item() == pytest.approx(0.0, abs=1e-12)
    assert rkd_angle_loss(student, teacher).item() == pytest.approx(0.0, abs=1e-12)
    stretched = teacher * _t([[3.0, 1.0, 1.0]])  # not a similarity transform: both terms see it
    assert rkd_distance_loss(stretched, teacher).item() > 1e-4 and rkd_angle_loss(stretched, teacher).item() > 1e-4


def test_rkd_module_weights_and_gradients_reach_only_the_student():
    student = _randn(6, 4, seed=6).requires_grad_()
    teacher = _randn(6, 8, seed=7).requires_grad_()
    out = RKD(distance_weight=25.0, angle_weight=50.0)(_emb(student), _emb(teacher), None, CTX)
    assert set(out) == {"loss", "distance", "angle"}
    assert out["loss"].item() == pytest.approx(25 * out["distance"].item() + 50 * out["angle"].item(), rel=1e-12)
    out["loss"].backward()
    assert student.grad is not None and student.grad.abs().sum() > 0 and torch.isfinite(student.grad).all()
    assert teacher.grad is None
    only_angle = RKD(distance_weight=0.0, angle_weight=1.0)(_emb(student), _emb(teacher), None, CTX)
    assert set(only_angle) == {"loss", "angle"}  # a 0 weight is an ablation


def test_rkd_gradient_is_finite_with_duplicate_rows():
    student = torch.cat([_randn(3, 4, seed=8)] * 2).requires_grad_()  # two views that came out identical
    out = RKD()(_emb(student), _emb(_randn(6, 5, seed=9)), None, CTX)
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and torch.isfinite(student.grad).all()


# --------------------------------------------------------------------------------------------
# SP


def test_sp_by_hand():
    # N = 2 images, maps [2, 2, 1, 1] (flattened: 2-d rows)
    teacher = _t([[1, 0], [0, 1]]).view(2, 2, 1, 1)  # G^T = I: rows already unit
    student = _t([[1, 0], [1, 1]]).view(2, 2, 1, 1)  # G^S = [[1, 1], [1, 2]] -> rows [1,1]/sqrt2, [1,2]/sqrt5
    r2, r5 = math.sqrt(2), math.sqrt(5)
    diff = [1 - 1 / r2, -1 / r2, -1 / r5, 1 - 2 / r5]
    expected = sum(d * d for d in diff) / 4
    assert similarity_preserving_loss(student, teacher).item() == pytest.approx(expected, abs=1e-12)
    assert expected == pytest.approx(0.1992330, abs=1e-7)


def test_sp_matches_plain_loops_with_different_map_shapes():
    student, teacher = _randn(5, 3, 2, 2, seed=10), _randn(5, 8, 1, 3, seed=11)
    assert similarity_preserving_loss(student, teacher).item() == pytest.approx(_ref_sp(student, teacher), abs=1e-12)


def test_sp_is_invariant_to_the_scale_of_either_networks_maps():
    student, teacher = _randn(6, 4, 2, 2, seed=12), _randn(6, 3, 3, 3, seed=13)
    base = similarity_preserving_loss(student, teacher).item()
    assert base > 0
    assert similarity_preserving_loss(9.0 * student, teacher).item() == pytest.approx(base, rel=1e-10)
    assert similarity_preserving_loss(student, 0.01 * teacher).item() == pytest.approx(base, rel=1e-10)
    assert similarity_preserving_loss(3.0 * teacher, teacher).item() == pytest.approx(0.0, abs=1e-14)
    channels = teacher[:, torch.randperm(3, generator=torch.Generator().manual_seed(0))]  # Gram ignores channel order
    assert similarity_preserving_loss(channels, teacher).item() == pytest.approx(0.0, abs=1e-14)


def test_sp_module_uses_the_last_map_and_only_the_student_gets_gradients():
    student_maps = [_randn(4, 2, 4, 4, seed=14).requires_grad_(), _randn(4, 3, 2, 2, seed=15).requires_grad_()]
    teacher_maps = [_randn(4, 5, 4, 4, seed=16), _randn(4, 6, 1, 1, seed=17).requires_grad_()]
    out = SP(weight=3000.0)(_emb(maps=student_maps), _emb(maps=teacher_maps), None, CTX)
    expected = _ref_sp(student_maps[-1].detach(), teacher_maps[-1].detach())
    assert out["sp"].item() == pytest.approx(expected, abs=1e-12)
    assert out["loss"].item() == pytest.approx(3000 * expected, rel=1e-10)
    out["loss"].backward()
    assert student_maps[1].grad is not None and student_maps[0].grad is None and teacher_maps[1].grad is None
    with pytest.raises(ValueError, match="maps=True"):
        SP()(_emb(feat=torch.zeros(4, 2)), _emb(maps=teacher_maps), None, CTX)


# --------------------------------------------------------------------------------------------
# FitNet


def _identity_regressor(channels: int) -> HintRegressor:
    """A materialized regressor whose conv is the identity and whose eval-mode BN is exactly the identity."""
    reg = HintRegressor()
    hint = torch.zeros(1, channels, 2, 2)
    reg(hint, hint)
    with torch.no_grad():
        reg.weight.copy_(torch.eye(channels).view(channels, channels, 1, 1))
        reg.bias.zero_()
        reg.bn.running_mean.zero_()
        reg.bn.running_var.fill_(1 - reg.bn.eps)  # (x - 0) / sqrt(1 - eps + eps) = x
    return reg.eval()


def _fitnet_with(regressor: HintRegressor, hint_stage: int = 1) -> FitNet:
    method = FitNet(hint_stage=hint_stage, weight=100.0)
    method.regressor = regressor
    return method


def test_fitnet_is_zero_when_the_regressed_hint_equals_the_teachers():
    teacher_hint = torch.rand(4, 3, 5, 5)  # >= 0, as a post-ReLU ResNet stage
    method = _fitnet_with(_identity_regressor(3))
    maps = [torch.zeros(4, 1, 1, 1), teacher_hint.clone()]
    out = method(_emb(maps=maps), _emb(maps=[torch.zeros(4, 1, 1, 1), teacher_hint]), None, CTX)
    assert out["loss"].item() == pytest.approx(0.0, abs=1e-10)
    # by hand: student hint = teacher hint + 0.5 -> MSE = 0.25, loss = 100 * 0.25
    maps = [torch.zeros(4, 1, 1, 1), teacher_hint + 0.5]
    out = method(_emb(maps=maps), _emb(maps=[torch.zeros(4, 1, 1, 1), teacher_hint]), None, CTX)
    assert out["hint"].item() == pytest.approx(0.25, abs=1e-6) and out["loss"].item() == pytest.approx(25.0, abs=1e-4)


def test_fitnet_resizes_the_student_hint_to_the_teachers_size():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    assert torch.equal(resize_to(x, (2, 2)), torch.tensor([[[[2.5, 4.5], [10.5, 12.5]]]]))  # 2x2 block means
    assert resize_to(x, (8, 8)).shape == (1, 1, 8, 8) and resize_to(x, (4, 4)) is x
    method = FitNet(hint_stage=-1)
    student = [torch.rand(4, 6, 8, 8, requires_grad=True)]
    out = method(_emb(maps=student), _emb(maps=[torch.rand(4, 10, 3, 3)]), None, CTX)  # 8 -> 3: pooled
    assert method.regressor.weight.shape == (10, 6, 1, 1) and torch.isfinite(out["loss"])
    out = method(_emb(maps=[torch.rand(4, 6, 2, 2)]), _emb(maps=[torch.rand(4, 10, 3, 3)]), None, CTX)  # 2 -> 3: bilinear
    assert torch.isfinite(out["loss"])


def test_fitnet_gradients_reach_the_student_and_the_regressor_not_the_teacher():
    student_hint = torch.rand(4, 3, 4, 4, requires_grad=True)
    teacher_hint = torch.rand(4, 5, 4, 4, requires_grad=True)
    method = FitNet(hint_stage=0)
    method(_emb(maps=[student_hint]), _emb(maps=[teacher_hint]), None, CTX)["loss"].backward()
    assert student_hint.grad.abs().sum() > 0 and teacher_hint.grad is None
    assert method.regressor.weight.grad.abs().sum() > 0 and method.regressor.bn.weight.grad is not None


def test_fitnet_lazy_regressor_is_trained_by_an_optimizer_built_before_the_first_step_and_reloads():
    method = FitNet(hint_stage=0)
    assert method.regressor.has_uninitialized_params()
    optimizer = build_optimizer(method, TrainConfig(lr=0.1))  # as the loop does, before any forward
    maps_s, maps_t = [torch.rand(4, 3, 4, 4)], [torch.rand(4, 5, 2, 2)]
    out = method(_emb(maps=maps_s), _emb(maps=maps_t), None, CTX)
    before = method.regressor.weight.detach().clone()
    optimizer.zero_grad()
    out["loss"].backward()
    optimizer.step()
    assert not torch.equal(method.regressor.weight, before)  # the optimizer holds the materialized tensor
    resumed = FitNet(hint_stage=0)
    build_optimizer(resumed, TrainConfig()).load_state_dict(optimizer.state_dict())
    resumed.load_state_dict(method.state_dict())  # a checkpoint materializes the lazy parameters
    method.eval(), resumed.eval()
    loss = method(_emb(maps=maps_s), _emb(maps=maps_t), None, CTX)["loss"]
    assert torch.equal(resumed(_emb(maps=maps_s), _emb(maps=maps_t), None, CTX)["loss"], loss)


def test_fitnet_hint_stage_out_of_range_is_a_user_error():
    maps = [torch.rand(2, 3, 4, 4)] * 3
    with pytest.raises(UserError, match=r"hint_stage=5 .* 3 stage maps"):
        FitNet(hint_stage=5)(_emb(maps=maps), _emb(maps=maps), None, CTX)
    with pytest.raises(ValueError, match="maps=True"):
        FitNet()(_emb(feat=torch.zeros(2, 3)), _emb(maps=maps), None, CTX)


# --------------------------------------------------------------------------------------------
# registry and config


def test_methods_are_registered_with_the_config_weights():
    dims = MethodDims(student_dim=8, teacher_dim=16)
    cfg = LossConfig(method="rkd")
    rkd = build_method(cfg, dims)
    assert isinstance(rkd, RKD) and (rkd.distance_weight, rkd.angle_weight) == (25.0, 50.0) and not rkd.needs_maps
    sp = build_method(LossConfig(method="sp"), dims)
    assert isinstance(sp, SP) and sp.weight == 3000.0 and sp.needs_maps
    cfg = LossConfig(method="fitnet")
    cfg.fitnet.hint_stage, cfg.fitnet.weight = 3, 7.0
    fitnet = build_method(cfg, dims)
    assert isinstance(fitnet, FitNet) and (fitnet.hint_stage, fitnet.weight) == (3, 7.0) and fitnet.needs_maps


# --------------------------------------------------------------------------------------------
# the feature-map path of students and teachers


MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def _images(n=2, size=32):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("arch,small_stem", [("resnet10t", False), ("resnet14t", False), ("resnet18", True)])
def test_student_maps_path_equals_the_plain_forward(arch, small_stem):
    student = Student(StudentConfig(arch=arch, small_stem=small_stem, proj_hidden=32), 16, MEAN, STD).eval()
    x = _images()
    with torch.no_grad():
        plain, with_maps = student(x), student(x, maps=True)
    assert plain.maps is None
    assert torch.equal(plain.feat, with_maps.feat) and torch.equal(plain.emb, with_maps.emb)
    channels = [info["num_chs"] for info in student.backbone.feature_info]
    assert [m.shape[1] for m in with_maps.maps] == channels and len(channels) == 5  # stem, layer1..layer4
    assert with_maps.maps[-1].shape[-1] == (4 if small_stem else 1)


def _teacher(arch, num_classes=0, **kwargs):
    torch.manual_seed(0)
    backbone = timm.create_model(arch, pretrained=False, num_classes=num_classes, **kwargs)
    return Teacher(backbone, arch=arch, mean=MEAN, std=STD, has_logits=num_classes > 0)


@pytest.mark.parametrize("arch,num_classes,kwargs", [
    ("resnet10t", 0, {}), ("resnet50", 0, {}), ("resnet10t", 5, {}), ("vit_small_patch16_224", 0, {"img_size": 32}),
])
def test_teacher_maps_path_equals_the_plain_forward(arch, num_classes, kwargs):
    teacher = _teacher(arch, num_classes, **kwargs)
    x = _images()
    plain, with_maps = teacher(x), teacher(x, maps=True)
    assert torch.equal(plain.feat, with_maps.feat) and plain.maps is None
    assert (plain.logits is None) == (num_classes == 0)
    if num_classes:
        assert torch.equal(plain.logits, with_maps.logits)
    assert all(not m.requires_grad for m in with_maps.maps)
    if arch.startswith("vit"):
        assert len(with_maps.maps) == 12 and all(m.shape == (2, 384, 2, 2) for m in with_maps.maps)  # token grids


@pytest.mark.parametrize("method", ["sp", "fitnet", "rkd"])
def test_distill_objective_passes_maps_and_trains_the_student(method):
    teacher = _teacher("resnet14t")
    student = Student(StudentConfig(arch="resnet10t", proj_hidden=32), teacher.embed_dim, MEAN, STD)
    dims = MethodDims(student_dim=student.feat_dim, teacher_dim=teacher.embed_dim)
    objective = DistillObjective(teacher, student, build_method(LossConfig(method=method), dims), None)
    optimizer = build_optimizer(objective.trainable, TrainConfig())
    views = [_images(4), _images(4).flip(-1)]
    out, state = objective(views)
    assert torch.isfinite(out["loss"])
    student_out, teacher_out = state.branches[0].student, state.branches[0].teacher
    assert (student_out.maps is not None) == (method != "rkd") and (teacher_out.maps is not None) == (method != "rkd")
    optimizer.zero_grad()
    out["loss"].backward()
    optimizer.step()
    objective.after_step(state)
    assert student.backbone.conv1[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())
