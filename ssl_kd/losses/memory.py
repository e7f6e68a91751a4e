r"""Memory for the methods that keep one: a bank of embeddings by image, a momentum copy of the student.

The one shared mechanism: CRD and CompRess-2q (and any later method) take their state from here, so
the update rules are written, tested and checkpointed once. Everything lives in buffers of modules
that the method owns, so `trainable.state_dict()` saves it and a resumed run continues from it.

MemoryBank (Wu et al. 2018, "instance discrimination"; the form RepDistiller's CRD uses,
crd/memory.py). One row per training image, i in [0, N):
    m_i <- n(mu * m_i + (1 - mu) * v_i)         n(.) L2 normalization, mu the momentum
mu = 0.5 in CRD; mu = 0 overwrites the row. Rows start as random unit vectors. Negatives are drawn
uniformly with replacement from the other N - 1 rows (never the positive itself).

MomentumStudent (an exponential moving average of the student's parameters, as CompRess-2q's
momentum student, train_student.py: `moment_update` and `set_bn_train`):
    theta_ema <- m * theta_ema + (1 - m) * theta          for every parameter
m = 0 copies the student, m = 1 keeps the copy. The copy never takes gradients and runs under
no_grad. While the run trains, its BatchNorm layers are in train mode (each forward normalizes with
the current batch's statistics and updates the copy's own running statistics, which are never
averaged) and everything else is in eval mode (no dropout); in eval mode it is all eval.

A FIFO of embeddings in arrival order (CompRess-2q's bank of momentum-student embeddings) is
`ssl_kd.queue.MomentumQueue`: the same ring buffer as the shared teacher queue, so two queues fed the
same number of rows per step stay aligned row for row.

Under DDP the bank update gathers indices and rows from every rank first, so all ranks hold the
same bank (the queues already do this in `enqueue`).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..parallel import all_gather_cat


def full_precision(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Half-precision tensors as float32 (others unchanged): similarities divided by small
    temperatures, exponentials and softmaxes are computed in full precision under autocast."""
    return tuple(t.float() if t.dtype in (torch.float16, torch.bfloat16) else t for t in tensors)


class MemoryBank(nn.Module):
    """`num_samples x dim` L2-normalized rows indexed by dataset index (a persistent buffer)."""

    def __init__(self, num_samples: int, dim: int, generator: torch.Generator | None = None):
        super().__init__()
        if num_samples < 2 or dim <= 0:
            raise ValueError(f"a memory bank needs at least 2 rows and a positive width, got {num_samples} x {dim}")
        self.num_samples, self.dim = num_samples, dim
        self.register_buffer("memory", F.normalize(torch.randn(num_samples, dim, generator=generator), dim=1))

    def get(self, idx: torch.Tensor) -> torch.Tensor:
        """The rows `idx` (any shape of indices -> [..., dim]), detached."""
        return self.memory[idx].detach()

    @torch.no_grad()
    def update(self, idx: torch.Tensor, values: torch.Tensor, momentum: float) -> None:
        """m_i <- n(momentum * m_i + (1 - momentum) * v_i) for each index i in `idx` ([B], distinct)."""
        idx = all_gather_cat(idx.to(self.memory.device))
        values = all_gather_cat(values.detach().to(self.memory))
        mixed = momentum * self.memory[idx] + (1.0 - momentum) * values
        self.memory.index_copy_(0, idx, F.normalize(mixed, dim=1))

    def sample_negatives(self, idx: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """[B, k] indices drawn uniformly with replacement from the rows other than each `idx[b]`.

        Drawn on the CPU (from `generator`, else torch's global generator, which checkpoints save)
        and moved to the bank's device.
        """
        own = idx.detach().cpu().view(-1, 1)
        draw = torch.randint(0, self.num_samples - 1, (own.shape[0], k), generator=generator)
        return (draw + (draw >= own).long()).to(self.memory.device)  # skip over the positive


class MomentumStudent(nn.Module):
    """An exponential moving average copy of a module's parameters: frozen, no autograd; while training,
    BatchNorm on batch statistics and the rest in eval mode (CompRess-2q's `student_key`)."""

    def __init__(self, online: nn.Module):
        super().__init__()
        self.module = copy.deepcopy(online)
        for p in self.module.parameters():
            p.requires_grad_(False)
            p.grad = None
        self.train(online.training)

    def train(self, mode: bool = True) -> MomentumStudent:
        """Eval mode throughout, except BatchNorm layers while training (the reference's `student_key.eval()`
        followed by `.train()` on every BatchNorm)."""
        super().train(False)
        self.training = mode
        if mode:
            for layer in self.module.modules():
                if isinstance(layer, nn.modules.batchnorm._BatchNorm):
                    layer.train()
        return self

    @torch.no_grad()
    def update(self, online: nn.Module, momentum: float) -> None:
        """theta_ema <- momentum * theta_ema + (1 - momentum) * theta over the parameters; buffers (BatchNorm's
        running statistics) stay the copy's own."""
        mine, theirs = dict(self.module.named_parameters()), dict(online.named_parameters())
        if mine.keys() != theirs.keys():
            raise ValueError("the momentum copy and the online module have different parameters")
        names = list(mine)
        if names:  # one fused lerp over all tensors: ema + (1 - m) * (theta - ema)
            torch._foreach_lerp_([mine[n] for n in names], [theirs[n].detach().to(mine[n].dtype) for n in names], 1.0 - momentum)

    @torch.no_grad()
    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)
