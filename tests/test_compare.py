"""larpo compare: finished runs side by side, with bootstrap intervals over prompts and plots."""

import json
import subprocess
import sys

import pytest

from larpo import config as C
from larpo.loop import run
from larpo.metrics import bootstrap_ci

from test_loop import SMALL


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    directory = tmp_path_factory.mktemp("compare")
    dirs = []
    for seed in (0, 1):
        d = directory / f"seed{seed}"
        run(C.load(None, [*SMALL, f"seed={seed}", "loop.iterations=1", "eval.samples=2", "eval.n_prompts=20"]), d,
            progress=False, log=lambda _: None)
        dirs.append(d)
    return directory, dirs


def test_compare_writes_a_table_with_each_runs_intervals_and_plots(two_runs):
    directory, dirs = two_runs
    out = directory / "cmp"
    proc = subprocess.run([sys.executable, "-m", "larpo.cli", "compare", *map(str, dirs), "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    table = (out / "compare.md").read_text()
    assert (out / "compare_iterations.png").is_file() and (out / "compare_pass_at_k.png").is_file()
    for d in dirs:
        summary = json.loads((d / "summary.json").read_text())
        row = next(line for line in table.splitlines() if line.startswith(f"| {d.name} |"))
        for block in ("sft", "final"):
            mean, low, high = bootstrap_ci(summary[block]["per_prompt"]["correct"])
            assert f"{mean:.3f} [{low:.3f}, {high:.3f}]" in row
        assert f"{summary['retriever']['final']['pass@1']:.3f} / {summary['retriever']['final']['pass@2']:.3f} (N=2)" in row
        assert row in proc.stdout


def test_compare_of_an_unfinished_run_is_a_one_line_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "larpo.cli", "compare", str(tmp_path)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"larpo: error: {tmp_path}: no summary.json; expected a finished larpo run directory"
