"""The packed layout of a log-prob pass (:func:`larpo.logprobs.packed_logps`): lists one after another in one row.

Each list becomes one segment — its prompt once, then each response but its last token, the
responses one after another — and the segments are concatenated into a single row, with position
ids that restart after the prompt for every response. Attention runs list by list
(:mod:`larpo.segment_attention`): a token sees its own prompt and its own response's earlier
tokens. One forward pass, no key/value cache, no padding.
"""

from __future__ import annotations

import functools
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


def head_dim(config: PretrainedConfig) -> int:
    """The attention head dimension of a (text) model config."""
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def flops_per_position(config: PretrainedConfig) -> float:
    """Matmul FLOPs of one position in one decoder layer: 2 per weight of the query, key, value and output
    projections (grouped-query attention's smaller key and value ones) and of a gated MLP."""
    h, d = config.hidden_size, head_dim(config)
    q, kv = config.num_attention_heads * d, (getattr(config, "num_key_value_heads", None) or config.num_attention_heads) * d
    return 2 * (h * q + 2 * h * kv + q * h + 3 * h * (getattr(config, "intermediate_size", None) or 4 * h))


def flops_per_pair(config: PretrainedConfig) -> float:
    """FLOPs of one attended (query, key) pair in one layer: 4 per query-head dimension (score and weighted sum)."""
    return 4 * config.num_attention_heads * head_dim(config)


def layout_costs(config: PretrainedConfig, lists: Lists) -> dict[str, float]:
    """Estimated FLOPs per layer of the three layouts of one forward pass over ``lists``.

    ``packed`` (:func:`pack_lists`, attention as :mod:`larpo.segment_attention` runs it: causal
    over each prompt and its first response, each later response against its prompt and itself);
    ``shared`` (a prompt pass of B left-padded prompts, then one row per response reading its
    prompt's cache); ``pairs`` (one right-padded row per (prompt, response)). Per position,
    :func:`flops_per_position`; per attended (query, key) pair, :func:`flops_per_pair` (masked pairs
    cost as much as attended ones; a causal call without a mask skips the ones above the diagonal).
    Where it is exact, ``packed`` is the cheapest: no padding, no masked pairs across responses.
    """
    per_position, per_pair = flops_per_position(config), flops_per_pair(config)

    def attention(queries: float, keys: float) -> float:
        return per_pair * queries * keys

    def cost(rows: int, queries: int, keys: int) -> float:
        return rows * (queries * per_position + attention(queries, keys))

    prompt = max(len(p) for p, _ in lists)
    response = max(len(r) for _, rs in lists for r in rs)
    pair = max(len(p) + len(r) for p, rs in lists for r in rs)
    n = sum(len(rs) for _, rs in lists)
    packed = sum(_segment_length(p, rs) * per_position
                 + attention(first := len(p) + len(rs[0]) - 1, (first + 1) / 2)  # causal: the lower triangle
                 + sum(attention(len(r) - 1, len(p) + len(r) - 1) for r in rs[1:])
                 for p, rs in lists)
    return {"packed": packed,
            "shared": cost(len(lists), prompt, prompt) + cost(n, response - 1, prompt + response - 1),
            "pairs": cost(n, pair - 1, pair - 1)}


def pack_lists(lists: Lists, multiple_of: int = 1) -> dict:
    """Inputs of the packed pass over ``lists``, and where to read each response's log-probs.

    Returns ``input_ids`` and ``position_ids`` [1, T] long (T = Σ segment lengths, plus ``padding``
    positions up to a multiple of ``multiple_of``: token 0 at position 0, never read); the row's
    structure as Python values (no device round trip to read it): ``prompt_lengths`` (S ints, each
    list's prompt), ``list_sizes`` (S ints, its responses), ``response_positions`` (N ints, the
    positions each response takes: its length − 1), responses numbered list by list, and
    ``padding`` (an int); and for the M = Σ len(response) predicted tokens, in order of the
    responses and of their tokens: ``select`` [M] long, the position (index into the T) whose
    output predicts the token; ``targets`` [M] long, the token; and ``token_mask`` [N, R] bool,
    True at each response's tokens (R the longest response), whose True entries in row-major order
    are the M tokens. A response's first token is predicted by its prompt's last position.
    """
    if not lists or any(not p or not rs or any(not r for r in rs) for p, rs in lists):
        raise ValueError("pack_lists needs non-empty prompts, each with at least one non-empty response")
    ids: list[int] = []
    positions: list[int] = []
    select, targets = [], []
    for prompt, responses in lists:
        last = len(ids) + len(prompt) - 1  # the prompt's last position predicts each response's first token
        ids += prompt
        positions += range(len(prompt))
        for r in responses:
            select += [last, *range(len(ids), len(ids) + len(r) - 1)]
            ids += r[:-1]
            positions += range(len(prompt), len(prompt) + len(r) - 1)
            targets += r
    padding = -len(ids) % multiple_of
    lengths = torch.tensor([len(r) for _, rs in lists for r in rs])
    as_tensor = functools.partial(torch.tensor, dtype=torch.long)
    return {"input_ids": as_tensor([ids + [0] * padding]), "position_ids": as_tensor([positions + [0] * padding]),
            "prompt_lengths": [len(p) for p, _ in lists], "list_sizes": [len(rs) for _, rs in lists],
            "response_positions": [len(r) - 1 for _, rs in lists for r in rs], "padding": padding,
            "select": as_tensor(select), "targets": as_tensor(targets),
            "token_mask": torch.arange(int(lengths.max()))[None, :] < lengths[:, None]}


def _segment_length(prompt: Sequence[int], responses: Sequence[Sequence[int]]) -> int:
    """Positions of a list's segment: its prompt, then every response but its last token."""
    return len(prompt) + sum(len(r) - 1 for r in responses)
