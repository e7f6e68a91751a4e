"""torch.distributed for ssl_kd: the process group from torchrun's environment, ranks, gathers.

Launch with torchrun (one process per device; several nodes through its c10d rendezvous):

    torchrun --nproc_per_node 8 pipelines/distill_ssl.py ...
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29400 pipelines/distill_ssl.py ...

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; `init_distributed` reads
them, joins the process group (NCCL on CUDA, gloo on CPU; `train.dist_backend` overrides) and pins
each process to its LOCAL_RANK device. Without those variables nothing happens and every helper
below is the identity of one process, so library code calls them unconditionally.

Gathers keep the order of ranks: `all_gather_cat(x)` is rank 0's rows, then rank 1's, ... .
`all_gather_with_grad` is the same with gradients (torch.distributed.nn.functional.all_gather:
its backward sums every rank's gradient for this rank's rows). With DDP averaging the parameter
gradients over ranks, a loss that every rank computes from gathered rows gets exactly the gradient
of a single process holding the whole global batch.
"""

from __future__ import annotations

import datetime
import os
import warnings

import torch
import torch.distributed as dist

from .errors import UserError

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
BACKENDS = ("auto", "nccl", "gloo")


def launched_by_torchrun() -> bool:
    return all(name in os.environ for name in TORCHRUN_VARIABLES) and int(os.environ["WORLD_SIZE"]) > 0


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0)) if is_distributed() else 0


def is_main_process() -> bool:
    return rank() == 0


def init_distributed(device_name: str = "auto", backend: str = "auto", timeout_minutes: float = 30.0) -> torch.device:
    """Join torchrun's process group (when launched by torchrun) and return this process's device.

    `device_name` is `train.device` (auto | cpu | cuda | cuda:N); under torchrun "auto" and "cuda"
    mean `cuda:LOCAL_RANK`. `backend` auto: NCCL for CUDA devices, gloo for the CPU. Calling it
    again in a process that already joined is harmless.
    """
    if backend not in BACKENDS:
        raise UserError(f"train.dist_backend={backend!r} is not one of: {', '.join(BACKENDS)}")
    if not launched_by_torchrun():
        return resolve_device(device_name)
    local = int(os.environ["LOCAL_RANK"])
    device = resolve_device(device_name, local)
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and device.type != "cuda":
        raise UserError("train.dist_backend=nccl needs CUDA devices; use train.dist_backend=gloo (or auto) on the CPU")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not is_distributed():
        options = {"device_id": device} if backend == "nccl" else {}
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=timeout_minutes), **options)
    return device


def resolve_device(name: str, local: int | None = None) -> torch.device:
    """`train.device` as a torch device; `local` (torchrun's LOCAL_RANK) picks the GPU for auto/cuda."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"train.device={name} but CUDA is not available here; use train.device=cpu (or auto)")
    if name == "cuda" and local is not None:
        if local >= torch.cuda.device_count():
            raise UserError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} GPUs here; "
                            "start at most that many processes per node (torchrun --nproc_per_node)")
        return torch.device("cuda", local)
    return torch.device(name)


def shutdown_distributed() -> None:
    if is_distributed():
        dist.destroy_process_group()


def collective_device() -> torch.device:
    """Where a collective's tensors must live: this process's GPU under NCCL, else the CPU."""
    if is_distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate `tensor` from every rank along dim 0, rank order (unchanged in one process); no gradient.

    Every rank must pass a tensor of the same shape (the training loader's batches all are)."""
    if not is_distributed():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """`all_gather_cat` through autograd: gradients of the gathered rows flow back to the rank that owns them."""
    if not is_distributed():
        return tensor
    from torch.distributed.nn.functional import all_gather

    with warnings.catch_warnings():
        # torch 2.14 points to the private _functional_collectives instead; this public one works on gloo too
        warnings.filterwarnings("ignore", message=".*nn.functional.all_gather is deprecated", category=FutureWarning)
        return torch.cat(all_gather(tensor.contiguous()))


def gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """The global batch of `tensor`: with a gradient when it has one, else a plain gather."""
    return all_gather_with_grad(tensor) if tensor.requires_grad else all_gather_cat(tensor)


def global_row_offset(local_rows: int) -> int:
    """Where this rank's rows start in a rank-order gather of `local_rows` rows from every rank."""
    return rank() * local_rows


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """The mean of `tensor` over ranks (a copy; unchanged in one process)."""
    if not is_distributed():
        return tensor
    out = tensor.detach().clone()
    dist.all_reduce(out)
    return out / world_size()


def broadcast_object(obj):
    """Rank 0's `obj` on every rank (a picklable value)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
