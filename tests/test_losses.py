"""The ranking losses against independent float64 references written as plain loops."""

import math
import random

import pytest
import torch

from larpo.losses import (
    LOSSES,
    contrastive_loss,
    get_loss,
    lambdarank_loss,
    listmle_loss,
    pairwise_loss,
)


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def ref_pairwise(s, r):
    if len(s) < 2 or (r is not None and r[0] == r[-1]):
        return 0.0
    return -log_sigmoid(s[0] - s[-1])


def ref_contrastive(s, r):
    items = [j for j in range(len(s)) if j == 0 or r is None or r[j] != r[0]]
    top = max(s[j] for j in items)
    return -(s[0] - (top + math.log(sum(math.exp(s[j] - top) for j in items))))


def ref_lambdarank(s, r):
    total = 0.0
    for i in range(len(s)):
        for j in range(i + 1, len(s)):
            if r is not None and r[i] == r[j]:
                continue
            total += -log_sigmoid(s[i] - s[j])
    return total


def ref_lipo(s, r):
    lo, hi = min(r), max(r)
    gain = [2 ** ((x - lo) / (hi - lo) if hi > lo else 0.0) - 1 for x in r]
    by_score = sorted(range(len(s)), key=lambda i: -s[i])
    rank = {item: pos + 1 for pos, item in enumerate(by_score)}
    total = 0.0
    for i in range(len(s)):
        for j in range(i + 1, len(s)):
            if r[i] == r[j]:
                continue
            w = abs(gain[i] - gain[j]) * abs(1 / math.log2(1 + rank[i]) - 1 / math.log2(1 + rank[j]))
            total += -w * log_sigmoid(s[i] - s[j])
    return total


def ref_listmle(s, r):
    """Without rewards: the Plackett–Luce terms over the tail s[i:]; with rewards, item i competes
    with itself and the strictly lower-rewarded items only."""
    total = 0.0
    for i in range(len(s)):
        tail = s[i:] if r is None else [s[i]] + [s[j] for j in range(len(s)) if r[j] < r[i]]
        top = max(tail)
        total += -(s[i] - (top + math.log(sum(math.exp(x - top) for x in tail))))
    return total


REFERENCES = {
    "pairwise": ref_pairwise,
    "contrastive": ref_contrastive,
    "lambdarank": ref_lambdarank,
    "listmle": ref_listmle,
}


def ragged_batch(seed: int, batch: int = 7, width: int = 6, tie_rewards: bool = True):
    """Random ragged lists (lengths 2..width, right-padded with junk) with sorted rewards."""
    rng = random.Random(seed)
    scores, mask, rewards, lists = [], [], [], []
    for _ in range(batch):
        n = rng.randint(2, width)
        s = [rng.gauss(0, 2) for _ in range(n)]
        r = sorted((rng.choice([0.0, 0.25, 0.5, 1.0]) if tie_rewards else rng.random() for _ in range(n)), reverse=True)
        lists.append((s, r))
        scores.append(s + [rng.gauss(0, 50) for _ in range(width - n)])
        mask.append([True] * n + [False] * (width - n))
        rewards.append(r + [rng.random() for _ in range(width - n)])
    as64 = lambda x: torch.tensor(x, dtype=torch.float64)  # noqa: E731
    return as64(scores), torch.tensor(mask), as64(rewards), lists


