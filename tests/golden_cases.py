"""The golden cases of tests/test_golden_values.py: seeded float64 inputs, each registered method built as
training builds it, and the reference formula of tests/golden_reference.py on the same inputs.

Each `*_case(...)` returns a function of pytest's `monkeypatch` giving (the project's outputs, the golden
values); the test module's docstring says what is compared and how the layouts are matched.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

import golden_reference as ref
import ssl_kd.losses.stkd as stkd_module
from ssl_kd.config import (CKDConfig, CompRessConfig, CRDConfig, DISTConfig, DLKDConfig, FitNetConfig, KDConfig,
                           LossConfig, RKDConfig, SEEDConfig, SPConfig, STKDConfig)
from ssl_kd.embeddings import Embeddings
from ssl_kd.losses import MethodDims, StepContext, build_method

IMAGES, VIEWS = 4, 2  # B images, V views each (DLKD: its reference's 4 rotations)
ROTATIONS = 4
STUDENT_DIM, TEACHER_DIM, CLASSES, QUEUE_ROWS = 6, 5, 7, 9

# (project output, golden values): the golden's keys must be exactly the project's
Comparison = tuple[dict, dict]



# --------------------------------------------------------------------------------------------
# inputs


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_rows(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=gen, dtype=torch.float64)


def unit_rows(gen: torch.Generator, rows: int, dim: int) -> torch.Tensor:
    x = random_rows(gen, rows, dim)
    return x / x.norm(dim=1, keepdim=True)


def image_major_to_view_major(x: torch.Tensor, num_views: int) -> torch.Tensor:
    """Row i * V + v (the reference's) -> row v * B + i (the project's)."""
    images = x.shape[0] // num_views
    return x.reshape(images, num_views, *x.shape[1:]).transpose(0, 1).reshape(x.shape)


def teacher_embeddings(feat: torch.Tensor, logits: torch.Tensor | None = None, maps=None) -> Embeddings:
    """A teacher's outputs: its embedding IS its backbone feature (ssl_kd/embeddings.py)."""
    return Embeddings(feat=feat, emb=feat, logits=logits, maps=maps)


def build(cfg: LossConfig, dims: MethodDims):
    torch.manual_seed(0)  # the heads' initial weights; the goldens read them back anyway
    return build_method(cfg, dims)


def views_ctx(num_views: int = VIEWS, index: torch.Tensor | None = None) -> StepContext:
    return StepContext(num_views=num_views, index=index)


# --------------------------------------------------------------------------------------------
# logit methods (KD, CKD, DIST): real logits of a supervised teacher, or pseudo-logits


def logit_inputs(seed: int, supervised: bool) -> tuple[Embeddings, Embeddings, torch.Tensor]:
    gen = seeded(seed)
    n = VIEWS * IMAGES
    student = Embeddings(feat=random_rows(gen, n, STUDENT_DIM), emb=random_rows(gen, n, TEACHER_DIM))
    teacher = teacher_embeddings(random_rows(gen, n, TEACHER_DIM), logits=3 * random_rows(gen, n, CLASSES) if supervised else None)
    return student, teacher, unit_rows(gen, QUEUE_ROWS, TEACHER_DIM)


def logit_dims(supervised: bool) -> MethodDims:
    return MethodDims(STUDENT_DIM, TEACHER_DIM, num_classes=CLASSES if supervised else 0)


def golden_logits(method, student: Embeddings, teacher: Embeddings, anchors: torch.Tensor, pseudo_temperature: float):
    """(student, teacher) logits as the reference gets them: a supervised teacher's real logits and the
    student's linear head (weights read from the method); for a label-free teacher the project's documented
    departure, pseudo-logits over the anchors (ssl_kd/losses/logits.py)."""
    if method.head is not None:
        return ref.linear(student.feat, method.head.fc.weight, method.head.fc.bias), teacher.logits
    return ref.pseudo_logits(student.emb, anchors, pseudo_temperature), ref.pseudo_logits(teacher.emb, anchors, pseudo_temperature)


