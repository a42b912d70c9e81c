"""Attention list by list, for the packed layout (:func:`larpo.logprobs.packed_logps`).

:func:`install` puts :func:`segment_sdpa` in place of transformers' ``"sdpa"`` attention function
(the ``ALL_ATTENTION_FUNCTIONS`` registry every model's attention layers look their function up
in). It is transformers' own function unless the model's forward was given ``larpo_segments``
(a :class:`Segments`); transformers hands forward keywords on to every attention call, including
a layer's replay under activation checkpointing. Then a query sees only keys of its own list that
are its prompt's or its own response's earlier positions, computed one of two ways:

- **FlexAttention** (on CUDA, :data:`FLEX_DEVICES`): one compiled ``flex_attention`` call per layer
  over the whole row, with a block mask built once per forward from the row's structure. The
  packed row is padded to a multiple of :data:`BLOCK` positions for it (a pad attends to pads only).
- **SDPA piece by piece** (elsewhere; exact and fastest on a CPU): the row's queries, keys and
  values are split into its lists' pieces — prompt, then each response — and per list SDPA runs
  twice or more: causal over the prompt and its first response, then each later response's
  queries against its prompt's keys and its own (a mask, causal within the response).

Either way no query meets a key of another list or of another response, and no padding is needed
to keep them apart.
"""

from __future__ import annotations

import functools
from typing import Sequence

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention
from transformers.integrations.sdpa_attention import repeat_kv
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .transfer import to_device

# Keywords of attention features the segment path does not implement; a model that passes one of them (not None) is refused.
_UNSUPPORTED = ("position_bias", "softcap", "sliding_window", "s_aux")
FLEX_DEVICES = ("cuda",)  # device types whose packed attention is one FlexAttention call per layer
FLEX_HEAD_DIMS = (16, 32, 64, 128, 256)  # head dimensions FlexAttention's kernels take
BLOCK = 128  # FlexAttention's block size: a packed row for it is padded to a multiple of this


def uses_flex(device: torch.device, head_dim: int) -> bool:
    """Whether a packed row on ``device`` with attention heads of ``head_dim`` runs FlexAttention."""
    return torch.device(device).type in FLEX_DEVICES and head_dim in FLEX_HEAD_DIMS


class Segments:
    """One packed row's structure (:func:`larpo.packing.pack_lists`): ``prompt_lengths`` (S ints),
    ``response_positions`` (N ints, the positions of each response, list by list), ``list_sizes``
    (S ints, responses per list) and ``padding`` (positions after the last list, for FlexAttention).
    ``lengths`` holds, per list, its prompt's length and its responses' positions; ``pieces`` the
    row's pieces in order (each list's prompt, then its responses). Builds the masks of either
    computation once per dtype and device, and counts the attention calls that used it (``calls``),
    so a caller can check that the model's attention went through :func:`segment_sdpa`."""

    def __init__(self, prompt_lengths: Sequence[int], response_positions: Sequence[int], list_sizes: Sequence[int],
                 padding: int = 0):
        self.lengths: list[tuple[int, list[int]]] = []
        start = 0
        for prompt, m in zip(prompt_lengths, list_sizes):
            self.lengths.append((prompt, list(response_positions[start : start + m])))
            start += m
        self.padding = padding
        self.pieces = [n for prompt, responses in self.lengths for n in (prompt, *responses)]
        self.calls = 0
        self._masks: dict[tuple[torch.dtype, torch.device], dict[int, torch.Tensor]] = {}
        self._block_masks: dict[torch.device, BlockMask] = {}

    def masks(self, dtype: torch.dtype, device: torch.device) -> dict[int, torch.Tensor]:
        """Additive masks [1, 1, R, P + R] of the later responses with R > 0 positions, by their index in
        ``pieces``: 0 where a query sees the key (all P prompt keys, its own earlier positions), −inf elsewhere."""
        if (dtype, device) not in self._masks:
            masks, i = {}, 0
            for prompt, responses in self.lengths:
                for j, r in enumerate(responses[1:], start=i + 2):
                    if r:
                        masks[j] = torch.zeros(r, prompt + r, dtype=dtype, device=device).masked_fill_(
                            torch.ones(r, prompt + r, dtype=torch.bool, device=device).triu(prompt + 1), float("-inf"))[None, None]
                i += 1 + len(responses)
            self._masks[dtype, device] = masks
        return self._masks[dtype, device]

    def block_mask(self, device: torch.device) -> BlockMask:
        """FlexAttention's mask of the whole row [T, T]: query q sees key k ≤ q of the same list (or of
        the padding) whose piece is the list's prompt or q's own response."""
        if device not in self._block_masks:
            kinds = [(s, j) for s, (_, responses) in enumerate(self.lengths) for j in range(1 + len(responses))]
            lengths = torch.tensor([*self.pieces, self.padding])
            owner = torch.tensor([s for s, _ in kinds] + [len(self.lengths)])  # each piece's list; the padding its own
            piece = torch.tensor([i if j else -1 for i, (_, j) in enumerate(kinds)] + [-1])  # -1: a prompt, the padding
            doc, piece = (to_device(t.repeat_interleave(lengths), device) for t in (owner, piece))
            n = len(doc)
            self._block_masks[device] = create_block_mask(_list_by_list(doc, piece), None, None, n, n, device=device,
                                                          BLOCK_SIZE=BLOCK)
        return self._block_masks[device]


