"""Host tensors to the device without making the host wait for the device.

A copy from ordinary (pageable) host memory to a GPU waits for the device to finish the work
already queued before it, so the host cannot prepare the next batch while the GPU computes. From
pinned memory the copy is queued like a kernel (``non_blocking``); torch's pinned-memory cache
keeps each buffer until its copy is done.
"""

from __future__ import annotations

from typing import TypeVar

import torch

T = TypeVar("T", torch.Tensor, dict)


def to_device(x: T, device: torch.device | str) -> T:
    """``x`` (a tensor, or a dict whose tensor values are moved and other values kept) on ``device``;
    to CUDA through pinned memory, without waiting."""
    if isinstance(x, dict):
        return {k: to_device(v, device) if isinstance(v, torch.Tensor) else v for k, v in x.items()}
    device = torch.device(device)
    if device.type == "cuda" and x.device.type == "cpu":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)
