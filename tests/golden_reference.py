"""Reference formulas of the distillation methods, re-implemented for tests/test_golden_values.py.

Each function is written from reading the reference code named in its comment, in plain torch and
in that code's own layout: its argument order, its row order (DLKD's rotations image-major, row % 4
the rotation), its constants (eps values, max shifts, base temperatures). Nothing here imports
ssl_kd, so a golden value never goes through the project's own loss helpers. Where the project
departs from a reference on purpose (pseudo-logits for label-free teachers, several views per
image), the test feeds these functions what the project feeds its loss; the formulas stay the
reference's. The two formulas that have no reference code (the project's pseudo-logits and DLKD's
queue InfoNCE) are written from the project's docstrings and say so.
"""

from __future__ import annotations

import torch

# --------------------------------------------------------------------------------------------
# small pieces the references share


def normalize_rows(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """x / ||x|| over the last axis (the references' Normalize(2) / F.normalize; 0 stays 0)."""
    return x / x.norm(dim=-1, keepdim=True).clamp_min(eps)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """nn.Linear: x W^T + b."""
    return x @ weight.T + (0.0 if bias is None else bias)


def log_softmax_rows(x: torch.Tensor) -> torch.Tensor:
    return x - torch.logsumexp(x, dim=1, keepdim=True)


def softmax_rows(x: torch.Tensor) -> torch.Tensor:
    return log_softmax_rows(x).exp()


def kl_batchmean(target_prob: torch.Tensor, log_input: torch.Tensor) -> torch.Tensor:
    """F.kl_div(log_input, target_prob, reduction='batchmean'): sum p (log p - log q) / rows."""
    return (torch.xlogy(target_prob, target_prob) - target_prob * log_input).sum() / target_prob.shape[0]


def cosine_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[i, j] = cos(a_i, b_j) (F.cosine_similarity broadcast over every pair)."""
    return (a @ b.T) / (a.norm(dim=1)[:, None] * b.norm(dim=1)[None, :])


def batch_norm_train(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float, dims: tuple[int, ...]) -> torch.Tensor:
    """BatchNorm in train mode: batch mean and biased variance over `dims`, then the affine map."""
    shape = [1] * x.dim()
    shape[1] = x.shape[1]
    mean = x.mean(dim=dims, keepdim=True)
    var = x.var(dim=dims, unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight.view(shape) + bias.view(shape)


# --------------------------------------------------------------------------------------------
# pseudo-logits: the project's stand-in for logits of a label-free teacher (no reference code;
# the formula of ssl_kd/losses/logits.py's module docstring)


def pseudo_logits(emb: torch.Tensor, anchors: torch.Tensor, temperature: float) -> torch.Tensor:
    """z = n(e) A^T / t_p: cosine of each row to each (already normalized) anchor, over t_p."""
    return normalize_rows(emb) @ anchors.T / temperature


# --------------------------------------------------------------------------------------------
# DLKD: ifding/DLKD helper/losses.py (AlignLoss, CorrLoss, SupConLoss, Embed) and the MLPHead the
# losses own (models/mlp_head.py, BYOL's: Linear -> BatchNorm1d -> ReLU -> Linear)


def dlkd_mlp_head(x: torch.Tensor, w1, b1, bn_weight, bn_bias, bn_eps: float, w2, b2) -> torch.Tensor:
    """MLPHead.forward in train mode (BatchNorm on the batch's statistics)."""
    hidden = batch_norm_train(linear(x, w1, b1), bn_weight, bn_bias, bn_eps, dims=(0,))
    return linear(hidden.clamp_min(0.0), w2, b2)


def dlkd_align_loss(projected_student: torch.Tensor, teacher_feat: torch.Tensor) -> torch.Tensor:
    """AlignLoss.forward after its MLP: 2 - 2 * mean_i <n(s_i), n(t_i)>, over every row."""
    return 2.0 - 2.0 * (normalize_rows(projected_student) * normalize_rows(teacher_feat)).sum(dim=1).mean()


def dlkd_corr_loss(projected_student: torch.Tensor, teacher_feat: torch.Tensor, temperature: float,
                   rotations: int = 4) -> torch.Tensor:
    """CorrLoss.forward after its MLP. Rows image-major: row % 4 == 0 the normal image (the anchors),
    the other rows its rotations; the [3B, B] cosines of rotated rows to normal rows, softmax over
    the anchors at `temperature`, KL(teacher || student) batchmean over the 3B rotated rows."""
    rotation = torch.arange(projected_student.shape[0]) % rotations
    normal, rotated = rotation == 0, rotation != 0
    student_sim = cosine_matrix(projected_student[rotated], projected_student[normal])
    teacher_sim = cosine_matrix(teacher_feat[rotated], teacher_feat[normal])
    return kl_batchmean(softmax_rows(teacher_sim / temperature), log_softmax_rows(student_sim / temperature))


def dlkd_embed(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Embed.forward: a linear map, then Normalize(2)."""
    return normalize_rows(linear(x.flatten(1), weight, bias))


def dlkd_supcon_loss(student_embed: torch.Tensor, teacher_embed: torch.Tensor, temperature: float,
                     base_temperature: float = 0.07, eps: float = 1e-7) -> torch.Tensor:
    """SupConLoss.forward with labels=None and mask=None (contrast_mode 'all', anchor_count 2):
    anchors [e_s; e_t], the positive mask eye(bsz) tiled 2 x 2 minus the diagonal, logits shifted by
    their row max, log_prob = l - log(sum_{b != a} exp(l) + eps), loss -(T / T_base) * the mean over
    positives, averaged over the 2 * bsz anchors."""
    batch = student_embed.shape[0]
    anchors = torch.cat([student_embed, teacher_embed], dim=0)
    dots = anchors @ anchors.T / temperature
    logits = dots - dots.max(dim=1, keepdim=True).values
    not_self = 1.0 - torch.eye(2 * batch)
    positives = torch.eye(batch).repeat(2, 2) * not_self
    log_prob = logits - torch.log((logits.exp() * not_self).sum(dim=1, keepdim=True) + eps)
    mean_log_prob_positive = (positives * log_prob).sum(dim=1) / positives.sum(dim=1)
    return (-(temperature / base_temperature) * mean_log_prob_positive).view(2, batch).mean()


def dlkd_queue_infonce(student_emb: torch.Tensor, teacher_emb: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """No reference code: the project's label-free contrast, the formula of ssl_kd/losses/dlkd.py's
    docstring. -mean_i log(exp(<s_i,t_i>/tau) / (exp(<s_i,t_i>/tau) + sum_k exp(<s_i,Q_k>/tau)))."""
    s, t = normalize_rows(student_emb), normalize_rows(teacher_emb)
    positive = (s * t).sum(dim=1) / temperature
    every = torch.cat([positive[:, None], s @ queue.T / temperature], dim=1)
    return (torch.logsumexp(every, dim=1) - positive).mean()


# --------------------------------------------------------------------------------------------
# logit losses


def hinton_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """HobbitLong/RepDistiller distiller_zoo/KD.py DistillKL.forward: KL(softmax(y_t/T) || softmax(y_s/T))
    summed over classes and rows, times T^2, over the batch size."""
    log_p_student = log_softmax_rows(student_logits / temperature)
    p_teacher = softmax_rows(teacher_logits / temperature)
    kl_sum = (torch.xlogy(p_teacher, p_teacher) - p_teacher * log_p_student).sum()
    return kl_sum * temperature**2 / student_logits.shape[0]


def ckd_contrastive_loss(logits_teacher: torch.Tensor, logits_student: torch.Tensor, temperature: float) -> torch.Tensor:
    """ZhouXinzzzzz/CKD mdistiller/distillers/CKD.py contrastive_loss: normalized teacher logits
    (rows, the anchors) against normalized student logits, cross-entropy of sim / T with target arange(B)."""
    sim = normalize_rows(logits_teacher) @ normalize_rows(logits_student).T / temperature
    return (torch.logsumexp(sim, dim=1) - sim.diagonal()).mean()


def dist_pearson(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """dist_kd.py pearson_correlation: the cosine (eps added to the product of norms) of the row-centered rows."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def dist_loss(z_s: torch.Tensor, z_t: torch.Tensor, beta: float, gamma: float, tau: float) -> dict[str, torch.Tensor]:
    """hunto/DIST_KD's DIST.forward (hunto/image_classification_sota lib/models/losses/dist_kd.py, the
    version with tau): y = softmax(z / tau) row-wise; inter = 1 - mean pearson over rows, intra the same
    over the columns of the same y; total beta * tau^2 * inter + gamma * tau^2 * intra."""
    y_s, y_t = softmax_rows(z_s / tau), softmax_rows(z_t / tau)
    inter = 1.0 - dist_pearson(y_s, y_t).mean()
    intra = 1.0 - dist_pearson(y_s.T, y_t.T).mean()
    return {"total": beta * tau**2 * inter + gamma * tau**2 * intra, "inter": inter, "intra": intra}


def mixup(views: list[torch.Tensor], lam: float, perm: torch.Tensor) -> list[torch.Tensor]:
    """STKD (no official code): the virtual samples of ssl_kd/losses/stkd.py's docstring,
    lam * x_i + (1 - lam) * x_perm(i), the same lam and perm for every view."""
    return [lam * x + (1.0 - lam) * x[perm] for x in views]


# --------------------------------------------------------------------------------------------
# similarity distributions over a queue


def seed_loss(student_emb: torch.Tensor, teacher_emb: torch.Tensor, queue_columns: torch.Tensor,
              student_temperature: float, teacher_temperature: float) -> torch.Tensor:
    """jacobswan1/SEED seed/builder.py SEED.forward (the queue stored [dim, K]) then tools/utils.py
    soft_cross_entropy: entry 0 the own teacher embedding, then the queue; the teacher's softmax at
    `temp` is the target of the student's log-softmax at `t`, summed, over the batch size."""
    s, t = normalize_rows(student_emb), normalize_rows(teacher_emb)
    logit_student = torch.cat([(s * t).sum(dim=1, keepdim=True), s @ queue_columns], dim=1) / student_temperature
    logit_teacher = torch.cat([(t * t).sum(dim=1, keepdim=True), t @ queue_columns], dim=1)
    target = softmax_rows(logit_teacher / teacher_temperature)
    return -(target * log_softmax_rows(logit_student)).sum() / student_emb.shape[0]


def compress_similarities(memory: torch.Tensor, q: torch.Tensor, temperature: float) -> torch.Tensor:
    """UMBCvision/CompRess nn/compress_loss.py SampleSimilarities.forward (before its memory update):
    (memory q^T)^T / T, [batch, queue]."""
    return (memory @ q.T).T / temperature


def compress_loss(teacher_feats: torch.Tensor, student_feats: torch.Tensor, teacher_memory: torch.Tensor,
                  student_memory: torch.Tensor, temperature: float) -> torch.Tensor:
    """nn/compress_loss.py: CompReSSA.forward (one queue: `student_memory` is the teacher's memory) or
    CompReSSMomentum.forward (two queues: the momentum student's memory); Normalize(2) the features,
    then KLD(teacher sims, student sims) = KL(softmax(teacher) || softmax(student)), batchmean."""
    sim_teacher = compress_similarities(teacher_memory, normalize_rows(teacher_feats), temperature)
    sim_student = compress_similarities(student_memory, normalize_rows(student_feats), temperature)
    return kl_batchmean(softmax_rows(sim_teacher), log_softmax_rows(sim_student))


# --------------------------------------------------------------------------------------------
# CRD: HobbitLong/RepDistiller crd/memory.py ContrastMemory.forward, crd/criterion.py ContrastLoss


def crd_scores(memory: torch.Tensor, sample_idx: torch.Tensor, anchors: torch.Tensor, temperature: float) -> torch.Tensor:
    """exp(<memory[idx[r, k]], v_r> / T) for every row r and its K+1 sampled rows (bmm of the
    index_select'ed weights with the anchor), [rows, K+1]."""
    weights = memory[sample_idx.reshape(-1)].view(*sample_idx.shape, memory.shape[1])
    return torch.exp(torch.bmm(weights, anchors[:, :, None]).squeeze(2) / temperature)


def crd_contrast_loss(x: torch.Tensor, n_data: int, eps: float = 1e-7) -> torch.Tensor:
    """ContrastLoss.forward: column 0 the positive, m = K noise samples, Pn = 1 / n_data;
    -(sum log(P_pos / (P_pos + m Pn + eps)) + sum log(m Pn / (P_neg + m Pn + eps))) / bsz."""
    m = x.shape[1] - 1
    noise = m / float(n_data)
    log_d1 = torch.log(x[:, 0] / (x[:, 0] + noise + eps))
    log_d0 = torch.log(noise / (x[:, 1:] + noise + eps))
    return -(log_d1.sum() + log_d0.sum()) / x.shape[0]


def crd_loss(v1: torch.Tensor, v2: torch.Tensor, memory_v1: torch.Tensor, memory_v2: torch.Tensor,
             sample_idx: torch.Tensor, temperature: float, n_data: int) -> dict[str, torch.Tensor]:
    """CRDLoss.forward after its embeds, on the first batch (Z not yet set). v1 = the student's embed,
    v2 the teacher's; memory_v1 holds student rows, memory_v2 teacher rows. out_v1 = the student
    anchors against memory_v2, out_v2 = the teacher anchors against memory_v1, each divided by its
    Z = mean(out) * n_data; s_loss = ContrastLoss(out_v1), t_loss = ContrastLoss(out_v2)."""
    out_v1 = crd_scores(memory_v2, sample_idx, v1, temperature)
    out_v2 = crd_scores(memory_v1, sample_idx, v2, temperature)
    out_v1 = out_v1 / (out_v1.mean() * n_data)
    out_v2 = out_v2 / (out_v2.mean() * n_data)
    return {"s_loss": crd_contrast_loss(out_v1, n_data), "t_loss": crd_contrast_loss(out_v2, n_data)}


# --------------------------------------------------------------------------------------------
# relational and feature losses: HobbitLong/RepDistiller distiller_zoo/*.py


def smooth_l1_mean(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """F.smooth_l1_loss (beta 1, mean): 0.5 d^2 where |d| < 1, else |d| - 0.5."""
    d = (x - y).abs()
    return torch.where(d < 1.0, 0.5 * d**2, d - 0.5).mean()


def rkd_pdist(e: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """RKDLoss.pdist (squared=False): sqrt of the clamped squared distances, the diagonal set to 0."""
    squared = e.pow(2).sum(dim=1)
    dist = (squared[:, None] + squared[None, :] - 2 * e @ e.T).clamp(min=eps).sqrt()
    return dist * (1.0 - torch.eye(e.shape[0]))


def rkd_angles(e: torch.Tensor) -> torch.Tensor:
    """RKDLoss's angle term: d[a, b] = e_b - e_a normalized over features, then [a, b, c] = <d_ab, d_ac>, flattened."""
    differences = normalize_rows(e[None, :, :] - e[:, None, :])
    return torch.bmm(differences, differences.transpose(1, 2)).reshape(-1)


def rkd_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> dict[str, torch.Tensor]:
    """distiller_zoo/RKD.py RKDLoss.forward's two terms (before w_d, w_a): SmoothL1 of the distances
    over their mean positive entry, and SmoothL1 of the triplet angle cosines."""
    student, teacher = f_s.flatten(1), f_t.flatten(1)
    t_d = rkd_pdist(teacher)
    s_d = rkd_pdist(student)
    distance = smooth_l1_mean(s_d / s_d[s_d > 0].mean(), t_d / t_d[t_d > 0].mean())
    angle = smooth_l1_mean(rkd_angles(student), rkd_angles(teacher))
    return {"distance": distance, "angle": angle}


def sp_similarity_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """distiller_zoo/SP.py Similarity.similarity_loss: G = f f^T of the flattened maps, each row
    L2-normalized, ||G_t - G_s||^2 summed, over bsz^2."""
    bsz = f_s.shape[0]
    g_s = f_s.reshape(bsz, -1) @ f_s.reshape(bsz, -1).T
    g_t = f_t.reshape(bsz, -1) @ f_t.reshape(bsz, -1).T
    diff = normalize_rows(g_t) - normalize_rows(g_s)
    return (diff * diff).sum() / (bsz * bsz)


def fitnet_conv_reg_same_size(x: torch.Tensor, weight, bias, bn_weight, bn_bias, bn_eps: float, use_relu: bool = True) -> torch.Tensor:
    """models/util.py ConvReg.forward when student and teacher maps have the same height: the
    (1 + s_H - t_H) = 1 kernel conv, BatchNorm2d (train mode), ReLU."""
    y = torch.einsum("oc,nchw->nohw", weight[:, :, 0, 0], x) + bias.view(1, -1, 1, 1)
    y = batch_norm_train(y, bn_weight, bn_bias, bn_eps, dims=(0, 2, 3))
    return y.clamp_min(0.0) if use_relu else y


def fitnet_hint_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """distiller_zoo/FitNet.py HintLoss: nn.MSELoss, the mean of the squared differences."""
    return ((f_s - f_t) ** 2).mean()
