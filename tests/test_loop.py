"""The whole method end to end on a very small config: files, finite metrics, memorization, resume."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from larpo import config as C
from larpo.io import read_jsonl
from larpo.lists import RankedList
from larpo.loop import best_on_validation, run

SMALL = [
    "seed=3",
    "task.digits=2", "task.n_train=400", "task.n_eval=40",
    "model.hidden_size=32", "model.num_layers=2", "model.num_heads=2", "model.intermediate_size=64",
    "sft.max_steps=60", "sft.eval_every=30", "sft.eval_prompts=20", "sft.batch_size=32",
    "sampling.k=4", "sampling.max_new_tokens=4", "sampling.draw=multinomial",  # the non-default draw, end to end
    "train.lr=1e-3", "train.epochs=1", "train.batch_size=4", "train.micro_batch_size=4",
    "loop.iterations=2", "loop.prompts_per_iteration=16",
    "lists.memorization=all", "eval.n_prompts=40",
]


def write_small_config(directory: Path, extra: list[str] = ()) -> Path:
    path = directory / "small.yaml"
    path.write_text(C.dump(C.load(None, [*SMALL, *extra])))
    return path


def run_cli(config: Path, out: Path, **kw) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "larpo.cli", "run", "--quiet", "--config", str(config), "--out", str(out)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw,
    )


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """An uninterrupted CLI run of the small config."""
    directory = tmp_path_factory.mktemp("loop")
    config = write_small_config(directory)
    proc = run_cli(config, directory / "run")
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    return config, directory / "run", out


def test_a_run_leaves_every_promised_file(small_run):
    _, run_dir, _ = small_run
    for name in ["config.yaml", "sft/config.json", "sft/model.safetensors", "eval_sft.json", "eval_sft.responses.jsonl",
                 "metrics.jsonl", "validation.json",
                 "summary.json", "report.md", "plots/heldout.png", "plots/training.png", "plots/rewards.png"]:
        assert (run_dir / name).is_file(), name
    for s in (0, 1):
        for name in ["candidates.jsonl", "lists.jsonl", "lists_stats.json", "eval.json", "policy/model.safetensors"]:
            assert (run_dir / f"iter_{s}" / name).is_file(), (s, name)
    assert C.load(run_dir / "config.yaml") == C.load(None, SMALL)
    for name in ("retriever_eval_sft.json", "retriever_eval_final.json"):  # the run's draw, in its evaluation too
        assert json.loads((run_dir / name).read_text())["settings"]["draw"] == "multinomial", name


def test_summary_has_the_paired_difference_the_stage_times_and_the_responses(small_run):
    _, run_dir, stdout = small_run
    summary = json.loads((run_dir / "summary.json").read_text())
    from larpo.metrics import bootstrap_ci

    sft, final = summary["sft"]["per_prompt"]["correct"], summary["final"]["per_prompt"]["correct"]
    mean, low, high = bootstrap_ci([b - a for a, b in zip(sft, final)])
    assert summary["difference"]["exact_accuracy"] == {"mean": mean, "low": low, "high": high, "n_prompts": 40}
    assert f"[{low:+.3f}, {high:+.3f}]" in next(line for line in stdout.splitlines() if line.startswith("exact_accuracy"))
    assert set(summary["stage_seconds"]) == {"initial policy", "greedy evaluation", "sampling and scoring", "lists",
                                             "training", "validation evaluation", "retriever evaluation (initial)",
                                             "retriever evaluation (final)"}
    assert all(v > 0 for v in summary["stage_seconds"].values())
    report = (run_dir / "report.md").read_text()
    assert "## Time per stage" in report and "| training | 2 |" in report and "paired 95% bootstrap interval" in report
    for evaluation in ("eval_sft", "iter_0/eval", "iter_1/eval"):
        rows = read_jsonl(run_dir / f"{evaluation}.responses.jsonl")
        per_prompt = json.loads((run_dir / f"{evaluation}.json").read_text())["per_prompt"]
        assert len(rows) == 40 and [r["reward"] for r in rows] == per_prompt["reward"]
        assert set(rows[0]) == {"prompt_id", "prompt", "response", "reward", "correct"}


def test_the_validation_split_is_scored_apart_from_the_held_out_prompts(small_run):
    _, run_dir, _ = small_run
    from larpo.metrics import paired_difference
    from larpo.preflight import data_splits
    from larpo.tasks import build_task

    cfg = C.load(run_dir / "config.yaml")
    sft_train, validation, pool, held_out = data_splits(build_task(cfg.task), cfg)
    prompts = {name: {ex.prompt for ex in split} for name, split in
               (("sft_train", sft_train), ("validation", validation), ("pool", pool), ("held_out", held_out))}
    assert len(prompts["validation"]) == 20
    assert not prompts["validation"] & (prompts["sft_train"] | prompts["held_out"]) and not prompts["held_out"] & prompts["pool"]
    summary = json.loads((run_dir / "summary.json").read_text())
    block = json.loads((run_dir / "validation.json").read_text())
    assert summary["validation"] == block and block["initial"]["n_prompts"] == block["final"]["n_prompts"] == 20
    last_sft = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r["stage"] == "sft"][-1]
    assert block["initial"]["exact_accuracy"] == last_sft["val_accuracy"]  # the policy SFT stopped with, on its prompts
    assert block["difference"]["exact_accuracy"] == paired_difference(block["initial"], block["final"], "correct")
    per_policy = [json.loads((run_dir / name).read_text())
                  for name in ("validation_sft.json", "iter_0/validation.json", "iter_1/validation.json")]
    assert block["initial"] == per_policy[0] and block["final"] == per_policy[2]  # select=last: the last iteration
    assert block["per_policy"] == [{k: v for k, v in p.items() if k != "per_prompt"} for p in per_policy]
    assert summary["final_policy"] == 2 and summary["final"] == summary["per_policy"][2]


@pytest.mark.parametrize("accuracy, chosen", [
    ([0.9, 0.2, 0.5, 0.4], 2),  # the initial policy is never chosen
    ([0.1, 0.5, 0.3, 0.5], 1),  # ties: the earliest
    ([0.1, 0.2, 0.3, 0.6], 3),
    ([0.0, 0.0], 1),
])
def test_best_on_validation_picks_the_earliest_best_iteration(accuracy, chosen):
    assert best_on_validation(accuracy) == chosen


def test_select_validation_reports_the_iteration_best_on_validation(tmp_path):
    """lr 1.0 wrecks the policy in the first iteration, so the later one can do no better on
    validation and the first is chosen: the final block is that iteration's, not the last one's."""
    from larpo.metrics import differences

    cfg = C.load(write_small_config(tmp_path, ["loop.select=validation", "train.lr=1.0", "eval.samples=0"]))
    summary = run(cfg, tmp_path / "run", progress=False, log=lambda _: None)
    accuracy = [p["exact_accuracy"] for p in summary["validation"]["per_policy"]]
    assert summary["final_policy"] == best_on_validation(accuracy) == 1
    assert summary["final"] == summary["per_policy"][1] != summary["per_policy"][2]
    assert summary["difference"] == differences(summary["sft"], summary["per_policy"][1])
    validation = json.loads((tmp_path / "run" / "validation.json").read_text())
    assert validation["final"] == json.loads((tmp_path / "run" / "iter_0" / "validation.json").read_text())


def test_summary_has_finite_sft_and_final_blocks(small_run):
    _, run_dir, stdout = small_run
    summary = json.loads((run_dir / "summary.json").read_text())
    for block in ("sft", "final"):
        for key in ("exact_accuracy", "gold_reward"):
            assert 0.0 <= summary[block][key] <= 1.0 and math.isfinite(summary[block][key])
    assert len(summary["per_policy"]) == 3 and summary["wall_seconds"] > 0
    assert "exact_accuracy" in stdout and "gold_reward" in stdout  # the closing table


def test_metrics_rows_are_finite_and_cover_every_stage(small_run):
    _, run_dir, _ = small_run
    rows = read_jsonl(run_dir / "metrics.jsonl")
    train = [r for r in rows if r["stage"] == "train"]
    assert {r["iteration"] for r in train} == {0, 1}
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in train)
    assert sorted(r["policy"] for r in rows if r["stage"] == "eval") == [0, 1, 2]
    assert any(r["stage"] == "sft" for r in rows)


def test_candidates_have_k_samples_per_prompt_and_full_records(small_run):
    _, run_dir, _ = small_run
    rows = read_jsonl(run_dir / "iter_0" / "candidates.jsonl")
    assert len(rows) == 16 * 4
    assert set(rows[0]) == {"prompt_id", "prompt", "response", "reward", "temperature", "source", "iteration",
                            "response_ids", "finished"}
    assert {r["iteration"] for r in rows} == {0}


def test_lists_train_on_the_sampled_ids_with_eos_only_where_the_policy_stopped(small_run):
    _, run_dir, _ = small_run
    from larpo.models import load_policy
    from larpo.trainer import encode_lists

    candidates = read_jsonl(run_dir / "iter_0" / "candidates.jsonl")
    assert {r["finished"] for r in candidates} == {True, False}  # max_new_tokens=4 cuts some samples
    sampled = {(r["prompt_id"], tuple(r["response_ids"]), r["finished"]) for r in candidates}
    lists = [RankedList.from_row(r) for r in read_jsonl(run_dir / "iter_0" / "lists.jsonl")]
    _, tokenizer = load_policy(run_dir / "sft")
    eos = tokenizer.eos_token_id
    for rl, encoded in zip(lists, encode_lists(tokenizer, lists)):
        for ids, finished, trained in zip(rl.response_ids, rl.finished, encoded.response_ids):
            assert (rl.prompt_id, ids, finished) in sampled
            assert trained == list(ids) + [eos] if finished else trained == list(ids)


def test_memorization_merges_earlier_candidates(small_run):
    _, run_dir, _ = small_run
    stats = json.loads((run_dir / "iter_1" / "lists_stats.json").read_text())
    assert stats["remembered"] == 16 * 4
    lists = [RankedList.from_row(r) for r in read_jsonl(run_dir / "iter_1" / "lists.jsonl")]
    earlier = {(r["prompt_id"], r["response"]) for r in read_jsonl(run_dir / "iter_0" / "candidates.jsonl")}
    current = {(r["prompt_id"], r["response"]) for r in read_jsonl(run_dir / "iter_1" / "candidates.jsonl")}
    items = {(rl.prompt_id, resp) for rl in lists for resp in rl.responses}
    assert items & (earlier - current), "no remembered response made it into a list"
    for rl in lists:
        assert list(rl.rewards) == sorted(rl.rewards, reverse=True)


def test_rerunning_a_finished_run_does_no_work_and_gives_the_same_summary(small_run):
    config, run_dir, _ = small_run
    before = json.loads((run_dir / "summary.json").read_text())
    mtime = (run_dir / "iter_1" / "policy" / "model.safetensors").stat().st_mtime
    summary = run(C.load(config), run_dir, progress=False, log=lambda _: None)
    assert (run_dir / "iter_1" / "policy" / "model.safetensors").stat().st_mtime == mtime
    assert summary["per_policy"] == before["per_policy"]


def test_a_different_config_in_the_same_directory_is_refused(small_run):
    config, run_dir, _ = small_run
    with pytest.raises(C.ConfigError, match="different config"):
        run(C.load(config, ["train.beta=0.2"]), run_dir, progress=False, log=lambda _: None)


def test_report_command_regenerates_the_report(small_run):
    _, run_dir, _ = small_run
    (run_dir / "report.md").unlink()
    proc = subprocess.run([sys.executable, "-m", "larpo.cli", "report", str(run_dir)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    text = (run_dir / "report.md").read_text()
    assert "| SFT |" in text and "plots/heldout.png" in text


def test_sft_command_builds_the_initial_policy_that_a_later_run_reuses(small_run, tmp_path):
    config, reference, _ = small_run
    out = tmp_path / "sft-only"
    proc = subprocess.run([sys.executable, "-m", "larpo.cli", "sft", "--quiet", "--config", str(config), "--out", str(out)],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    scores = json.loads((out / "eval_sft.json").read_text())
    assert f"held-out exact accuracy {scores['exact_accuracy']:.3f}" in proc.stdout
    assert scores == json.loads((reference / "eval_sft.json").read_text())  # the same SFT as a full run's
    assert not any(out.glob("iter_*"))
    mtime = (out / "sft" / "model.safetensors").stat().st_mtime
    summary = run(C.load(config), out, progress=False, log=lambda _: None)
    assert (out / "sft" / "model.safetensors").stat().st_mtime == mtime  # reused, not retrained
    assert summary["sft"] == scores
