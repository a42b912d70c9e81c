"""List construction: selection, order, dedup, skipped ties, and the per-loss defaults."""

import pytest

from larpo.lists import Candidate, RankedList, build_list, build_lists, dedupe, list_sizes


def cands(rewards, prompt_id="p", responses=None, source="own"):
    responses = responses or [f"r{i}" for i in range(len(rewards))]
    return [Candidate(prompt_id, f"prompt {prompt_id}", resp, rew, 1.0, source) for resp, rew in zip(responses, rewards)]


def test_full_keeps_every_candidate_sorted_best_first():
    ranked = build_list(cands([0.2, 0.9, 0.5, 0.0]), "full")
    assert ranked.responses == ("r1", "r2", "r0", "r3")
    assert ranked.rewards == (0.9, 0.5, 0.2, 0.0)


def test_top_bottom_takes_the_best_and_the_worst():
    rewards = [0.1, 0.8, 0.3, 1.0, 0.0, 0.5, 0.6, 0.2, 0.9, 0.4]
    ranked = build_list(cands(rewards), "top_bottom", top=2, bottom=2)
    assert ranked.rewards == (1.0, 0.9, 0.1, 0.0)
    assert ranked.responses == ("r3", "r8", "r0", "r4")
    one_vs_three = build_list(cands(rewards), "top_bottom", top=1, bottom=3)
    assert one_vs_three.rewards == (1.0, 0.2, 0.1, 0.0)


def test_top_bottom_with_few_candidates_keeps_them_all():
    ranked = build_list(cands([0.0, 1.0, 0.5]), "top_bottom", top=2, bottom=2)
    assert ranked.rewards == (1.0, 0.5, 0.0)


def test_ties_keep_the_incoming_order():
    ranked = build_list(cands([1.0, 0.0, 1.0, 0.0]), "full")
    assert ranked.responses == ("r0", "r2", "r1", "r3")


def test_all_tied_prompt_is_skipped_and_counted():
    pool = cands([1.0, 1.0, 1.0], "a") + cands([1.0, 0.0], "b")
    lists, stats = build_lists(pool, "full")
    assert [rl.prompt_id for rl in lists] == ["b"]
    assert stats.skipped_tied == 1 and stats.lists == 1 and stats.items == 2


def test_top_only_selection_that_ties_is_skipped():
    assert build_list(cands([1.0, 1.0, 0.5, 0.0]), "top_bottom", top=2, bottom=0) is None


def test_identical_responses_are_deduplicated_per_prompt():
    pool = cands([1.0, 1.0, 0.0], "a", ["x", "x", "y"]) + cands([0.5], "b", ["x"])
    kept, dropped = dedupe(pool)
    assert dropped == 1 and [(c.prompt_id, c.response) for c in kept] == [("a", "x"), ("a", "y"), ("b", "x")]
    lists, stats = build_lists(pool, "full")
    assert stats.duplicates == 1 and lists[0].responses == ("x", "y")


def test_sources_are_kept_beside_the_items():
    pool = cands([1.0, 0.0], "a", ["good", "bad"]) + [Candidate("a", "prompt a", "other", 0.2, None, "random_prompt")]
    lists, stats = build_lists(pool, "full")
    assert lists[0].sources == ("own", "random_prompt", "own")
    assert stats.sources == {"own": 2, "random_prompt": 1}


@pytest.mark.parametrize("loss,expected", [("pairwise", (1, 1)), ("contrastive", (1, 3)), ("lambdarank", (2, 2)), ("listmle", (2, 2))])
def test_paper_list_sizes_per_loss(loss, expected):
    assert list_sizes(loss, None, None) == expected
    assert list_sizes(loss, 3, None) == (3, expected[1])


def test_ranked_list_row_round_trip_and_validation():
    ranked = build_list(cands([0.0, 1.0]), "full")
    assert RankedList.from_row(ranked.to_row()) == ranked
    with pytest.raises(ValueError, match="at least 2"):
        RankedList("p", "x", ("a",), (1.0,), ("own",))


def test_candidates_of_several_prompts_are_rejected_by_build_list():
    with pytest.raises(ValueError, match="one prompt"):
        build_list(cands([1.0], "a") + cands([0.0], "b"))


def sampled(rewards, finished, prompt_id="p"):
    """Candidates as the sampler makes them: each with its drawn ids and whether it reached EOS."""
    return [Candidate(prompt_id, "prompt", f"r{i}", rew, 1.0, "own", 0, (i, i + 1), fin)
            for i, (rew, fin) in enumerate(zip(rewards, finished))]


def test_unfinished_responses_are_kept_dropped_or_lowered_as_configured():
    pool = sampled([1.0, 0.9, 0.5, 0.2], [True, False, True, True])
    (kept,), stats = build_lists(pool, "full", unfinished="keep")
    assert kept.responses == ("r0", "r1", "r2", "r3") and kept.finished == (True, False, True, True)
    assert stats.unfinished == 1
    (dropped,), _ = build_lists(pool, "full", unfinished="drop")
    assert dropped.responses == ("r0", "r2", "r3")
    (lowered,), _ = build_lists(pool, "full", unfinished="lowest")
    assert lowered.responses == ("r0", "r2", "r1", "r3") and lowered.rewards == (1.0, 0.5, 0.2, 0.2)  # tied with the worst


def test_a_prompt_whose_finished_candidates_all_tie_is_skipped_when_unfinished_ones_are_dropped():
    lists, stats = build_lists(sampled([1.0, 0.0, 1.0], [True, False, True]), "full", unfinished="drop")
    assert lists == [] and stats.skipped_tied == 1


def test_a_finished_response_and_the_same_text_cut_at_the_limit_are_both_kept():
    finished, cut = sampled([1.0, 0.0], [True, False])
    kept, dropped = dedupe([finished, Candidate(**{**cut.to_row(), "response": "r0", "response_ids": (0, 1)}), finished])
    assert [c.finished for c in kept] == [True, False] and dropped == 1


def test_lists_keep_the_sampled_ids_through_their_rows():
    (ranked,), _ = build_lists(sampled([0.2, 0.9], [False, True]), "full")
    assert ranked.response_ids == ((1, 2), (0, 1)) and ranked.finished == (True, False)
    assert RankedList.from_row(ranked.to_row()) == ranked
    text_only = RankedList.from_row({k: v for k, v in ranked.to_row().items() if k not in ("response_ids", "finished")})
    assert text_only.response_ids is None and text_only.finished is None


def test_prompts_without_a_usable_hard_negative_are_counted_apart_from_tied_ones():
    own = cands([1.0, 0.5], "a") + cands([0.3, 0.3], "b")
    negatives = cands([0.9], "a", ["n0"], source="random_prompt")  # above a's second positive: not kept
    lists, stats = build_lists(own, "top_bottom", top=2, bottom=1, negatives=negatives)
    assert lists == [] and stats.skipped_no_negative == 2 and stats.skipped_tied == 0
