"""Retrieval metrics of a policy, per prompt, and a bootstrap interval over prompts (no model here).

The IR ↔ alignment mapping (spec §1): the policy is a retriever, the reward model a reranker.

- :func:`pass_at_k` — Recall@k: does any of k samples solve the prompt.
- :func:`best_of_n` — retrieve n, rerank, keep the reranker's top pick; judged by the gold reward.
- :func:`ndcg_at_k`, :func:`mrr` — how well the retriever's own order (its log-probs) agrees with
  the reranker's order of the same candidates.
- :func:`win_rate` — head-to-head of two policies' responses, ties counted half.
- :func:`bootstrap_ci` — a 95 % percentile interval of the mean over prompts.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy.stats import bootstrap
from sklearn.metrics import ndcg_score


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one prompt with ``c`` correct among ``n`` samples (Chen et al. 2021).

    1 − C(n−c, k) / C(n, k), computed as the product 1 − ∏_{i=n−c+1}^{n} (1 − k/i), which never
    forms the binomials. The probability that a uniformly random k-subset of the n samples holds
    at least one correct sample.
    """
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass_at_k: expected 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def best_of_n(rewards_reranker: Sequence[float], gold: Sequence[float], n: int) -> float:
    """Expected gold reward of the reranker's top pick among ``n`` of one prompt's m samples.

    Exact expectation over all C(m, n) subsets of size n drawn without replacement from the m
    samples (not just the first n), so it uses every sample and has no subset noise. Reranker ties
    are broken uniformly at random: a tie group G is the top of the subset with probability
    [C(m−a, n) − C(m−a−|G|, n)] / C(m, n), with a the number of samples ranked strictly above G,
    and then contributes the mean gold reward of G.
    """
    r = np.asarray(rewards_reranker, dtype=float)
    g = np.asarray(gold, dtype=float)
    m = len(r)
    if len(g) != m or not 1 <= n <= m:
        raise ValueError(f"best_of_n: expected equal-length lists and 1 <= n <= {m}, got {len(g)} gold and n={n}")
    total = math.comb(m, n)
    expected, above = 0.0, 0
    for value in sorted(set(r.tolist()), reverse=True):
        group = r == value
        size = int(group.sum())
        p = (math.comb(m - above, n) - math.comb(m - above - size, n)) / total
        expected += p * float(g[group].mean())
        above += size
    return expected


def _gains(relevance: Sequence[float]) -> np.ndarray:
    rel = np.asarray(relevance, dtype=float)
    return rel - rel.min() if rel.min() < 0 else rel


def ndcg_at_k(retriever_scores: Sequence[float], relevance: Sequence[float], k: int | None = None) -> float:
    """NDCG@k of the retriever's order against reranker relevance (``sklearn.metrics.ndcg_score``).

    Gains are the relevances themselves when none is negative (gold or graded rewards), otherwise
    relevance − min(relevance), so the worst candidate gains 0 (e.g. reward-model logits).
    Retriever ties are averaged (sklearn's default). NaN when every relevance is equal: there is
    no order to recover.
    """
    rel = _gains(relevance)
    if len(rel) != len(retriever_scores):
        raise ValueError("ndcg_at_k: retriever_scores and relevance differ in length")
    if len(rel) < 2 or np.all(rel == rel[0]):
        return math.nan
    return float(ndcg_score(rel[None, :], np.asarray(retriever_scores, dtype=float)[None, :], k=k))


def mrr(retriever_scores: Sequence[float], relevance: Sequence[float]) -> float:
    """Reciprocal rank, under the retriever's order, of the reranker's best item.

    The best item is the first index with the highest relevance; the retriever's order is by
    score, highest first, ties kept in index order (a stable sort).
    """
    rel = np.asarray(relevance, dtype=float)
    scores = np.asarray(retriever_scores, dtype=float)
    if len(rel) != len(scores) or len(rel) == 0:
        raise ValueError("mrr: expected non-empty retriever_scores and relevance of equal length")
    best = int(np.argmax(rel))  # the first best
    order = np.argsort(-scores, kind="stable")
    return 1.0 / (int(np.nonzero(order == best)[0][0]) + 1)


def wins(a: Sequence[float], b: Sequence[float]) -> list[float]:
    """Per-prompt outcome of a against b: 1 when a > b, 0.5 on a tie, 0 when a < b."""
    if len(a) != len(b):
        raise ValueError(f"wins: got {len(a)} and {len(b)} values, expected equal lengths")
    return [1.0 if x > y else 0.5 if x == y else 0.0 for x, y in zip(a, b)]


def win_rate(a: Sequence[float], b: Sequence[float]) -> float:
    """Fraction of prompts where a > b, ties counted half."""
    outcome = wins(a, b)
    if not outcome:
        raise ValueError("win_rate: no prompts")
    return sum(outcome) / len(outcome)


def bootstrap_ci(per_prompt_values: Sequence[float], n_resamples: int = 1000, seed: int = 0,
                 ) -> tuple[float, float, float]:
    """(mean, low, high): the mean over prompts and its 95 % percentile bootstrap interval.

    Prompts are resampled with replacement (``scipy.stats.bootstrap``, method="percentile").
    With fewer than two prompts, or all values equal, the interval collapses to the mean; with
    no prompts every entry is NaN.
    """
    values = np.asarray(per_prompt_values, dtype=float)
    if values.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(values.mean())
    if values.size < 2 or np.all(values == values[0]):
        return mean, mean, mean
    res = bootstrap((values,), np.mean, n_resamples=n_resamples, confidence_level=0.95, method="percentile",
                    vectorized=True, rng=np.random.default_rng(seed))
    low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return mean, min(low, mean), max(high, mean)


# a greedy evaluation's headline -> its per-prompt field (strict only where the task has a strict reading)
HEADLINES = {"exact_accuracy": "correct", "strict_accuracy": "strict", "gold_reward": "reward"}


def paired_difference(initial: dict, final: dict, field: str) -> dict:
    """final − initial on the same held-out prompts: the mean of the per-prompt differences and its
    95% (paired) bootstrap interval over prompts."""
    diffs = [b - a for a, b in zip(initial["per_prompt"][field], final["per_prompt"][field], strict=True)]
    mean, low, high = bootstrap_ci(diffs)
    return {"mean": mean, "low": low, "high": high, "n_prompts": len(diffs)}


def differences(initial: dict, final: dict) -> dict:
    """:func:`paired_difference` of every headline of :data:`HEADLINES` both evaluations scored."""
    return {key: paired_difference(initial, final, field) for key, field in HEADLINES.items()
            if field in initial["per_prompt"] and field in final["per_prompt"]}
