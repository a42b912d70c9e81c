"""Attention list by list, for the packed layout (:func:`larpo.logprobs.packed_logps`).

:func:`install` puts :func:`segment_sdpa` in place of transformers' ``"sdpa"`` attention function
(the ``ALL_ATTENTION_FUNCTIONS`` registry every model's attention layers look their function up
in). It is transformers' own function unless the model's forward was given ``larpo_segments``
(a :class:`Segments`); transformers hands forward keywords on to every attention call, including
a layer's replay under activation checkpointing. Then the row's queries, keys and values are split
into its lists' pieces — prompt, then each response — and per list SDPA runs twice or more:
causal over the prompt and its first response, then each later response's queries against its
prompt's keys and its own (a mask, causal within the response). No query meets a key of another
list or of another response, and no padding is needed to keep them apart.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from transformers.integrations.sdpa_attention import repeat_kv
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

# Keywords of attention features the segment path does not implement; a model that passes one of them (not None) is refused.
_UNSUPPORTED = ("position_bias", "softcap", "sliding_window", "s_aux")


class Segments:
    """One packed row's structure (:func:`larpo.packing.pack_lists`): ``prompt_lengths`` (S ints),
    ``response_inputs`` (N ints, the positions of each response, list by list) and ``list_sizes``
    (S ints, responses per list). Builds the masks of the later responses once per dtype and device,
    and counts the attention calls that used it (``calls``), so a caller can check that the model's
    attention went through :func:`segment_sdpa`."""

    def __init__(self, prompt_lengths: Sequence[int], response_inputs: Sequence[int], list_sizes: Sequence[int]):
        self.lists: list[tuple[int, list[int]]] = []
        start = 0
        for prompt, m in zip(prompt_lengths, list_sizes):
            self.lists.append((prompt, list(response_inputs[start : start + m])))
            start += m
        self.pieces = [n for prompt, responses in self.lists for n in (prompt, *responses)]  # the row's pieces, in order
        self.calls = 0
        self._masks: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}

    def masks(self, dtype: torch.dtype, device: torch.device) -> list[torch.Tensor]:
        """Additive masks [1, 1, R, P + R], one per later response with R > 0 positions (in row order):
        0 where its query sees the key (all P prompt keys, its own earlier positions), −inf elsewhere."""
        if (dtype, device) not in self._masks:
            self._masks[dtype, device] = [
                torch.zeros(r, prompt + r, dtype=dtype, device=device)
                .masked_fill_(torch.ones(r, prompt + r, dtype=torch.bool, device=device).triu(prompt + 1), float("-inf"))[None, None]
                for prompt, responses in self.lists for r in responses[1:] if r]
        return self._masks[dtype, device]


def segment_sdpa(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                 attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                 larpo_segments: Segments | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' SDPA attention, or, given ``larpo_segments``, SDPA list by list.

    query [1, H, T, D], key and value [1, H_kv, T, D] → output [1, T, H, D] (the layout
    transformers' attention functions return), attention weights None. ``attention_mask`` is
    ignored on the segment path: the row's structure replaces it.
    """
    if larpo_segments is None:
        return _TRANSFORMERS_SDPA(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    unsupported = [name for name in _UNSUPPORTED if kwargs.get(name) is not None]
    if unsupported or query.shape[0] != 1:
        raise ValueError(f"segment attention: {type(module).__name__} passes {', '.join(unsupported) or 'a batch of rows'}, "
                         "which the packed layout does not support; use list_logps(layout='shared')")
    larpo_segments.calls += 1
    groups = getattr(module, "num_key_value_groups", 1)
    pieces = larpo_segments.pieces
    qs, ks, vs = query.split(pieces, 2), repeat_kv(key, groups).split(pieces, 2), repeat_kv(value, groups).split(pieces, 2)
    masks = iter(larpo_segments.masks(query.dtype, query.device))

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=mask is None,
                                              scale=scaling)

    out, i = [], 0
    for _, responses in larpo_segments.lists:
        first = slice(i, i + 2)  # the prompt and its first response: plain causal attention
        out.append(attend(torch.cat(qs[first], 2), torch.cat(ks[first], 2), torch.cat(vs[first], 2)))
        for j in range(i + 2, i + 1 + len(responses)):
            if pieces[j]:
                out.append(attend(qs[j], torch.cat([ks[i], ks[j]], 2), torch.cat([vs[i], vs[j]], 2), next(masks)))
        i += 1 + len(responses)
    return torch.cat(out, dim=2).transpose(1, 2).contiguous(), None


def install() -> None:
    """Make :func:`segment_sdpa` transformers' ``"sdpa"`` attention function (once; calling again does nothing)."""
    global _TRANSFORMERS_SDPA
    current = ALL_ATTENTION_FUNCTIONS["sdpa"]
    if current is not segment_sdpa:
        _TRANSFORMERS_SDPA = current
        ALL_ATTENTION_FUNCTIONS["sdpa"] = segment_sdpa


_TRANSFORMERS_SDPA = ALL_ATTENTION_FUNCTIONS["sdpa"]
