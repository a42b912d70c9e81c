"""The packed layout of the shared-prompt response pass (:func:`larpo.logprobs.shared_prompt_logps`).

One row per list instead of one row per response: a list's m responses follow each other in one
row after the list's prompt cache, each seeing its prompt and its own earlier tokens under a 4-D
attention mask, with position ids that restart after the prompt for every response. No padding
between a list's responses and no copies of the prompt's cache, for attention over the whole row.
"""

from __future__ import annotations

import torch
from transformers import PretrainedConfig


def packing_is_exact(config: PretrainedConfig) -> bool:
    """Whether the packed layout computes what one row per response does, for a model with this (text) config.

    The packed pass hands the model a boolean 4-D attention mask, which transformers passes to SDPA
    as it is: right for SDPA attention without a sliding window (a window would be dropped with the
    model's own mask).
    """
    layer_types = getattr(config, "layer_types", None)
    windowless = (all(t == "full_attention" for t in layer_types) if layer_types
                  else getattr(config, "sliding_window", None) is None)
    return getattr(config, "_attn_implementation", None) == "sdpa" and windowless


def packing_pays(config: PretrainedConfig, prompt_mask: torch.Tensor, predicts: torch.Tensor, owner: torch.Tensor) -> bool:
    """Whether the packed response pass costs fewer FLOPs per layer than one row per response.

    Per position, the layer's matmuls (2 × (4h² + 3h·I), a dense-MLP estimate); per attended
    (query, key) pair, 4h. prompt_mask [B, P]; predicts [N, R − 1]; owner [N].
    """
    h = config.hidden_size
    per_position = 2 * (4 * h * h + 3 * h * (getattr(config, "intermediate_size", None) or 4 * h))
    (b, p), (n, width) = prompt_mask.shape, predicts.shape
    packed_width = _packed_width(predicts.sum(dim=1), owner, b)
    unpacked = n * width * (per_position + 4 * h * (p + width))
    packed = b * packed_width * (per_position + 4 * h * (p + packed_width))
    return packed < unpacked


def pack_responses(prompt_mask: torch.Tensor, response_ids: torch.Tensor, predicts: torch.Tensor,
                   owner: torch.Tensor) -> dict[str, torch.Tensor]:
    """Inputs of the packed response pass: each list's responses (all but their last token) in one row.

    prompt_mask [B, P] (left-padded); response_ids [N, R]; predicts [N, R − 1] (True where
    position t predicts a response token); owner [N], non-decreasing (responses grouped by list,
    as :func:`larpo.logprobs.collate_lists` gives them). Returns ``input_ids`` and
    ``position_ids`` [B, S], ``attention_mask`` [B, 1, S, P + S] bool, and ``select`` [B, S] bool:
    the real positions, in the row-major order of ``predicts``'s True entries.
    """
    b, device = prompt_mask.shape[0], owner.device
    prompt_lengths = prompt_mask.sum(dim=1)  # [B]: where each list's responses start
    counts = predicts.sum(dim=1)  # [N] input positions per response
    before = counts.cumsum(0) - counts  # positions of earlier responses, over all lists
    sizes = torch.bincount(owner, minlength=b)  # responses per list
    start = before - before[(sizes.cumsum(0) - sizes)[owner]]  # offset of each response in its list's row
    width = _packed_width(counts, owner, b)
    n_idx, t_idx = predicts.nonzero(as_tuple=True)
    rows, cols = owner[n_idx], start[n_idx] + t_idx
    input_ids = torch.zeros((b, width), dtype=response_ids.dtype, device=device)
    input_ids[rows, cols] = response_ids[n_idx, t_idx]
    positions = prompt_lengths[:, None].expand(b, width).clone()
    positions[rows, cols] = prompt_lengths[rows] + t_idx
    segment = torch.full((b, width), -1, dtype=torch.long, device=device)
    segment[rows, cols] = n_idx
    select = segment >= 0
    same = (segment[:, :, None] == segment[:, None, :]) & select[:, None, :]
    causal = positions[:, None, :] <= positions[:, :, None]
    # Padding queries see the prompt only (never an empty row, whose softmax would be NaN).
    mask = torch.cat([prompt_mask.bool()[:, None, :].expand(b, width, -1), same & causal], dim=2)
    return {"input_ids": input_ids, "position_ids": positions, "attention_mask": mask[:, None], "select": select}


def _packed_width(counts: torch.Tensor, owner: torch.Tensor, lists: int) -> int:
    """S, the longest row of the packed pass: the largest per-list sum of ``counts`` [N] (positions per response)."""
    return int(torch.zeros(lists, dtype=torch.long, device=owner.device).index_add_(0, owner, counts).max())
