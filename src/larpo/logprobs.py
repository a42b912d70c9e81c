"""Summed response-token log-probabilities of a causal LM: log π(y|x) for a batch of pairs.

Prompt and response ids are tokenised separately (``larpo.encoding``) and concatenated, each
sequence right-padded, so positions start at 0 for every example and a response's log-prob does
not depend on its neighbours in the batch.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


def collate_pairs(pairs: Sequence[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad (prompt ids, response ids) pairs into one batch.

    Returns ``input_ids`` [N, L] long, ``attention_mask`` [N, L] long and ``response_mask``
    [N, L] bool (True on response tokens), with L the longest prompt + response.
    """
    if not pairs:
        raise ValueError("collate_pairs needs at least one (prompt, response) pair")
    width = max(len(p) + len(r) for p, r in pairs)
    input_ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(pairs), width), dtype=torch.long)
    response_mask = torch.zeros((len(pairs), width), dtype=torch.bool)
    for row, (prompt, response) in enumerate(pairs):
        if not prompt or not response:
            raise ValueError(f"pair {row}: prompt and response must each have at least one token")
        n_p, n = len(prompt), len(prompt) + len(response)
        input_ids[row, :n] = torch.tensor([*prompt, *response], dtype=torch.long)
        attention_mask[row, :n] = 1
        response_mask[row, n_p:n] = True
    return {"input_ids": input_ids, "attention_mask": attention_mask, "response_mask": response_mask}


def sequence_logps(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum of log π(y_t | x, y_<t) over response tokens only: a float32 tensor [N].

    ``batch`` is the output of :func:`collate_pairs` (tensors on the model's device). Log-probs
    are taken as logit − logsumexp(logits) in float32, so a bf16 model loses no precision here and
    no second [N, L, V] log-softmax tensor is kept.
    """
    input_ids, response_mask = batch["input_ids"], batch["response_mask"]
    logits = model(input_ids=input_ids, attention_mask=batch["attention_mask"], use_cache=False).logits
    logits = logits[:, :-1].float()
    targets = input_ids[:, 1:]
    token_logps = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    return (token_logps * response_mask[:, 1:]).sum(dim=1)
