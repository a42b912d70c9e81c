"""larpo sweep: grid files, shared SFT, resume of a stopped sweep, intervals and paired tests."""

import json
import shutil
import subprocess
import sys
import time

import pytest
import yaml

from larpo.config import ConfigError
from larpo.sweep import run_grid
from larpo.sweep_grid import load_grid
from larpo.sweep_stats import mean_interval, paired_test

from test_loop import SMALL

GRID = {
    "name": "lr",
    "overrides": [*SMALL, "loop.iterations=1", "eval.samples=0"],
    "seeds": [0, 1],
    "baseline": "base",
    "cells": {"base": [], "fast": ["train.lr=3e-3"], "same-as-base": ["train.lr=1e-3"]},
}


def write_grid(directory, grid=GRID):
    path = directory / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    directory = tmp_path_factory.mktemp("sweep")
    grid = load_grid(write_grid(directory))
    return grid, directory / "out", run_grid(grid, directory / "out", progress=False)


def test_equal_configs_run_once_and_sft_is_shared_per_seed(finished):
    _, out, results = finished
    index = json.loads((out / "lr-index.json").read_text())
    assert index["same-as-base"] == index["base"]  # SMALL already has train.lr=1e-3
    assert len(list((out / "runs").iterdir())) == 4  # 2 distinct configs x 2 seeds
    assert len(list((out / "sft-cache").iterdir())) == 2  # one SFT per seed, shared by the cells
    for entry in (out / "sft-cache").iterdir():  # with its evaluations, on held-out and validation prompts
        assert {p.name for p in entry.iterdir()} == {"sft", "eval_sft.json", "eval_sft.responses.jsonl", "validation_sft.json"}
    assert set(results["cells"]) == {"base", "fast", "same-as-base"}


def test_results_hold_intervals_and_paired_tests_against_the_baseline(finished):
    _, out, results = finished
    fast = results["cells"]["fast"]
    mean, lo, hi = fast["summary"]["final.exact_accuracy"]
    assert lo <= mean <= hi and len(fast["values"]["final.exact_accuracy"]) == 2
    assert "p_seeds" in fast["vs_baseline"]["final.gold_reward"] and "p_prompts" in fast["vs_baseline"]["final.gold_reward"]
    text = (out / "lr.md").read_text()
    assert "| fast |" in text and "baseline" in text and (out / "lr.png").is_file()


def test_a_stopped_sweep_resumes_without_rerunning_a_finished_cell(finished, tmp_path):
    """The finished sweep cut back to one finished cell (what a kill after it leaves; real kills of a run:
    test_reliability.py), resumed: that cell is not run again and every cell's results are the finished ones."""
    grid, done, want = finished
    want = json.loads(json.dumps(want))  # as written to results.json
    out = tmp_path / "out"
    shutil.copytree(done, out, ignore=shutil.ignore_patterns("lr.*", "lr-index.json"))
    kept, *dropped = sorted((out / "runs").iterdir())
    for run_dir in dropped:
        shutil.rmtree(run_dir)
    mtime = (kept / "summary.json").stat().st_mtime_ns
    run_grid(grid, out, progress=False)
    assert (kept / "summary.json").stat().st_mtime_ns == mtime  # the finished cell did not run again
    assert all((d / "summary.json").is_file() for d in dropped)
    got = json.loads((out / "lr.json").read_text())
    for cell, row in want["cells"].items():
        assert got["cells"][cell]["values"] == row["values"]
        assert got["cells"][cell]["summary"] == row["summary"]


def test_mean_interval_and_paired_test_on_hand_computed_cases():
    mean, lo, hi = mean_interval([1.0, 2.0, 3.0])
    # sd = 1, t(0.975, 2) = 4.302653, half-width = 4.302653 / sqrt(3) = 2.484138
    assert mean == 2.0 and abs(lo - (2.0 - 2.484138)) < 1e-5 and abs(hi - (2.0 + 2.484138)) < 1e-5
    assert mean_interval([5.0]) == (5.0, 5.0, 5.0)
    # differences 1, 2, 2: mean 5/3, sd 0.57735, t = 5.0 with 2 degrees of freedom, p = 0.037749
    assert abs(paired_test([1.0, 2.0, 3.0], [0.0, 0.0, 1.0]) - 0.037749) < 1e-5
    assert paired_test([1.0, 2.0], [1.0, 2.0]) is None