def _list_by_list(doc: torch.Tensor, piece: torch.Tensor):
    """FlexAttention's ``mask_mod`` for positions' list ``doc`` [T] and piece ``piece`` [T] (−1 in a prompt)."""

    def mask_mod(b, h, q, k):
        return (doc[q] == doc[k]) & (k <= q) & ((piece[k] == -1) | (piece[k] == piece[q]))

    return mask_mod


@functools.cache
def _compiled_flex():
    """``flex_attention`` compiled (its fused kernels; once per process, for dynamic lengths after the second).

    Dynamo keeps one compiled variant per head layout, dtype, grad mode and (static or dynamic)
    length. Past its limit per function (8 by default) it would run flex_attention unfused, slower
    and with other rounding, which a process that trains several models (a test session, a sweep)
    reaches: the limit is raised to at least 64.
    """
    config = torch._dynamo.config
    config.recompile_limit = max(config.recompile_limit, 64)
    return torch.compile(flex_attention)


def _flex(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, block_mask: BlockMask,
          scaling: float | None) -> torch.Tensor:
    """One FlexAttention call over the row: [1, H, T, D] queries, [1, H_kv, T, D] keys and values → [1, H, T, D].

    Under autocast the inputs are cast to its dtype, as SDPA's are (rotary embeddings leave queries
    and keys in float32). Compiled where its fused kernels exist (CUDA); elsewhere flex_attention
    runs unfused, which tests use.
    """
    device = query.device.type
    if torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
        query, key, value = query.to(dtype), key.to(dtype), value.to(dtype)
    attend = _compiled_flex() if device == "cuda" else flex_attention
    return attend(query, key, value, block_mask=block_mask, scale=scaling, enable_gqa=key.shape[1] != query.shape[1])


def segment_sdpa(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                 attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                 larpo_segments: Segments | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' SDPA attention, or, given ``larpo_segments``, attention list by list.

    query [1, H, T, D], key and value [1, H_kv, T, D] → output [1, T, H, D] (the layout
    transformers' attention functions return), attention weights None. ``attention_mask`` is
    ignored on the segment path: the row's structure replaces it. FlexAttention runs where
    :func:`uses_flex` and there is no attention dropout; SDPA piece by piece otherwise.
    """
    if larpo_segments is None:
        return _TRANSFORMERS_SDPA(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    unsupported = [name for name in _UNSUPPORTED if kwargs.get(name) is not None]
    if unsupported or query.shape[0] != 1:
        raise ValueError(f"segment attention: {type(module).__name__} passes {', '.join(unsupported) or 'a batch of rows'}, "
                         "which the packed layout does not support; use list_logps(layout='shared')")
    larpo_segments.calls += 1
    if dropout == 0 and uses_flex(query.device, query.shape[-1]):
        out = _flex(query, key, value, larpo_segments.block_mask(query.device), scaling)
    else:
        out = _piece_by_piece(query, repeat_kv(key, getattr(module, "num_key_value_groups", 1)),
                              repeat_kv(value, getattr(module, "num_key_value_groups", 1)), larpo_segments, dropout, scaling)
    return out.transpose(1, 2).contiguous(), None


def _piece_by_piece(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, segments: Segments, dropout: float,
                    scaling: float | None) -> torch.Tensor:
    """SDPA list by list: query, key and value [1, H, T, D] (keys repeated for every query head) → [1, H, T, D]."""
    pieces = [*segments.pieces, segments.padding]
    qs, ks, vs = query.split(pieces, 2), key.split(pieces, 2), value.split(pieces, 2)
    masks = segments.masks(query.dtype, query.device)

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=mask is None,
                                              scale=scaling)

    out, i = [], 0
    for _, responses in segments.lengths:
        first = slice(i, i + 2)  # the prompt and its first response: plain causal attention
        out.append(attend(torch.cat(qs[first], 2), torch.cat(ks[first], 2), torch.cat(vs[first], 2)))
        for j in range(i + 2, i + 1 + len(responses)):
            if pieces[j]:
                out.append(attend(qs[j], torch.cat([ks[i], ks[j]], 2), torch.cat([vs[i], vs[j]], 2), masks[j]))
        i += 1 + len(responses)
    if segments.padding:
        out.append(attend(qs[-1], ks[-1], vs[-1]))
    return torch.cat(out, dim=2)


def install() -> None:
    """Make :func:`segment_sdpa` transformers' ``"sdpa"`` attention function (once; calling again does nothing)."""
    global _TRANSFORMERS_SDPA
    current = ALL_ATTENTION_FUNCTIONS["sdpa"]
    if current is not segment_sdpa:
        _TRANSFORMERS_SDPA = current
        ALL_ATTENTION_FUNCTIONS["sdpa"] = segment_sdpa


_TRANSFORMERS_SDPA = ALL_ATTENTION_FUNCTIONS["sdpa"]
