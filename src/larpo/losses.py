"""The LarPO ranking losses: pure tensor functions, one per objective, plus a registry.

Every loss takes ``scores`` [B, m] — the γ values of B lists whose columns are ordered best →
worst by the reranker — an optional boolean ``mask`` [B, m] (True = a real item; shorter lists
are padded on the right) and optional ``rewards`` [B, m], and returns the **unreduced per-list
loss, shape [B]**. The paper sums over the pairs/positions of a list and averages over lists;
the averaging is the caller's.

With ``rewards`` given, a pair of items with equal reward carries no preference and contributes
nothing (pairwise: the list's loss is 0; contrastive: an item tied with the positive is not a
negative; lambdarank: the pair is dropped; listmle: each item competes only with the items
rewarded strictly lower, so a tie group's internal order is not learned).

Padded entries never reach an exponential as -inf: they are filled with the dtype's most negative
finite value, so values and gradients stay finite in float32, bfloat16 and float64.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

LossFn = Callable[..., torch.Tensor]


def _full_mask(scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return torch.ones_like(scores, dtype=torch.bool)
    if mask.shape != scores.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match scores shape {tuple(scores.shape)}")
    return mask.bool()


def _pair_mask(mask: torch.Tensor, rewards: torch.Tensor | None) -> torch.Tensor:
    """[B, m, m] True where i < j, both items are real and (given rewards) their rewards differ."""
    m = mask.shape[1]
    upper = torch.ones(m, m, dtype=torch.bool, device=mask.device).triu(diagonal=1)
    pairs = upper & mask[:, :, None] & mask[:, None, :]
    if rewards is not None:
        pairs = pairs & (rewards[:, :, None] != rewards[:, None, :])
    return pairs


def pairwise_loss(
    scores: torch.Tensor, mask: torch.Tensor | None = None, rewards: torch.Tensor | None = None
) -> torch.Tensor:
    """DPO / Bradley–Terry: −log σ(s_first − s_last) of each list's first and last real item.

    A longer list is used through those two items only (best vs worst); the items between them
    are ignored. scores: [B, m] γ, best first. mask: [B, m] real items (a prefix). rewards: [B, m] or None.
    Returns [B].
    """
    mask = _full_mask(scores, mask)
    last = (mask.sum(dim=1) - 1).clamp(min=0)
    rows = torch.arange(scores.shape[0], device=scores.device)
    loss = -F.logsigmoid(scores[:, 0] - scores[rows, last])
    keep = last > 0
    if rewards is not None:
        keep = keep & (rewards[:, 0] != rewards[rows, last])
    return torch.where(keep, loss, torch.zeros_like(loss))


def contrastive_loss(
    scores: torch.Tensor, mask: torch.Tensor | None = None, rewards: torch.Tensor | None = None
) -> torch.Tensor:
    """InfoNCE with column 0 as the positive: −log( e^{s_1} / Σ_j e^{s_j} ) over real items j.

    scores: [B, m] γ, best first. mask: [B, m]. rewards: [B, m] or None (items tied with the
    positive are left out of the denominator). Returns [B].
    """
    mask = _full_mask(scores, mask)
    if rewards is not None:
        tied = rewards == rewards[:, :1]
        tied[:, 0] = False
        mask = mask & ~tied
    filled = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    return torch.logsumexp(filled, dim=1) - scores[:, 0]


def _lipo_weights(scores: torch.Tensor, mask: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
    """LiPO-λ pair weights Δ_ij = |G_i − G_j| · |1/D(τ_i) − 1/D(τ_j)|, [B, m, m], no gradient.

    G = 2^ψ − 1 with ψ the reward min–max normalised within the list; D(τ) = log2(1 + τ) with τ
    the 1-based rank of each item under the model's current scores.
    """
    with torch.no_grad():
        r = rewards.to(torch.float64)
        lo = r.masked_fill(~mask, math.inf).min(dim=1, keepdim=True).values
        hi = r.masked_fill(~mask, -math.inf).max(dim=1, keepdim=True).values
        span = hi - lo
        psi = torch.where(span > 0, (r - lo) / span.clamp(min=1e-300), torch.zeros_like(r))
        gain = torch.pow(2.0, psi) - 1.0
        order = scores.detach().to(torch.float64).masked_fill(~mask, -math.inf).argsort(dim=1, descending=True, stable=True)
        rank = torch.empty_like(order)
        positions = torch.arange(1, scores.shape[1] + 1, device=scores.device).expand_as(order)
        rank.scatter_(1, order, positions)
        inv_discount = 1.0 / torch.log2(1.0 + rank.to(torch.float64))
        delta = (gain[:, :, None] - gain[:, None, :]).abs() * (inv_discount[:, :, None] - inv_discount[:, None, :]).abs()
    return delta.to(scores.dtype)


def lambdarank_loss(
    scores: torch.Tensor,
    mask: torch.Tensor | None = None,
    rewards: torch.Tensor | None = None,
    weighting: str = "none",
) -> torch.Tensor:
    """All ordered pairs of the list: −Σ_{i<j} w_ij · log σ(s_i − s_j).

    ``weighting="none"`` is the paper's printed form (w = 1); ``"lipo"`` uses LiPO-λ weights
    (needs ``rewards``). scores: [B, m] γ, best first. mask: [B, m]. rewards: [B, m]. Returns [B].
    """
    mask = _full_mask(scores, mask)
    pairs = _pair_mask(mask, rewards)
    pair_loss = -F.logsigmoid(scores[:, :, None] - scores[:, None, :])
    if weighting == "lipo":
        if rewards is None:
            raise ValueError("weighting='lipo' needs the rewards of each list")
        pair_loss = pair_loss * _lipo_weights(scores, mask, rewards)
    elif weighting != "none":
        raise ValueError(f"unknown lambdarank weighting {weighting!r}; expected 'none' or 'lipo'")
    return torch.where(pairs, pair_loss, torch.zeros_like(pair_loss)).sum(dim=(1, 2))


def listmle_loss(
    scores: torch.Tensor, mask: torch.Tensor | None = None, rewards: torch.Tensor | None = None
) -> torch.Tensor:
    """Plackett–Luce likelihood of the reranker's order: −Σ_i ( s_i − log Σ_{j≥i} e^{s_j} ).

    With ``rewards``, items of one tie group are unordered among themselves: item i competes with
    itself and the items rewarded strictly lower, −Σ_i ( s_i − log Σ_{j: j=i or r_j<r_i} e^{s_j} ).
    No order inside a tie group is preferred, the worst group (and an all-tied list) contributes
    nothing, and without ties it is the formula above. scores: [B, m] γ, best first. mask:
    [B, m]. rewards: [B, m] or None. Returns [B].
    """
    mask = _full_mask(scores, mask)
    m = scores.shape[1]
    eye = torch.eye(m, dtype=torch.bool, device=scores.device)
    if rewards is None:
        below = torch.ones(m, m, dtype=torch.bool, device=scores.device).triu()  # [i, j]: j ≥ i
    else:
        below = rewards[:, None, :] < rewards[:, :, None]  # [B, i, j]: r_j < r_i
    competes = (below & mask[:, None, :]) | eye  # [B, i, j]
    filled = scores[:, None, :].expand(-1, m, -1).masked_fill(~competes, torch.finfo(scores.dtype).min)
    terms = scores - torch.logsumexp(filled, dim=2)
    return -torch.where(mask, terms, torch.zeros_like(terms)).sum(dim=1)


LOSSES: dict[str, LossFn] = {
    "pairwise": pairwise_loss,
    "contrastive": contrastive_loss,
    "lambdarank": lambdarank_loss,
    "listmle": listmle_loss,
}


def get_loss(name: str) -> LossFn:
    """The loss registered as ``name``: "pairwise" | "contrastive" | "lambdarank" | "listmle"."""
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; expected one of {', '.join(LOSSES)}") from None


# The paper's list sizes per loss (spec §4): (top, bottom) of the K reranked candidates.
DEFAULT_TOP_BOTTOM: dict[str, tuple[int, int]] = {
    "pairwise": (1, 1),
    "contrastive": (1, 3),
    "lambdarank": (2, 2),
    "listmle": (2, 2),
}
