"""Reference policy across iterations, and hard-negative sources, through the real loop."""

import json

import pytest
import torch

from larpo import config as C
from larpo.io import read_jsonl
from larpo.loop import run
from larpo.reference import mix_weights

from test_loop import SMALL


def test_mix_at_half_is_the_midpoint_of_the_two_weight_sets():
    initial = {"w": torch.tensor([0.0, 2.0]), "b": torch.tensor([4.0]), "ids": torch.tensor([1, 2])}
    previous = {"w": torch.tensor([2.0, 4.0]), "b": torch.tensor([0.0]), "ids": torch.tensor([1, 2])}
    mixed = mix_weights(initial, previous, 0.5)
    assert mixed["w"].tolist() == [1.0, 3.0] and mixed["b"].tolist() == [2.0] and mixed["ids"].tolist() == [1, 2]
    assert mix_weights(initial, previous, 1.0)["w"].tolist() == [0.0, 2.0]
    with pytest.raises(ValueError, match="different parameters"):
        mix_weights({"w": torch.zeros(1)}, {"v": torch.zeros(1)}, 0.5)


def first_step_margins(run_dir):
    rows = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r["stage"] == "train" and r["step"] == 1]
    return {r["iteration"]: r["margin"] for r in rows}


@pytest.fixture(scope="module")
def initial_reference_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    cfg = C.load(None, [*SMALL, "train.reference=initial", "lists.negatives=similar_prompt", "lists.memorization=none",
                        "model.max_prompt_tokens=5"])
    run(cfg, out, progress=False, log=lambda _: None)
    return out


def test_initial_reference_keeps_the_sft_policy_across_iterations(initial_reference_run):
    margins = first_step_margins(initial_reference_run)
    assert abs(margins[0]) < 1e-5  # iteration 1: the policy still is the SFT policy
    assert abs(margins[1]) > 1e-3  # iteration 2: γ measures the drift from SFT, not from iteration 1


def test_previous_reference_restarts_at_zero_every_iteration(tmp_path):
    cfg = C.load(None, [*SMALL, "lists.memorization=none", "eval.samples=0"])
    run(cfg, tmp_path / "run", progress=False, log=lambda _: None)
    assert all(abs(m) < 1e-5 for m in first_step_margins(tmp_path / "run").values())


def test_similar_prompt_negatives_are_rescored_and_rank_below_every_positive(initial_reference_run):
    negatives = read_jsonl(initial_reference_run / "iter_0" / "negatives.jsonl")
    assert negatives and {n["source"] for n in negatives} == {"similar_prompt"}
    prompts = {n["prompt_id"]: n["prompt"] for n in read_jsonl(initial_reference_run / "iter_0" / "candidates.jsonl")}
    assert all(prompts[n["prompt_id"]] == n["prompt"] for n in negatives)  # addressed to this prompt
    lists = read_jsonl(initial_reference_run / "iter_0" / "lists.jsonl")
    stats = json.loads((initial_reference_run / "iter_0" / "lists_stats.json").read_text())
    assert lists and stats["sources"].get("similar_prompt", 0) > 0
    for row in lists:
        own = [w for w, s in zip(row["rewards"], row["sources"]) if s == "own"]
        borrowed = [w for w, s in zip(row["rewards"], row["sources"]) if s == "similar_prompt"]
        assert own and borrowed and max(borrowed) < min(own)


def test_truncated_encodings_are_counted_per_iteration(initial_reference_run):
    rows = [r for r in read_jsonl(initial_reference_run / "metrics.jsonl") if r["stage"] == "truncation"]
    assert [r["iteration"] for r in rows] == [0, 1]
    assert all(r["truncated_prompt_encodings"] > 0 and r["truncated_response_encodings"] == 0 for r in rows)
