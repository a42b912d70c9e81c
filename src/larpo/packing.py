"""The packed layout of a log-prob pass (:func:`larpo.logprobs.packed_logps`): lists side by side in rows.

Each list becomes one segment — its prompt once, then each response but its last token, the
responses one after another — and segments are packed into rows of the longest segment's width
(first-fit decreasing), with a 4-D attention mask that lets every token see its own prompt and
its own response's earlier tokens only, and position ids that restart after the prompt for every
response. One forward pass, no key/value cache, padding only where no segment fits; attention is
computed over whole rows, which :func:`layout_costs` weighs against the padding saved.
"""

from __future__ import annotations

from typing import Sequence

import torch
from transformers import PretrainedConfig

Lists = Sequence[tuple[Sequence[int], Sequence[Sequence[int]]]]  # (prompt ids, responses' ids) per list
LAYOUTS = ("packed", "shared", "pairs")  # the keys of layout_costs, in order of preference at equal cost


def packing_is_exact(config: PretrainedConfig) -> bool:
    """Whether the packed layout computes what one sequence per response does, for a model with this (text) config.

    The packed pass hands the model a boolean 4-D attention mask, which transformers passes to SDPA
    as it is: right for SDPA attention without a sliding window (a window would be dropped with the
    model's own mask).
    """
    layer_types = getattr(config, "layer_types", None)
    windowless = (all(t == "full_attention" for t in layer_types) if layer_types
                  else getattr(config, "sliding_window", None) is None)
    return getattr(config, "_attn_implementation", None) == "sdpa" and windowless


def layout_costs(config: PretrainedConfig, lists: Lists) -> dict[str, float]:
    """Estimated FLOPs per layer of the three layouts of one forward pass over ``lists``.

    ``packed`` (:func:`pack_lists`); ``shared`` (a prompt pass of B left-padded prompts, then one
    row per response reading its prompt's cache); ``pairs`` (one right-padded row per (prompt,
    response)). Per position, the layer's matmuls, 2 × (4h² + 3h·I) (a dense-MLP estimate); per
    attended (query, key) pair, 4h (masked pairs cost as much as attended ones).
    """
    h = config.hidden_size
    per_position = 2 * (4 * h * h + 3 * h * (getattr(config, "intermediate_size", None) or 4 * h))

    def cost(rows: int, queries: int, keys: int) -> float:
        return rows * queries * (per_position + 4 * h * keys)

    prompt = max(len(p) for p, _ in lists)
    response = max(len(r) for _, rs in lists for r in rs)
    pair = max(len(p) + len(r) for p, rs in lists for r in rs)
    n = sum(len(rs) for _, rs in lists)
    _, rows, width = _bins([_segment_length(p, rs) for p, rs in lists])
    return {"packed": cost(rows, width, width),
            "shared": cost(len(lists), prompt, prompt) + cost(n, response - 1, prompt + response - 1),
            "pairs": cost(n, pair - 1, pair - 1)}


def pack_lists(lists: Lists, pad_id: int) -> dict[str, torch.Tensor]:
    """Inputs of the packed pass over ``lists``, and where to read each response's log-probs.

    Returns ``input_ids`` and ``position_ids`` [K, W] long, ``attention_mask`` [K, 1, W, W] bool
    (True: the query may see the key), and for the M = Σ len(response) predicted tokens, in order
    of the responses (list by list) and of their tokens: ``select`` [M] long, the position (index
    into the K·W positions, row-major) whose output predicts the token; ``targets`` [M] long, the
    token; ``response`` [M] long, its response (0 .. N − 1). A response's first token is predicted
    by its prompt's last position; padding sees only itself, so no softmax row is empty.
    """
    if not lists or any(not p or not rs or any(not r for r in rs) for p, rs in lists):
        raise ValueError("pack_lists needs non-empty prompts, each with at least one non-empty response")
    where, rows, width = _bins([_segment_length(p, rs) for p, rs in lists])
    input_ids = torch.full((rows, width), pad_id, dtype=torch.long)
    positions = torch.zeros((rows, width), dtype=torch.long)
    segment = torch.full((rows, width), -1, dtype=torch.long)  # list of each position; −1: padding
    part = torch.full((rows, width), -1, dtype=torch.long)  # response of each position; −1: its prompt
    select, targets, response = [], [], []
    first_response = 0
    for i, (prompt, responses) in enumerate(lists):
        row, start = where[i]
        end = start + len(prompt)
        input_ids[row, start:end] = torch.tensor(prompt)
        positions[row, start:end] = torch.arange(len(prompt))
        segment[row, start:end] = i
        for j, r in enumerate(responses, start=first_response):
            inputs = torch.arange(end, end + len(r) - 1)
            input_ids[row, inputs] = torch.tensor(r[:-1], dtype=torch.long)
            positions[row, inputs] = torch.arange(len(prompt), len(prompt) + len(r) - 1)
            segment[row, inputs], part[row, inputs] = i, j
            select.append(row * width + torch.cat([torch.tensor([start + len(prompt) - 1]), inputs]))
            targets.append(torch.tensor(r, dtype=torch.long))
            response.append(torch.full((len(r),), j))
            end += len(r) - 1
        first_response += len(responses)
    order = torch.arange(width)
    visible = ((segment[:, None, :] == segment[:, :, None]) & (segment[:, None, :] >= 0)
               & ((part[:, None, :] == -1) | (part[:, None, :] == part[:, :, None]))
               & (order[None, :] <= order[:, None])) | torch.eye(width, dtype=torch.bool)
    return {"input_ids": input_ids, "position_ids": positions, "attention_mask": visible[:, None],
            "select": torch.cat(select), "targets": torch.cat(targets), "response": torch.cat(response)}


def _segment_length(prompt: Sequence[int], responses: Sequence[Sequence[int]]) -> int:
    """Positions of a list's segment: its prompt, then every response but its last token."""
    return len(prompt) + sum(len(r) - 1 for r in responses)


def _bins(lengths: list[int]) -> tuple[list[tuple[int, int]], int, int]:
    """First-fit decreasing of segments into rows as wide as the longest: ((row, start) per segment, rows, width)."""
    width = max(lengths)
    filled: list[int] = []
    where = [(0, 0)] * len(lengths)
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        row = next((k for k, used in enumerate(filled) if used + lengths[i] <= width), len(filled))
        if row == len(filled):
            filled.append(0)
        where[i] = (row, filled[row])
        filled[row] += lengths[i]
    return where, len(filled), width