def kd_case(supervised: bool, first_step: bool = False) -> Callable:
    def run(monkeypatch) -> Comparison:
        cfg = LossConfig(method="kd", kd=KDConfig(temperature=3.0, weight=0.7), pseudo_logit_temperature=0.2)
        method = build(cfg, logit_dims(supervised))
        student, teacher, queue = logit_inputs(1, supervised)
        out = method(student, teacher, None if first_step else queue, views_ctx())
        # first step (empty queue): the anchors are the batch's own normalized teacher rows (logits.py)
        anchors = ref.normalize_rows(teacher.emb) if first_step else queue
        z_s, z_t = golden_logits(method, student, teacher, anchors, 0.2)
        # departure: tau = 1 on pseudo-logits (their one temperature is t_p), tau on real logits
        kd = ref.hinton_kd_loss(z_s, z_t, 3.0 if supervised else 1.0)
        return out, {"loss": 0.7 * kd, "kd": kd}
    return run


def ckd_case(supervised: bool) -> Callable:
    def run(monkeypatch) -> Comparison:
        cfg = LossConfig(method="ckd", ckd=CKDConfig(temperature=0.5, weight=3.0), pseudo_logit_temperature=0.2)
        method = build(cfg, logit_dims(supervised))
        student, teacher, queue = logit_inputs(2, supervised)
        out = method(student, teacher, queue, views_ctx())
        z_s, z_t = golden_logits(method, student, teacher, queue, 0.2)
        # the reference's batch is one view: each view is its own batch, the V losses averaged (ckd.py)
        per_view = [ref.ckd_contrastive_loss(z_t[v * IMAGES:(v + 1) * IMAGES], z_s[v * IMAGES:(v + 1) * IMAGES], 0.5) for v in range(VIEWS)]
        ckd = torch.stack(per_view).mean()
        return out, {"loss": 3.0 * ckd, "ckd": ckd}
    return run


def dist_case(supervised: bool) -> Callable:
    def run(monkeypatch) -> Comparison:
        cfg = LossConfig(method="dist", dist=DISTConfig(temperature=2.0, beta=1.5, gamma=2.5), pseudo_logit_temperature=0.2)
        method = build(cfg, logit_dims(supervised))
        student, teacher, queue = logit_inputs(3, supervised)
        out = method(student, teacher, queue, views_ctx())
        z_s, z_t = golden_logits(method, student, teacher, queue, 0.2)
        golden = ref.dist_loss(z_s, z_t, beta=1.5, gamma=2.5, tau=2.0 if supervised else 1.0)  # tau = 1 on pseudo-logits
        return out, {"loss": golden["total"], "inter": golden["inter"], "intra": golden["intra"]}
    return run


# --------------------------------------------------------------------------------------------
# STKD: KD on mixup virtual samples (no official code: the golden is the docstring's formula)


def linear_networks(gen: torch.Generator, pixels: int) -> dict[str, torch.Tensor]:
    """Stand-ins for the two networks: linear maps of the flattened images."""
    return {"student_feat": random_rows(gen, pixels, STUDENT_DIM), "student_proj": random_rows(gen, STUDENT_DIM, TEACHER_DIM),
            "teacher_feat": random_rows(gen, pixels, TEACHER_DIM), "teacher_logits": random_rows(gen, TEACHER_DIM, CLASSES)}


def run_linear_networks(nets: dict, views: list[torch.Tensor]) -> tuple[Embeddings, Embeddings]:
    x = torch.cat(views).flatten(1)  # view-major, as the loop stacks them
    student_feat, teacher_feat = x @ nets["student_feat"], x @ nets["teacher_feat"]
    student = Embeddings(feat=student_feat, emb=student_feat @ nets["student_proj"])
    return student, teacher_embeddings(teacher_feat, logits=teacher_feat @ nets["teacher_logits"])


