"""Work dealt to processes and gathered back: the one place that merges per-process results."""

from __future__ import annotations

from typing import Callable, TypeVar

import torch
import torch.distributed as dist
from accelerate import Accelerator
from accelerate.utils import gather_object

T = TypeVar("T")


def my_share(n: int, accelerator: Accelerator) -> range:
    """The indices 0..n-1 this process takes when n items are dealt round-robin."""
    return range(accelerator.process_index, n, accelerator.num_processes)


def gather_merged(local: dict[int, T], accelerator: Accelerator) -> dict[int, T]:
    """Every process's ``{index: result}`` merged into one dict, returned on every process."""
    if accelerator.num_processes == 1:
        return dict(local)
    merged: dict[int, T] = {}
    for part in gather_object([local]):
        merged.update(part)
    return merged


def sum_over_processes(accelerator: Accelerator) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """A function summing a tensor over processes, None on one process. The tensor may be on any device
    (it is reduced on the accelerator's, which NCCL needs); the sum comes back on the tensor's device."""
    if accelerator.num_processes == 1:
        return None
    return lambda t: accelerator.reduce(t.to(accelerator.device), reduction="sum").to(t.device)


def end_processes() -> None:
    """Leave the process group, if this process is in one: every process waits for the others, then
    destroys it. Gloo's worker threads can otherwise still hold tensors while the interpreter shuts
    down, and the process aborts (SIGABRT, "terminate called without an active exception") after its
    work is done. Call at the end of a successful multi-process program; a no-op in one process."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
