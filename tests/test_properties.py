"""Property-based tests (hypothesis): the ranking losses and list building on random inputs."""

from collections import defaultdict

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from larpo.lists import Candidate, build_lists, handle_unfinished
from larpo.losses import LOSSES, get_loss

settings.register_profile("larpo", max_examples=60, deadline=None, derandomize=True)
settings.load_profile("larpo")

FINITE = st.floats(min_value=-30, max_value=30, allow_nan=False, allow_infinity=False)
LEVELS = st.integers(min_value=0, max_value=3)  # few reward levels, so ties are common


EIGHTHS = st.integers(-240, 240).map(lambda x: x / 8)  # exact in float64, even after an integer shift


@st.composite
def ranked_list(draw, min_size=2, max_size=7, values=FINITE):
    """(scores [m], rewards [m]) with rewards sorted best first, as every loss expects."""
    m = draw(st.integers(min_size, max_size))
    scores = draw(st.lists(values, min_size=m, max_size=m))
    rewards = sorted(draw(st.lists(LEVELS, min_size=m, max_size=m)), reverse=True)
    return torch.tensor([scores], dtype=torch.float64), torch.tensor([rewards], dtype=torch.float64)


def loss(name, scores, rewards, mask=None):
    kwargs = {"weighting": "lipo"} if name == "lambdarank-lipo" else {}
    fn = get_loss("lambdarank" if name == "lambdarank-lipo" else name)
    return fn(scores, mask, rewards, **kwargs)


NAMES = [*LOSSES, "lambdarank-lipo"]


@given(ranked_list(values=EIGHTHS), st.sampled_from(NAMES), st.integers(-30, 30))
def test_adding_a_constant_to_every_score_changes_no_loss(data, name, shift):
    """Exact shifts, so that ties among scores (which LiPO's ranks see) neither appear nor vanish by rounding."""
    scores, rewards = data
    torch.testing.assert_close(loss(name, scores + shift, rewards), loss(name, scores, rewards), rtol=1e-9, atol=1e-9)


@given(ranked_list(), st.sampled_from(NAMES), st.integers(1, 4), st.data())
def test_masked_columns_of_any_value_change_no_loss(data, name, extra, draw):
    scores, rewards = data
    junk = torch.tensor([draw.draw(st.lists(FINITE, min_size=extra, max_size=extra))], dtype=torch.float64)
    mask = torch.cat([torch.ones_like(scores, dtype=torch.bool), torch.zeros_like(junk, dtype=torch.bool)], 1)
    wide = loss(name, torch.cat([scores, junk], 1), torch.cat([rewards, junk], 1), mask)
    torch.testing.assert_close(wide, loss(name, scores, rewards), rtol=1e-12, atol=1e-12)


@given(ranked_list(), st.sampled_from(NAMES))
def test_every_loss_is_non_negative_and_finite(data, name):
    value = loss(name, *data)
    assert torch.isfinite(value).all() and (value >= -1e-12).all()


def _permute_within(rewards: list[float], groups_allowed, rng) -> list[int]:
    """A permutation of positions that only moves items within a tie group (restricted by groups_allowed)."""
    by_level = defaultdict(list)
    for i, r in enumerate(rewards):
        if groups_allowed(i):
            by_level[r].append(i)
    order = list(range(len(rewards)))
    for positions in by_level.values():
        shuffled = positions[:]
        rng.shuffle(shuffled)
        for src, dst in zip(positions, shuffled):
            order[src] = dst
    return order


@given(ranked_list(), st.sampled_from(["lambdarank", "listmle", "lambdarank-lipo"]), st.randoms(use_true_random=False))
def test_listwise_losses_learn_no_order_inside_a_tie_group(data, name, rng):
    scores, rewards = data
    order = _permute_within(rewards[0].tolist(), lambda i: True, rng)
    torch.testing.assert_close(loss(name, scores[:, order], rewards), loss(name, scores, rewards), rtol=1e-9, atol=1e-9)


@given(ranked_list(), st.randoms(use_true_random=False))
def test_contrastive_loss_does_not_depend_on_the_order_of_its_negatives(data, rng):
    scores, rewards = data
    rest = list(range(1, scores.shape[1]))
    rng.shuffle(rest)
    order = [0, *rest]
    torch.testing.assert_close(loss("contrastive", scores[:, order], rewards[:, order]), loss("contrastive", scores, rewards),
                               rtol=1e-9, atol=1e-9)