def stkd_case(supervised: bool) -> Callable:
    def run(monkeypatch) -> Comparison:
        draws, draw_mix = [], stkd_module.draw_mix

        def recorded_draw_mix(batch_size, alpha):  # the method's own draw, kept for the golden
            draws.append(draw_mix(batch_size, alpha))
            return draws[-1]

        monkeypatch.setattr(stkd_module, "draw_mix", recorded_draw_mix)
        cfg = LossConfig(method="stkd", stkd=STKDConfig(temperature=3.0, mixup_alpha=0.8, weight=0.6), pseudo_logit_temperature=0.2)
        method = build(cfg, logit_dims(supervised))
        gen = seeded(4)
        views = [random_rows(gen, IMAGES, 3, 2, 2) for _ in range(VIEWS)]
        nets, queue = linear_networks(gen, 12), unit_rows(gen, QUEUE_ROWS, TEACHER_DIM)
        torch.manual_seed(5)
        mixed = method.batch_transform(views)
        out = dict(method(*run_linear_networks(nets, mixed), queue, views_ctx()))
        out["mixed_views"] = torch.cat(mixed)

        (lam, perm), = draws
        golden_mixed = ref.mixup(views, lam, perm)
        student, teacher = run_linear_networks(nets, golden_mixed)
        z_s, z_t = golden_logits(method, student, teacher, queue, 0.2)
        kd = ref.hinton_kd_loss(z_s, z_t, 3.0 if supervised else 1.0)  # the KD formula on the mixed images; tau = 1 on pseudo-logits
        return out, {"loss": 0.6 * kd, "kd": kd, "mixed_views": torch.cat(golden_mixed)}
    return run


# --------------------------------------------------------------------------------------------
# DLKD: alignment, correlation over the rotations, and a contrast term


def mlp_head_weights(head) -> dict:
    """The Linear -> BatchNorm1d -> ReLU -> Linear head's tensors, by position."""
    first, norm, _, last = head
    return dict(w1=first.weight, b1=first.bias, bn_weight=norm.weight, bn_bias=norm.bias, bn_eps=norm.eps, w2=last.weight, b2=last.bias)


DLKD_WEIGHTS = {  # the weights each registry entry keeps of (align 10, corr 20, contrast 0.5): the ablations zero the rest
    "dlkd": {"align": 10.0, "corr": 20.0, "contrast": 0.5},
    "dlkd_align": {"align": 10.0},
    "dlkd_corr": {"corr": 20.0},
}


def dlkd_reference_inputs(seed: int) -> dict[str, torch.Tensor]:
    """Image-major rows, as the reference's rotation loader gives them: row i * 4 + r is rotation r of image i."""
    gen = seeded(seed)
    n = ROTATIONS * IMAGES
    return {"student_feat": random_rows(gen, n, STUDENT_DIM), "student_emb": random_rows(gen, n, TEACHER_DIM),
            "teacher_feat": random_rows(gen, n, TEACHER_DIM), "queue": unit_rows(gen, QUEUE_ROWS, TEACHER_DIM)}


def dlkd_project_inputs(rows: dict, permute: bool = True) -> tuple[Embeddings, Embeddings]:
    order = (lambda x: image_major_to_view_major(x, ROTATIONS)) if permute else (lambda x: x)
    student = Embeddings(feat=order(rows["student_feat"]), emb=order(rows["student_emb"]))
    return student, teacher_embeddings(order(rows["teacher_feat"]))


def dlkd_golden(method, name: str, rows: dict, contrast: str, contrast_temperature: float) -> dict:
    """ifding/DLKD's three terms on the image-major rows; student_emb plays AlignLoss's MLP output (the
    project's projector h_A), the teacher's feature is feat_t for all three."""
    terms = {
        "align": lambda: ref.dlkd_align_loss(rows["student_emb"], rows["teacher_feat"]),
        "corr": lambda: ref.dlkd_corr_loss(ref.dlkd_mlp_head(rows["student_feat"], **mlp_head_weights(method.corr_head)),
                                           rows["teacher_feat"], temperature=0.5),
    }
    if contrast == "supcon":  # the reference's SupConLoss, labels=None (the project is label-free)
        heads = method.supcon_heads
        terms["contrast"] = lambda: ref.dlkd_supcon_loss(ref.dlkd_embed(rows["student_feat"], heads.student.weight, heads.student.bias),
                                                         ref.dlkd_embed(rows["teacher_feat"], heads.teacher.weight, heads.teacher.bias),
                                                         temperature=contrast_temperature)
    else:  # no reference: the project's InfoNCE against the queue (dlkd.py docstring)
        terms["contrast"] = lambda: ref.dlkd_queue_infonce(rows["student_emb"], rows["teacher_feat"], rows["queue"], contrast_temperature)
    weights = DLKD_WEIGHTS[name]
    parts = {part: terms[part]() for part in weights}
    return {"loss": sum(weights[part] * value for part, value in parts.items()), **parts}


