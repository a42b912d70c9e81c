"""The packed layout of a log-prob pass (:func:`larpo.logprobs.packed_logps`): lists one after another in one row.

Each list becomes one segment — its prompt once, then each response but its last token, the
responses one after another — and the segments are concatenated into a single row, with position
ids that restart after the prompt for every response. Attention runs segment by segment
(:mod:`larpo.segment_attention`), each segment under its own mask: a token sees its own prompt and
its own response's earlier tokens. One forward pass, no key/value cache, no padding; a list's
attention costs the square of its segment, which :func:`layout_costs` weighs against the other
layouts.
"""

from __future__ import annotations

from typing import Sequence

import torch
from transformers import PretrainedConfig

Lists = Sequence[tuple[Sequence[int], Sequence[Sequence[int]]]]  # (prompt ids, responses' ids) per list
LAYOUTS = ("packed", "shared", "pairs")  # the keys of layout_costs, in order of preference at equal cost


def packing_is_exact(config: PretrainedConfig) -> bool:
    """Whether the packed layout computes what one sequence per response does, for a model with this (text) config.

    The packed pass replaces the model's SDPA attention with SDPA segment by segment
    (:mod:`larpo.segment_attention`): right for SDPA attention without a sliding window.
    """
    layer_types = getattr(config, "layer_types", None)
    windowless = (all(t == "full_attention" for t in layer_types) if layer_types
                  else getattr(config, "sliding_window", None) is None)
    return getattr(config, "_attn_implementation", None) == "sdpa" and windowless


def layout_costs(config: PretrainedConfig, lists: Lists) -> dict[str, float]:
    """Estimated FLOPs per layer of the three layouts of one forward pass over ``lists``.

    ``packed`` (:func:`pack_lists`: each list's segment attends within itself); ``shared`` (a
    prompt pass of B left-padded prompts, then one row per response reading its prompt's cache);
    ``pairs`` (one right-padded row per (prompt, response)). Per position, the layer's matmuls,
    2 × (4h² + 3h·I) (a dense-MLP estimate); per attended (query, key) pair, 4h (masked pairs cost
    as much as attended ones).
    """
    h = config.hidden_size
    per_position = 2 * (4 * h * h + 3 * h * (getattr(config, "intermediate_size", None) or 4 * h))

    def cost(rows: int, queries: int, keys: int) -> float:
        return rows * queries * (per_position + 4 * h * keys)

    prompt = max(len(p) for p, _ in lists)
    response = max(len(r) for _, rs in lists for r in rs)
    pair = max(len(p) + len(r) for p, rs in lists for r in rs)
    n = sum(len(rs) for _, rs in lists)
    return {"packed": sum(cost(1, length, length) for length in (_segment_length(p, rs) for p, rs in lists)),
            "shared": cost(len(lists), prompt, prompt) + cost(n, response - 1, prompt + response - 1),
            "pairs": cost(n, pair - 1, pair - 1)}


def pack_lists(lists: Lists) -> dict[str, torch.Tensor]:
    """Inputs of the packed pass over ``lists``, and where to read each response's log-probs.

    Returns ``input_ids`` and ``position_ids`` [1, T] long (T = Σ segment lengths); ``lengths``
    [S] long, each list's segment length; ``part`` [T] long, the response each position belongs
    to (0 .. N − 1, numbered list by list), −1 for a prompt position; and for the
    M = Σ len(response) predicted tokens, in order of the responses and of their tokens:
    ``select`` [M] long, the position (index into the T) whose output predicts the token;
    ``targets`` [M] long, the token; ``response`` [M] long, its response. A response's first token
    is predicted by its prompt's last position.
    """
    if not lists or any(not p or not rs or any(not r for r in rs) for p, rs in lists):
        raise ValueError("pack_lists needs non-empty prompts, each with at least one non-empty response")
    ids: list[int] = []
    positions: list[int] = []
    part: list[int] = []
    select, targets, response = [], [], []
    j = 0
    for prompt, responses in lists:
        last = len(ids) + len(prompt) - 1  # the prompt's last position predicts each response's first token
        ids += prompt
        positions += range(len(prompt))
        part += [-1] * len(prompt)
        for r in responses:
            select += [last, *range(len(ids), len(ids) + len(r) - 1)]
            ids += r[:-1]
            positions += range(len(prompt), len(prompt) + len(r) - 1)
            part += [j] * (len(r) - 1)
            targets += r
            response += [j] * len(r)
            j += 1
    long = lambda values: torch.tensor(values, dtype=torch.long)  # noqa: E731
    return {"input_ids": long([ids]), "position_ids": long([positions]),
            "lengths": long([_segment_length(p, rs) for p, rs in lists]), "part": long(part),
            "select": long(select), "targets": long(targets), "response": long(response)}


def segment_masks(lengths: Sequence[int], part: torch.Tensor) -> list[torch.Tensor]:
    """Each segment's attention mask [L, L] bool (True: the query may see the key), from :func:`pack_lists`'s
    ``lengths`` and ``part``: causal, and a response's tokens see their prompt and their own response only."""
    masks = []
    for p in part.split(list(lengths)):
        causal = torch.ones(len(p), len(p), dtype=torch.bool, device=p.device).tril()
        masks.append(causal & ((p[None, :] == -1) | (p[None, :] == p[:, None])))
    return masks


def _segment_length(prompt: Sequence[int], responses: Sequence[Sequence[int]]) -> int:
    """Positions of a list's segment: its prompt, then every response but its last token."""
    return len(prompt) + sum(len(r) - 1 for r in responses)
