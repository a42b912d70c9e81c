"""larpo.metrics on small hand-computed cases and brute-force enumerations."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from larpo.metrics import best_of_n, bootstrap_ci, mrr, ndcg_at_k, pass_at_k, win_rate, wins


def test_pass_at_k_hand_computed():
    assert pass_at_k(4, 0, 2) == 0.0
    assert pass_at_k(4, 4, 1) == 1.0
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)  # 1 - C(3,2)/C(4,2) = 1 - 3/6
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)  # 1 - C(3,2)/C(5,2) = 1 - 3/10
    assert pass_at_k(5, 2, 4) == 1.0  # only 3 wrong samples: any 4 hold a correct one


def test_pass_at_k_matches_subset_enumeration():
    for n in range(1, 8):
        for c in range(n + 1):
            samples = [1] * c + [0] * (n - c)
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(samples, k))
                brute = sum(any(s) for s in subsets) / len(subsets)
                assert pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12)


def test_pass_at_k_is_stable_for_large_n():
    value = pass_at_k(1000, 3, 10)
    assert value == pytest.approx(1 - math.comb(997, 10) / math.comb(1000, 10), rel=1e-9)


@pytest.mark.parametrize("bad", [(4, 5, 1), (4, 1, 0), (4, 1, 5), (4, -1, 1)])
def test_pass_at_k_rejects_bad_arguments(bad):
    with pytest.raises(ValueError):
        pass_at_k(*bad)


def _best_of_n_brute(scores, gold, n):
    """Enumerate subsets; the reranker picks uniformly among its tied top items."""
    total = 0.0
    subsets = list(itertools.combinations(range(len(scores)), n))
    for subset in subsets:
        top = max(scores[i] for i in subset)
        tied = [gold[i] for i in subset if scores[i] == top]
        total += sum(tied) / len(tied)
    return total / len(subsets)


def test_best_of_n_hand_computed():
    scores, gold = [3.0, 2.0, 1.0], [1.0, 0.0, 0.5]
    assert best_of_n(scores, gold, 1) == pytest.approx(0.5)  # the mean gold
    assert best_of_n(scores, gold, 3) == pytest.approx(1.0)  # the reranker's top item
    # pairs {0,1}->1, {0,2}->1, {1,2}->0
    assert best_of_n(scores, gold, 2) == pytest.approx(2 / 3)


def test_best_of_n_matches_enumeration_with_ties():
    rng = random.Random(0)
    for _ in range(30):
        m = rng.randint(1, 7)
        scores = [float(rng.randint(0, 3)) for _ in range(m)]
        gold = [rng.random() for _ in range(m)]
        for n in range(1, m + 1):
            assert best_of_n(scores, gold, n) == pytest.approx(_best_of_n_brute(scores, gold, n), abs=1e-12)


def test_ndcg_hand_computed():
    assert ndcg_at_k([3, 2, 1], [1, 0, 0]) == pytest.approx(1.0)
    # the relevant item ranked second: DCG = 1/log2(3), IDCG = 1
    assert ndcg_at_k([2, 3, 1], [1, 0, 0]) == pytest.approx(1 / math.log2(3))
    assert ndcg_at_k([2, 3, 1], [1, 0, 0], k=1) == pytest.approx(0.0)
    assert math.isnan(ndcg_at_k([1, 2], [0.5, 0.5]))  # all tied: no order to recover
    # negative rewards are shifted to gain 0 for the worst: same as [2, 1, 0]
    assert ndcg_at_k([1, 3, 2], [0.0, -1.0, -2.0]) == pytest.approx(ndcg_at_k([1, 3, 2], [2.0, 1.0, 0.0]))


def test_mrr_hand_computed():
    assert mrr([0.9, 0.5, 0.1], [1.0, 0.0, 0.0]) == 1.0
    assert mrr([0.1, 0.5, 0.9], [1.0, 0.0, 0.0]) == pytest.approx(1 / 3)
    assert mrr([0.1, 0.5, 0.9], [0.0, 1.0, 1.0]) == pytest.approx(1 / 2)  # ties: the first best (index 1)
    assert mrr([0.5, 0.5, 0.1], [0.0, 1.0, 0.0]) == pytest.approx(1 / 2)  # retriever ties in index order


def test_win_rate_counts_ties_half():
    assert wins([1, 0, 0.5], [0, 0, 1]) == [1.0, 0.5, 0.0]
    assert win_rate([1, 0, 0.5, 1], [0, 0, 1, 0]) == pytest.approx(2.5 / 4)
    with pytest.raises(ValueError):
        win_rate([1], [1, 2])


def test_bootstrap_ci_contains_mean_and_shrinks():
    rng = random.Random(0)
    small = [rng.random() for _ in range(20)]
    large = [rng.random() for _ in range(2000)]
    mean, low, high = bootstrap_ci(small)
    assert mean == pytest.approx(sum(small) / 20)
    assert 0 <= low <= mean <= high <= 1
    _, low2, high2 = bootstrap_ci(large)
    assert high2 - low2 < (high - low) / 4
    assert bootstrap_ci(small, seed=1) != bootstrap_ci(small, seed=2)
    assert bootstrap_ci(small) == bootstrap_ci(small)  # seeded


def test_bootstrap_ci_degenerate_inputs():
    assert bootstrap_ci([0.7]) == (0.7, 0.7, 0.7)
    assert bootstrap_ci([1.0, 1.0, 1.0]) == (1.0, 1.0, 1.0)
    assert all(math.isnan(x) for x in bootstrap_ci([]))
