"""The reference policy across iterations: previous (the paper's), initial, or a mix of the two.

``previous`` needs nothing here: the trainer takes the policy's own log-probs at the start of the
phase. ``initial`` and ``mix`` load a separate model once per iteration, compute the reference
log-probs of every list with it (no autograd) and drop it before training starts.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


def mix_weights(initial: dict[str, torch.Tensor], previous: dict[str, torch.Tensor], weight: float) -> dict[str, torch.Tensor]:
    """Parameter-space average: weight·initial + (1 − weight)·previous, tensor by tensor.

    Both state dicts must have the same keys and shapes; non-floating tensors (buffers such as
    position ids) are taken from ``previous``.
    """
    if initial.keys() != previous.keys():
        raise ValueError("the initial and previous policies have different parameters; they cannot be mixed")
    return {
        name: (weight * initial[name] + (1.0 - weight) * prev) if prev.is_floating_point() else prev
        for name, prev in previous.items()
    }


def reference_model(mode: str, initial_dir: Path, previous_dir: Path, weight: float, load) -> nn.Module | None:
    """The reference model of an iteration, or None for ``previous`` (the policy itself).

    ``load(path) -> (model, tokenizer)`` loads a policy directory the way the run does. A LoRA
    policy (a peft model) has its adapters merged into its weights first, so a LoRA policy and the
    plain initial model mix parameter by parameter.
    """
    if mode == "previous" or (mode == "mix" and weight == 0.0):
        return None
    initial = _merged(load(initial_dir)[0])
    if mode == "initial" or weight == 1.0:
        return initial.eval()
    previous = _merged(load(previous_dir)[0])
    previous.load_state_dict(mix_weights(initial.state_dict(), previous.state_dict(), weight))
    return previous.eval()


def _merged(model: nn.Module) -> nn.Module:
    """A plain model: LoRA adapters merged into the base weights (``merge_and_unload``), else as it is."""
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
