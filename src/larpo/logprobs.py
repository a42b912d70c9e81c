"""Summed response-token log-probabilities of a causal LM: log π(y|x) for a batch of pairs.

Prompt and response ids are tokenised separately (``larpo.encoding``) and concatenated, each
sequence right-padded, so positions start at 0 for every example and a response's log-prob does
not depend on its neighbours in the batch.
"""

from __future__ import annotations

import inspect
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


def collate_lists(lists: Sequence[tuple[list[int], Sequence[list[int]]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Batch lists that share a prompt: each prompt once, left-padded; responses right-padded.

    Returns ``prompt_ids`` / ``prompt_mask`` [B, P] (left padding, so every prompt ends at column
    P − 1), ``response_ids`` / ``response_mask`` [N, R] (right padding; N = Σ m over lists) and
    ``owner`` [N], the list (row of the prompt batch) each response belongs to.
    """
    if not lists or any(not p or not rs or any(not r for r in rs) for p, rs in lists):
        raise ValueError("collate_lists needs non-empty prompts, each with at least one non-empty response")
    width_p = max(len(p) for p, _ in lists)
    responses = [r for _, rs in lists for r in rs]
    width_r = max(len(r) for r in responses)
    prompt_ids = torch.full((len(lists), width_p), pad_id, dtype=torch.long)
    prompt_mask = torch.zeros((len(lists), width_p), dtype=torch.long)
    for row, (prompt, _) in enumerate(lists):
        prompt_ids[row, width_p - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
        prompt_mask[row, width_p - len(prompt) :] = 1
    response_ids = torch.full((len(responses), width_r), pad_id, dtype=torch.long)
    response_mask = torch.zeros((len(responses), width_r), dtype=torch.bool)
    for row, response in enumerate(responses):
        response_ids[row, : len(response)] = torch.tensor(response, dtype=torch.long)
        response_mask[row, : len(response)] = True
    owner = torch.tensor([i for i, (_, rs) in enumerate(lists) for _ in rs], dtype=torch.long)
    return {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "response_ids": response_ids,
            "response_mask": response_mask, "owner": owner}


def base_model(model: nn.Module) -> nn.Module:
    """The transformers model inside a DDP wrapper (``.module``) and a peft wrapper (``get_base_model``)."""
    base = getattr(model, "module", model)
    return base.get_base_model() if hasattr(base, "get_base_model") else base


def _cache_argument(model: nn.Module) -> str:
    """The forward argument that takes a KV cache: ``cache`` in recent transformers, else ``past_key_values``."""
    return "cache" if "cache" in inspect.signature(base_model(model).forward).parameters else "past_key_values"


def shared_prompt_logps(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """:func:`sequence_logps` with one prompt pass per list: a float32 tensor [N].

    The B prompts run once; their key/value cache is gathered to the N responses (gradients flow
    back through the gather into the shared prompt pass), and the responses run on top of it.
    ``batch`` is the output of :func:`collate_lists`, on the model's device. Costs
    B·P + N·R token positions instead of N·(P + R).
    """
    prompt_mask, response_mask, owner = batch["prompt_mask"], batch["response_mask"], batch["owner"]
    prompt_positions = (prompt_mask.cumsum(dim=1) - 1).clamp(min=0)
    prompt_out = model(input_ids=batch["prompt_ids"], attention_mask=prompt_mask, position_ids=prompt_positions,
                       use_cache=True)
    cache = getattr(prompt_out, "cache", None) or prompt_out.past_key_values
    cache.batch_select_indices(owner)
    prompt_lengths = prompt_mask.sum(dim=1)[owner]
    width = response_mask.shape[1]
    response_positions = prompt_lengths[:, None] + torch.arange(width, device=owner.device)[None, :]
    response_out = model(
        input_ids=batch["response_ids"],
        attention_mask=torch.cat([prompt_mask[owner], response_mask.long()], dim=1),
        position_ids=response_positions,
        use_cache=False,
        **{_cache_argument(model): cache},
    )
    # The prompt's last position predicts the first response token; response position t the next.
    logits = torch.cat([prompt_out.logits[:, -1:][owner], response_out.logits[:, :-1]], dim=1).float()
    targets = batch["response_ids"]
    token_logps = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    return (token_logps * response_mask).sum(dim=1)