def dlkd_settings(contrast: str, contrast_temperature: float) -> DLKDConfig:
    return DLKDConfig(align_weight=10.0, corr_weight=20.0, contrast_weight=0.5, corr_temperature=0.5,
                      contrast_temperature=contrast_temperature, contrast=contrast, supcon_dim=8)


def dlkd_case(name: str, contrast: str) -> Callable:
    def run(monkeypatch) -> Comparison:
        # SupCon at tau = 0.03: its factor tau / 0.07 is not 1, and the denominators are small enough that the
        # reference's 1e-7 inside the log (hence also its max shift) moves the value ~4e-4, far beyond the tolerance
        tau = 0.2 if contrast == "queue" else 0.03
        method = build(LossConfig(method=name, dlkd=dlkd_settings(contrast, tau)), MethodDims(STUDENT_DIM, TEACHER_DIM))
        rows = dlkd_reference_inputs(6)
        out = method(*dlkd_project_inputs(rows), rows["queue"] if method.needs_queue else None, views_ctx(ROTATIONS))
        return out, dlkd_golden(method, name, rows, contrast, tau)
    return run


# --------------------------------------------------------------------------------------------
# queue and bank methods


def embedding_inputs(seed: int) -> tuple[Embeddings, Embeddings, torch.Tensor]:
    gen = seeded(seed)
    n = VIEWS * IMAGES
    student = Embeddings(feat=random_rows(gen, n, STUDENT_DIM), emb=random_rows(gen, n, TEACHER_DIM))
    return student, teacher_embeddings(random_rows(gen, n, TEACHER_DIM)), unit_rows(gen, QUEUE_ROWS, TEACHER_DIM)


def seed_case(teacher_temperature: float) -> Callable:
    def run(monkeypatch) -> Comparison:
        cfg = LossConfig(method="seed", seed=SEEDConfig(student_temperature=0.2, teacher_temperature=teacher_temperature, weight=0.5))
        method = build(cfg, MethodDims(STUDENT_DIM, TEACHER_DIM))
        student, teacher, queue = embedding_inputs(7)
        out = method(student, teacher, queue, views_ctx())
        seed = ref.seed_loss(student.emb, teacher.emb, queue.T, 0.2, teacher_temperature)  # the reference keeps its queue [dim, K]
        return out, {"loss": 0.5 * seed, "seed": seed}
    return run


def fill_queue(queue_module, rows: torch.Tensor) -> None:
    """Set a MomentumQueue's state: exactly `rows`, full."""
    with torch.no_grad():
        queue_module.embeddings.copy_(rows)
        queue_module.count.fill_(rows.shape[0])
        queue_module.ptr.fill_(0)


def compress_case(name: str, queues: int) -> Callable:
    def run(monkeypatch) -> Comparison:
        cfg = LossConfig(method=name, queue_size=QUEUE_ROWS, compress=CompRessConfig(temperature=0.04, queues=queues, weight=0.5))
        method = build(cfg, MethodDims(STUDENT_DIM, TEACHER_DIM))
        student, teacher, teacher_queue = embedding_inputs(8)
        student_memory = teacher_queue  # CompReSSA (1q): the student against the teacher's memory
        if method.queues == 2:  # CompReSSMomentum (2q): the momentum student's memory, set here
            student_memory = unit_rows(seeded(9), QUEUE_ROWS, TEACHER_DIM)
            fill_queue(method.student_queue, student_memory)
        out = method(student, teacher, teacher_queue, views_ctx())
        kl = ref.compress_loss(teacher.emb, student.emb, teacher_queue, student_memory, 0.04)
        return out, {"loss": 0.5 * kl, "compress": kl}
    return run


