"""Hard-negative sources on a hand-made candidate pool."""

import math

import pytest

from larpo.lists import Candidate, build_lists, list_with_negatives
from larpo.negatives import borrowed, random_partners, similar_partners


def cand(pid, prompt, response, reward, source="own", temperature=1.0):
    return Candidate(pid, prompt, response, reward, temperature, source, 0)


POOL = [
    cand("a", "37+48=", "85", 1.0), cand("a", "37+48=", "84", 0.5), cand("a", "37+48=", "14", 0.0),
    cand("b", "37+41=", "78", 1.0), cand("b", "37+41=", "77", 0.5),
    cand("c", "90+12=", "102", 1.0), cand("c", "90+12=", "112", 0.67),
]


def test_similar_partner_is_the_nearest_other_prompt():
    partners = similar_partners({"a": "37+48=", "b": "37+41=", "c": "90+12="})
    assert partners["a"] == "b" and partners["b"] == "a"
    assert all(p != q for p, q in partners.items())


def test_random_partners_are_other_prompts_and_seeded():
    ids = [f"p{i}" for i in range(20)]
    partners = random_partners(ids, seed=1)
    assert all(partners[p] != p and partners[p] in ids for p in ids)
    assert partners == random_partners(ids, seed=1) and partners != random_partners(ids, seed=2)
    with pytest.raises(ValueError):
        random_partners(["only"], seed=0)


def test_borrowed_responses_are_the_partners_best_addressed_to_this_prompt_and_unscored():
    negatives = borrowed(POOL, {"a": "b", "b": "a", "c": "a"}, "similar_prompt", per_prompt=1)
    by_prompt = {c.prompt_id: c for c in negatives}
    assert by_prompt["a"].response == "78" and by_prompt["a"].prompt == "37+48="
    assert by_prompt["c"].response == "85" and by_prompt["c"].prompt == "90+12="
    assert all(c.source == "similar_prompt" and math.isnan(c.reward) for c in negatives)


def test_negatives_rank_below_every_positive_and_keep_their_source():
    own = [c for c in POOL if c.prompt_id == "a"]
    negatives = [
        cand("a", "37+48=", "78", 0.5, "similar_prompt"),   # ties the second positive: not a negative
        cand("a", "37+48=", "77", 0.0, "similar_prompt"),
        cand("a", "37+48=", "12", 0.25, "similar_prompt"),
        cand("a", "37+48=", "85", 0.0, "similar_prompt"),   # the positive's own text: never a negative
    ]
    ranked = list_with_negatives(own, negatives, top=2, bottom=2)
    assert ranked.responses == ("85", "84", "12", "77")
    assert ranked.sources == ("own", "own", "similar_prompt", "similar_prompt")
    assert max(ranked.rewards[2:]) < min(ranked.rewards[:2])


def test_no_usable_negative_means_no_list():
    own = [cand("a", "37+48=", "85", 1.0)]
    assert list_with_negatives(own, [cand("a", "37+48=", "86", 1.0, "random_prompt")], top=1, bottom=3) is None


def test_low_temperature_negatives_come_from_their_own_samples():
    own = [c for c in POOL if c.prompt_id == "c"]
    extra = [cand("c", "90+12=", r, w, "own_low_temperature", 0.3) for r, w in [("102", 1.0), ("103", 0.67), ("100", 0.33)]]
    ranked = list_with_negatives(own, extra, top=1, bottom=3)
    assert ranked.responses == ("102", "103", "100")
    assert ranked.sources[1:] == ("own_low_temperature", "own_low_temperature")


def test_build_lists_with_negatives_skips_prompts_without_a_usable_negative():
    negatives = [cand("a", "37+48=", "12", 0.0, "random_prompt"), cand("b", "37+41=", "78", 1.0, "random_prompt")]
    lists, stats = build_lists(POOL, "top_bottom", top=1, bottom=1, negatives=negatives)
    assert [rl.prompt_id for rl in lists] == ["a"] and lists[0].responses == ("85", "12")
    assert stats.skipped_no_negative == 2 and stats.skipped_tied == 0 and stats.sources == {"own": 1, "random_prompt": 1}
