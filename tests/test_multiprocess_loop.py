"""The whole loop on two processes (torchrun, gloo on the CPU) against the same config on one."""

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from larpo.io import read_jsonl

from conftest import cpu_process_env
from test_loop import write_small_config


def files(run_dir: Path) -> set[str]:
    return {str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(one-process run dir, two-process run dir, the two-process command's stdout)."""
    directory = tmp_path_factory.mktemp("multiprocess")
    config = write_small_config(directory, ["loop.iterations=1"])
    one, two = directory / "one", directory / "two"
    command = ["-m", "larpo.cli", "run", "--quiet", "--config", str(config), "--out"]
    for launcher, out in (([], one), (["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"], two)):
        # both on the CPU, which every machine has: gloo ranks, and one process drawing what they draw
        proc = subprocess.run([sys.executable, *launcher, *command, str(out)], env=cpu_process_env(), capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    return one, two, proc.stdout


def test_two_processes_leave_the_same_files_written_once(runs):
    one, two, stdout = runs
    assert files(two) == files(one)
    assert not [name for name in files(two) if name.endswith(".tmp")]
    assert stdout.count("held-out (greedy)") == 1  # one summary table: only the main process reports


def test_two_processes_sample_exactly_the_single_process_candidates(runs):
    one, two, _ = runs
    got = read_jsonl(two / "iter_0" / "candidates.jsonl")
    assert got == read_jsonl(one / "iter_0" / "candidates.jsonl")
    assert set(Counter(r["prompt_id"] for r in got).values()) == {4} and len(got) == 16 * 4  # K per pool prompt
    for name in ("iter_0/lists.jsonl", "iter_0/lists_stats.json", "eval_sft.json", "sft/model.safetensors"):
        assert (two / name).read_bytes() == (one / name).read_bytes(), name


def test_two_processes_train_as_one_process_does(runs):
    one, two, _ = runs
    want = [r for r in read_jsonl(one / "metrics.jsonl") if r["stage"] == "train"]
    got = [r for r in read_jsonl(two / "metrics.jsonl") if r["stage"] == "train"]
    assert len(got) == len(want) > 0
    for a, b in zip(got, want):
        assert (a["epoch"], a["step"]) == (b["epoch"], b["step"])
        assert abs(a["loss"] - b["loss"]) <= 1e-4
    summary = json.loads((two / "summary.json").read_text())
    assert summary["sft"] == json.loads((one / "summary.json").read_text())["sft"]


def test_two_processes_save_the_policy_one_process_trains(runs):
    from safetensors.torch import load_file

    one, two, _ = runs
    got = load_file(two / "iter_0" / "policy" / "model.safetensors")
    want = load_file(one / "iter_0" / "policy" / "model.safetensors")
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=1e-5, rtol=1e-4)