def crd_case(num_samples: int, negatives: int) -> Callable:
    """num_samples > negatives + 1: the project gathers bank rows; otherwise it reads dense scores."""
    def run(monkeypatch) -> Comparison:
        cfg = LossConfig(method="crd", crd=CRDConfig(temperature=0.07, embed_dim=8, negatives=negatives, momentum=0.5, weight=0.8))
        method = build(cfg, MethodDims(STUDENT_DIM, TEACHER_DIM, num_samples=num_samples))
        student, teacher, _ = embedding_inputs(10)
        gen = seeded(11)
        student_memory, teacher_memory = unit_rows(gen, num_samples, 8), unit_rows(gen, num_samples, 8)
        with torch.no_grad():
            method.student_bank.memory.copy_(student_memory)
            method.teacher_bank.memory.copy_(teacher_memory)
        drawn, sample_negatives = [], method.student_bank.sample_negatives

        def recorded_sample_negatives(idx, k):  # the method's own random draw, kept for the golden
            drawn.append(sample_negatives(idx, k))
            return drawn[-1]

        monkeypatch.setattr(method.student_bank, "sample_negatives", recorded_sample_negatives)
        index = torch.randperm(num_samples, generator=gen)[:IMAGES]
        torch.manual_seed(12)
        out = method(student, teacher, None, views_ctx(index=index))

        # the reference's contrast_idx [bsz, K+1] (positive first), the V*B rows as one batch: each
        # view's row takes its image's indices (departure: V views share their image's negatives)
        (negative_idx,) = drawn
        sample_idx = torch.cat([index[:, None], negative_idx], dim=1).repeat(VIEWS, 1)
        v1 = ref.dlkd_embed(student.feat, method.embed_student.weight, method.embed_student.bias)  # RepDistiller's Embed
        v2 = ref.dlkd_embed(teacher.feat, method.embed_teacher.weight, method.embed_teacher.bias)
        golden = ref.crd_loss(v1, v2, student_memory, teacher_memory, sample_idx, 0.07, num_samples)
        crd = golden["s_loss"] + golden["t_loss"]
        return out, {"loss": 0.8 * crd, "crd": crd, "crd_student": golden["s_loss"], "crd_teacher": golden["t_loss"]}
    return run


# --------------------------------------------------------------------------------------------
# relational and feature methods


def rkd_case(monkeypatch) -> Comparison:
    method = build(LossConfig(method="rkd", rkd=RKDConfig(distance_weight=25.0, angle_weight=50.0)), MethodDims(STUDENT_DIM, TEACHER_DIM))
    student, teacher, _ = embedding_inputs(13)
    out = method(student, teacher, None, views_ctx())
    golden = ref.rkd_loss(student.feat, teacher.feat)  # distiller_zoo/RKD.py on the V*B rows (every view a point)
    return out, {"loss": 25.0 * golden["distance"] + 50.0 * golden["angle"], **golden}


def maps_inputs(seed: int, student_shapes, teacher_shapes) -> tuple[Embeddings, Embeddings]:
    gen = seeded(seed)
    student, teacher, _ = embedding_inputs(seed)
    n = VIEWS * IMAGES
    student.maps = [random_rows(gen, n, *shape) for shape in student_shapes]
    teacher.maps = [random_rows(gen, n, *shape) for shape in teacher_shapes]
    return student, teacher


def sp_case(monkeypatch) -> Comparison:
    method = build(LossConfig(method="sp", sp=SPConfig(weight=3000.0)), MethodDims(STUDENT_DIM, TEACHER_DIM))
    student, teacher = maps_inputs(14, [(2, 4, 4), (3, 2, 2)], [(3, 6, 6), (4, 3, 3)])
    out = method(student, teacher, None, views_ctx())
    # RepDistiller passes feat[-2], the last stage's map before pooling: the project's maps[-1]
    sp = ref.sp_similarity_loss(student.maps[-1], teacher.maps[-1])
    return out, {"loss": 3000.0 * sp, "sp": sp}


def fitnet_case(monkeypatch) -> Comparison:
    """Equal hint sizes, where ConvReg is the 1x1 conv + BN + ReLU the project uses for every size pair."""
    method = build(LossConfig(method="fitnet", fitnet=FitNetConfig(weight=100.0, hint_stage=2)), MethodDims(STUDENT_DIM, TEACHER_DIM))
    student, teacher = maps_inputs(15, [(2, 8, 8), (3, 6, 6), (3, 4, 4)], [(2, 8, 8), (4, 6, 6), (5, 4, 4)])
    out = method(student, teacher, None, views_ctx())  # materializes the lazy regressor; then its weights are read
    reg = method.regressor
    regressed = ref.fitnet_conv_reg_same_size(student.maps[2], reg.weight, reg.bias, reg.bn.weight, reg.bn.bias, reg.bn.eps)
    hint = ref.fitnet_hint_loss(regressed, teacher.maps[2])
    return out, {"loss": 100.0 * hint, "hint": hint}
