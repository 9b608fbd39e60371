"""`accelerate launch -m lm_eval --model flexgen` (or torchrun): one process per rank, each with its
own LLM, evaluating the shard lm-eval's evaluator gives it. The evaluator joins the shards through
the LM's all_gather / gather_object / barrier, which this module provides over torch.distributed
(gloo on the CPU, nccl on CUDA), as HFLM does through accelerate."""
from __future__ import annotations

import os

import torch


def launched_world_size() -> int:
    """The number of ranks a launcher started (accelerate launch and torchrun set WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def rank_device(device: str | None) -> str | None:
    """Each rank computes on its own GPU (LOCAL_RANK's); a CPU stays the CPU."""
    if device is not None and str(device).startswith("cuda") and torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return f"cuda:{local}"
    return device


def join(device: torch.device) -> tuple[int, int]:
    """(rank, world size), joining the launcher's process group first if nobody has."""
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size()


def all_gather(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's tensor, concatenated along the first axis (a scalar counts as one element)."""
    import torch.distributed as dist

    tensor = tensor.reshape(1) if tensor.dim() == 0 else tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def gather_object(obj, dst: int = 0):
    """Every rank's object, in rank order, on `dst`; None elsewhere."""
    import torch.distributed as dist

    out = [None] * dist.get_world_size() if dist.get_rank() == dst else None
    dist.gather_object(obj, out, dst=dst)
    return out


def barrier() -> None:
    import torch.distributed as dist

    dist.barrier()