@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("with_rewards", [False, True])
def test_loss_matches_float64_loop_reference_on_ragged_lists(name, with_rewards):
    scores, mask, rewards, lists = ragged_batch(seed=10 * list(LOSSES).index(name) + with_rewards)
    got = get_loss(name)(scores, mask, rewards if with_rewards else None)
    want = torch.tensor([REFERENCES[name](s, r if with_rewards else None) for s, r in lists], dtype=torch.float64)
    assert got.shape == (scores.shape[0],)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_lambdarank_lipo_weights_match_reference():
    scores, mask, rewards, lists = ragged_batch(seed=3, tie_rewards=False)
    got = lambdarank_loss(scores, mask, rewards, weighting="lipo")
    want = torch.tensor([ref_lipo(s, r) for s, r in lists], dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_lambdarank_lipo_weights_carry_no_gradient_but_scores_do():
    scores, mask, rewards, _ = ragged_batch(seed=4, tie_rewards=False)
    scores.requires_grad_(True)
    lambdarank_loss(scores, mask, rewards, weighting="lipo").sum().backward()
    assert torch.isfinite(scores.grad).all() and scores.grad.abs().sum() > 0
    assert (scores.grad[~mask] == 0).all()


def test_lipo_needs_rewards_and_unknown_weighting_is_rejected():
    scores = torch.zeros(1, 3)
    with pytest.raises(ValueError, match="rewards"):
        lambdarank_loss(scores, weighting="lipo")
    with pytest.raises(ValueError, match="weighting"):
        lambdarank_loss(scores, weighting="ndcg")


@pytest.mark.parametrize("name", list(LOSSES))
def test_every_loss_is_dpo_for_two_items(name):
    scores = torch.randn(16, 2, dtype=torch.float64) * 3
    dpo = -torch.nn.functional.logsigmoid(scores[:, 0] - scores[:, 1])
    torch.testing.assert_close(get_loss(name)(scores), dpo, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", list(LOSSES))
def test_padding_wider_does_not_change_a_lists_loss(name):
    scores, mask, rewards, _ = ragged_batch(seed=11)
    base = get_loss(name)(scores, mask, rewards)
    pad = torch.randn(scores.shape[0], 3, dtype=torch.float64) * 100
    wide = get_loss(name)(
        torch.cat([scores, pad], 1),
        torch.cat([mask, torch.zeros_like(pad, dtype=torch.bool)], 1),
        torch.cat([rewards, pad], 1),
    )
    torch.testing.assert_close(wide, base, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", list(LOSSES))
def test_gradcheck_in_float64(name):
    scores, mask, rewards, _ = ragged_batch(seed=5, batch=3, width=5)
    scores.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda s: get_loss(name)(s, mask, rewards), (scores,))


def test_gradcheck_lambdarank_lipo():
    scores, mask, rewards, _ = ragged_batch(seed=6, batch=3, width=5, tie_rewards=False)
    scores.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda s: lambdarank_loss(s, mask, rewards, weighting="lipo"), (scores,))


@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_finite_values_and_gradients_at_large_scores(name, dtype):
    mask = torch.tensor([[True, True, True, True], [True, True, True, False]])
    rewards = torch.tensor([[1.0, 0.5, 0.2, 0.0], [1.0, 0.5, 0.0, 0.0]])
    for sign in (1.0, -1.0):
        scores = (sign * torch.tensor([[1e4, -1e4, 1e4, -1e4], [-1e4, 1e4, -1e4, 1e4]])).to(dtype).requires_grad_(True)
        kwargs = {"weighting": "lipo"} if name == "lambdarank" else {}
        loss = get_loss(name)(scores, mask, rewards, **kwargs)
        loss.sum().backward()
        assert torch.isfinite(loss).all(), (name, dtype, loss)
        assert torch.isfinite(scores.grad).all(), (name, dtype, scores.grad)
        assert loss.dtype == dtype


def test_losses_vanish_for_well_separated_lists_and_are_large_when_inverted():
    good = torch.tensor([[30.0, 20.0, 10.0, 0.0]], dtype=torch.float64)
    for name in LOSSES:
        fn = get_loss(name)
        assert fn(good).item() < 1e-3, name
        assert fn(good.flip(1)).item() > 9, name


def test_tied_rewards_contribute_nothing():
    scores = torch.tensor([[0.0, 5.0, 1.0]], dtype=torch.float64)
    rewards = torch.tensor([[1.0, 1.0, 0.0]], dtype=torch.float64)
    # the inverted pair (0, 1) is tied, so only pairs against item 2 count
    lr = lambdarank_loss(scores, rewards=rewards)
    want = -torch.nn.functional.logsigmoid(torch.tensor(-1.0, dtype=torch.float64)) - torch.nn.functional.logsigmoid(
        torch.tensor(4.0, dtype=torch.float64)
    )
    torch.testing.assert_close(lr, want.reshape(1))
    assert pairwise_loss(scores[:, :2], rewards=rewards[:, :2]).item() == 0.0
    # contrastive: item 1 is tied with the positive, so it is not a negative
    torch.testing.assert_close(
        contrastive_loss(scores, rewards=rewards), -torch.nn.functional.logsigmoid(torch.tensor([-1.0], dtype=torch.float64))
    )


def test_listmle_without_ties_equals_listmle_without_rewards():
    scores, mask, rewards, _ = ragged_batch(seed=8, tie_rewards=False)
    torch.testing.assert_close(listmle_loss(scores, mask, rewards), listmle_loss(scores, mask), rtol=1e-12, atol=1e-12)


def test_listmle_learns_no_order_inside_a_tie_group():
    scores = torch.tensor([[0.3, 2.0, -1.0, 0.5]], dtype=torch.float64)
    rewards = torch.tensor([[1.0, 1.0, 0.0, 0.0]], dtype=torch.float64)
    swapped = scores[:, [1, 0, 3, 2]]  # each tie group's two items exchanged
    torch.testing.assert_close(listmle_loss(scores, rewards=rewards), listmle_loss(swapped, rewards=rewards))
    assert listmle_loss(scores[:, 2:], rewards=rewards[:, 2:]).item() == 0.0  # an all-tied list carries nothing
    assert listmle_loss(scores, rewards=rewards).item() != listmle_loss(swapped).item()  # without rewards: ordered


def test_unknown_loss_name_is_rejected():
    with pytest.raises(ValueError, match="expected one of"):
        get_loss("hinge")