@given(st.lists(st.tuples(FINITE, FINITE), min_size=1, max_size=8), st.sampled_from(list(LOSSES)))
def test_two_item_lists_give_the_dpo_loss(pairs, name):
    """The four losses as printed (LiPO weights scale a pair by Δ, so they are not DPO)."""
    scores = torch.tensor(pairs, dtype=torch.float64)
    rewards = torch.tensor([[1.0, 0.0]] * len(pairs), dtype=torch.float64)
    dpo = -torch.nn.functional.logsigmoid(scores[:, 0] - scores[:, 1])
    torch.testing.assert_close(loss(name, scores, rewards), dpo, rtol=1e-9, atol=1e-9)


# ---------------------------------------------------------------------------------------------
# list building

CANDIDATE = st.tuples(st.sampled_from("abc"), st.sampled_from(["x", "y", "z", "w", "v"]), LEVELS, st.booleans())


def candidates(rows) -> list[Candidate]:
    return [Candidate(pid, f"prompt {pid}", text, float(level), 1.0, "own", 0, tuple(map(ord, text)), finished)
            for pid, text, level, finished in rows]


@given(st.lists(CANDIDATE, max_size=30), st.sampled_from(["full", "top_bottom"]), st.integers(1, 3), st.integers(0, 3),
       st.sampled_from(["keep", "drop", "lowest"]))
def test_built_lists_are_ranked_distinct_informative_and_account_for_every_prompt(rows, strategy, top, bottom, unfinished):
    pool = candidates(rows)
    lists, stats = build_lists(pool, strategy, top, bottom, unfinished=unfinished)
    assert stats.lists + stats.skipped_tied == len({c.prompt_id for c in pool})
    assert stats.unfinished == len({(c.prompt_id, c.response) for c in pool if not c.finished})  # after deduplication
    for rl in lists:
        own = [c for c in pool if c.prompt_id == rl.prompt_id]
        floor = min(c.reward for c in own)
        assert list(rl.rewards) == sorted(rl.rewards, reverse=True) and len(set(rl.rewards)) > 1
        items = list(zip(rl.responses, rl.finished))
        assert len(items) == len(set(items))  # no duplicate training sequence
        if strategy == "top_bottom":
            assert len(items) <= max(top + bottom, 2) or len(items) == len(set((c.response, c.finished) for c in own))
        for response, finished, reward in zip(rl.responses, rl.finished, rl.rewards):
            source = [c for c in own if (c.response, c.finished) == (response, finished)]
            assert source, "a list item that is not one of the prompt's candidates"
            assert unfinished != "drop" or finished
            expected = floor if (unfinished == "lowest" and not finished) else source[0].reward
            assert reward == expected


@given(st.lists(CANDIDATE, min_size=1, max_size=20), st.lists(CANDIDATE, max_size=20), st.integers(1, 3), st.integers(1, 3))
def test_hard_negatives_always_rank_below_every_positive(own_rows, negative_rows, top, bottom):
    own = candidates(own_rows)
    negatives = [Candidate(**{**c.to_row(), "source": "random_prompt", "response": "n" + c.response}) for c in candidates(negative_rows)]
    lists, stats = build_lists(own, "top_bottom", top, bottom, negatives=negatives)
    assert stats.lists + stats.skipped_tied + stats.skipped_no_negative == len({c.prompt_id for c in own})
    for rl in lists:
        positives = [r for r, s in zip(rl.rewards, rl.sources) if s == "own"]
        negative = [r for r, s in zip(rl.rewards, rl.sources) if s != "own"]
        assert 1 <= len(positives) <= top and 1 <= len(negative) <= bottom
        assert max(negative) < min(positives)


@given(st.lists(CANDIDATE, max_size=12), FINITE)
def test_handling_unfinished_candidates_never_touches_finished_ones(rows, floor):
    pool = candidates(rows)
    for mode in ("keep", "drop", "lowest"):
        handled = handle_unfinished(pool, mode, floor)
        assert [c for c in handled if c.finished] == [c for c in pool if c.finished]