def test_bad_grid_files_name_the_problem(tmp_path):
    for grid, message in [
        ({**GRID, "baseline": "nope"}, "baseline: 'nope' is not one of the cells"),
        ({**GRID, "seeds": []}, "seeds: expected a non-empty list"),
        ({**GRID, "baseline": None, "cells": {"x": ["train.loss=hinge"]}}, "cell 'x': train.loss: got 'hinge'"),
        ({**GRID, "colour": 1}, "colour: unknown key"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_grid(write_grid(tmp_path, grid))


RACER = """
import sys, time
from larpo.runlock import RunDirectoryBusy, run_dir_lock
run_dir, log = sys.argv[1], sys.argv[2]
start = float(sys.argv[3])
while time.time() < start:
    pass
try:
    with run_dir_lock(run_dir):
        open(log, "a").write(f"got {time.time()}\\n")
        time.sleep(1.5)
        open(log, "a").write(f"done {time.time()}\\n")
except RunDirectoryBusy as e:
    open(log, "a").write(f"busy {e}\\n")
"""


def test_two_processes_racing_for_one_run_directory_never_both_hold_it(tmp_path):
    start = time.time() + 2.0  # both start trying at the same instant
    log = tmp_path / "log"
    procs = [subprocess.Popen([sys.executable, "-c", RACER, str(tmp_path / "run"), str(log), str(start)])
             for _ in range(2)]
    assert all(p.wait(timeout=60) == 0 for p in procs)
    lines = log.read_text().splitlines()
    assert sorted(line.split()[0] for line in lines) == ["busy", "done", "got"]
    busy = next(line for line in lines if line.startswith("busy"))
    assert "in use by another larpo process (pid " in busy and str(tmp_path / "run") in busy


def test_a_killed_holder_leaves_no_claim_and_the_lock_is_reentrant_in_one_process(tmp_path):
    from larpo.runlock import RunDirectoryBusy, run_dir_lock

    holder = subprocess.Popen([sys.executable, "-c", RACER, str(tmp_path / "run"), str(tmp_path / "log"), "0"])
    while not (tmp_path / "log").exists():
        time.sleep(0.05)
    with pytest.raises(RunDirectoryBusy, match=f"pid {holder.pid}"):
        with run_dir_lock(tmp_path / "run"):
            pass
    holder.kill()
    holder.wait()
    with run_dir_lock(tmp_path / "run"):  # the OS released the dead holder's lock
        with run_dir_lock(tmp_path / "run"):  # nested in one process: no self-deadlock
            pass


def test_every_tiny_model_ablation_grid_loads_and_shares_the_default_cell():
    from pathlib import Path

    from larpo.sweep import cell_config, run_key

    paths = sorted((Path(__file__).parent.parent / "configs" / "ablations").glob("*.yaml"))
    # smollm2_*: a test below; sft_stop, beta_lr: the embedded default itself, not the ablation cell (the next test)
    grids = [load_grid(p) for p in paths if not p.name.startswith("smollm2_") and p.name not in ("sft_stop.yaml", "beta_lr.yaml")]
    assert {g.name for g in grids} >= {"objective", "negatives", "temperature", "inclusiveness", "memorization", "reference"}
    assert all(len(g.seeds) >= 5 for g in grids)
    keys = [{run_key(cell_config(g, c, 0)) for c in g.cells} for g in grids]
    assert set.intersection(*keys), "the grids no longer share their default cell"


def test_the_grids_on_the_embedded_default_share_its_run_and_change_one_setting_per_cell():
    from pathlib import Path

    from larpo import config as C
    from larpo.sweep import cell_config, run_key, sft_key

    root = Path(__file__).parent.parent / "configs" / "ablations"
    stop, beta_lr = load_grid(root / "sft_stop.yaml"), load_grid(root / "beta_lr.yaml")
    embedded, baseline = C.load(None, []), cell_config(beta_lr, beta_lr.baseline, 0)
    shipped = [c for c in beta_lr.cells if cell_config(beta_lr, c, 0).train == embedded.train]
    assert len(shipped) == 1, "no beta_lr cell is the shipped default"
    assert run_key(cell_config(beta_lr, shipped[0], 0)) == run_key(cell_config(stop, stop.baseline, 0))
    for cell in beta_lr.cells:  # one SFT checkpoint per seed serves every cell; each cell moves β or lr
        other = cell_config(beta_lr, cell, 0)
        assert (other.loop, other.sft) == (embedded.loop, embedded.sft) and sft_key(other) == sft_key(baseline)
        assert sum((getattr(other.train, f) != getattr(baseline.train, f)) for f in ("beta", "lr")) == (cell != beta_lr.baseline)
    assert any(m.startswith("validation.") for m in beta_lr.metrics)  # the choice can be read on validation


def test_runs_with_other_thread_counts_do_not_share_an_sft_checkpoint():
    from larpo import config as C
    from larpo.sweep import sft_key

    one, two = C.load(None, ["threads=1"]), C.load(None, ["threads=2"])
    assert sft_key(one) != sft_key(two)
    assert sft_key(one) == sft_key(C.load(None, ["threads=1", "train.lr=1e-4"]))  # training settings still share it


def test_a_run_from_a_model_path_shares_its_initial_evaluations_only(tmp_path):
    from larpo import config as C
    from larpo.sweep import _share_sft, sft_key

    cfg = C.load(None, ["model.path=/models/mine", "sft.enabled=false"])
    done, fresh, cache = tmp_path / "done", tmp_path / "fresh", tmp_path / "cache"
    done.mkdir()
    for name in ("eval_sft.json", "eval_sft.responses.jsonl", "retriever_eval_sft.json"):
        (done / name).write_text(name)
    _share_sft(cfg, done, cache, into_run=False)
    _share_sft(cfg, fresh, cache, into_run=True)
    assert sorted(p.name for p in fresh.iterdir()) == ["eval_sft.json", "eval_sft.responses.jsonl", "retriever_eval_sft.json"]
    assert (fresh / "eval_sft.json").read_text() == "eval_sft.json" and (cache / sft_key(cfg) / "eval_sft.json").is_file()


def test_the_real_model_grids_load_and_share_their_lambdarank_cell():
    from pathlib import Path

    from larpo.sweep import cell_config, run_key

    root = Path(__file__).parent.parent / "configs" / "ablations"
    objective, inclusiveness = load_grid(root / "smollm2_objective.yaml"), load_grid(root / "smollm2_inclusiveness.yaml")
    assert objective.seeds == inclusiveness.seeds == [0, 1, 2]
    assert {cell_config(objective, c, 0).train.loss for c in objective.cells} == {"pairwise", "contrastive", "lambdarank", "listmle"}
    assert run_key(cell_config(objective, "lambdarank-2+2", 0)) == run_key(cell_config(inclusiveness, "K=8", 0))
    assert cell_config(inclusiveness, "K=2", 0).sampling.k == 2
    assert cell_config(objective, "pairwise-1+1", 0).model.path == "models/SmolLM2-135M-Instruct"
