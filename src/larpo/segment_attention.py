"""Attention segment by segment, for the packed layout (:func:`larpo.logprobs.packed_logps`).

:func:`install` puts :func:`segment_sdpa` in place of transformers' ``"sdpa"`` attention function
(the ``ALL_ATTENTION_FUNCTIONS`` registry every model's attention layers look their function up
in). It is transformers' own function unless the model's forward was given ``larpo_segments``
(a :class:`Segments`); transformers hands forward keywords on to every attention call, including
a layer's replay under activation checkpointing. Then the row's queries, keys and values are split
into its segments, each segment attends within itself under its own mask, and the outputs are
concatenated again: attention costs Σ L² over the segments instead of the row's T², and no
padding is needed to keep lists apart.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from transformers.integrations.sdpa_attention import repeat_kv
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .packing import segment_masks

# Keywords of attention features the segment path does not implement; a model that passes one of them (not None) is refused.
_UNSUPPORTED = ("position_bias", "softcap", "sliding_window", "s_aux")


class Segments:
    """One packed row's segments: ``lengths`` (S ints, summing to T) and ``part`` [T] long (see
    :func:`larpo.packing.pack_lists`). Builds each segment's additive mask once per dtype and
    counts the attention calls that used it (``calls``), so a caller can check that the model's
    attention went through :func:`segment_sdpa`."""

    def __init__(self, lengths: Sequence[int], part: torch.Tensor):
        self.lengths = list(lengths)
        self.part = part
        self.calls = 0
        self._masks: dict[torch.dtype, list[torch.Tensor]] = {}

    def masks(self, dtype: torch.dtype) -> list[torch.Tensor]:
        """Additive masks [1, 1, L, L] in ``dtype``, one per segment: 0 where the query sees the key, −inf elsewhere."""
        if dtype not in self._masks:
            self._masks[dtype] = [torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill_(~m, float("-inf"))[None, None]
                                  for m in segment_masks(self.lengths, self.part)]
        return self._masks[dtype]


def segment_sdpa(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                 attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                 larpo_segments: Segments | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' SDPA attention, or, given ``larpo_segments``, SDPA within each segment.

    query [1, H, T, D], key and value [1, H_kv, T, D] → output [1, T, H, D] (the layout
    transformers' attention functions return), attention weights None. ``attention_mask`` is
    ignored on the segment path: the segments' own masks replace it.
    """
    if larpo_segments is None:
        return _TRANSFORMERS_SDPA(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    unsupported = [name for name in _UNSUPPORTED if kwargs.get(name) is not None]
    if unsupported or query.shape[0] != 1:
        raise ValueError(f"segment attention: {type(module).__name__} passes {', '.join(unsupported) or 'a batch of rows'}, "
                         "which the packed layout does not support; use list_logps(layout='shared')")
    larpo_segments.calls += 1
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    lengths = larpo_segments.lengths
    out = [F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=scaling)
           for q, k, v, mask in zip(query.split(lengths, 2), key.split(lengths, 2), value.split(lengths, 2),
                                    larpo_segments.masks(query.dtype))]
    return torch.cat(out, dim=2).transpose(1, 2).contiguous(), None


def install() -> None:
    """Make :func:`segment_sdpa` transformers' ``"sdpa"`` attention function (once; calling again does nothing)."""
    global _TRANSFORMERS_SDPA
    current = ALL_ATTENTION_FUNCTIONS["sdpa"]
    if current is not segment_sdpa:
        _TRANSFORMERS_SDPA = current
        ALL_ATTENTION_FUNCTIONS["sdpa"] = segment_sdpa


_TRANSFORMERS_SDPA = ALL_ATTENTION_FUNCTIONS["sdpa"]
