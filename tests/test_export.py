"""Exporting a run's ranked lists: TRL preference rows and listwise rows, by library and by CLI."""

import subprocess
import sys

import pytest

from larpo.config import ConfigError
from larpo.export import export_lists, preference_rows
from larpo.io import read_jsonl, write_jsonl_atomic
from larpo.lists import RankedList

LISTS = {
    0: [
        RankedList("a", "1+1=", ("2", "3", "4", "11"), (1.0, 0.5, 0.5, 0.0), ("own",) * 4),
        RankedList("b", "2+2=", ("4", "5"), (1.0, 0.0), ("own",) * 2),
    ],
    1: [RankedList("a", "1+1=", ("2", "12", "7"), (1.0, 0.5, 0.0), ("own", "own", "own"))],
}


@pytest.fixture
def run_dir(tmp_path):
    """A hand-made run directory: iter_0 and iter_1 lists files only."""
    for s, lists in LISTS.items():
        write_jsonl_atomic(tmp_path / "run" / f"iter_{s}" / "lists.jsonl", [rl.to_row() for rl in lists])
    return tmp_path / "run"


def test_best_worst_gives_one_pair_per_list_in_iteration_order(run_dir, tmp_path):
    out = tmp_path / "trl.jsonl"
    assert export_lists(run_dir, out, "trl") == 3
    assert read_jsonl(out) == [
        {"prompt": "1+1=", "chosen": "2", "rejected": "11"},
        {"prompt": "2+2=", "chosen": "4", "rejected": "5"},
        {"prompt": "1+1=", "chosen": "2", "rejected": "7"},
    ]


def test_all_pairs_are_the_strictly_ordered_ones():
    rows = preference_rows(LISTS[0][0], pairs="all")
    # 6 pairs in a list of 4; ("3", "4") tie at 0.5 and carry no preference
    assert [(r["chosen"], r["rejected"]) for r in rows] == [("2", "3"), ("2", "4"), ("2", "11"), ("3", "11"), ("4", "11")]


def test_listwise_rows_of_one_iteration(run_dir, tmp_path):
    out = tmp_path / "listwise.jsonl"
    assert export_lists(run_dir, out, "listwise", iteration=1) == 1
    assert read_jsonl(out) == [{"prompt": "1+1=", "responses": ["2", "12", "7"], "rewards": [1.0, 0.5, 0.0]}]


def test_listwise_rows_of_sampled_lists_carry_the_ids_trained_on_and_the_finished_flags():
    from larpo.export import listwise_row

    rl = RankedList("a", "1+1=", ("2", "11"), (1.0, 0.0), ("own", "own"), response_ids=((5,), (4, 4)), finished=(True, False))
    assert listwise_row(rl) == {"prompt": "1+1=", "responses": ["2", "11"], "rewards": [1.0, 0.0],
                                "response_ids": [[5], [4, 4]], "finished": [True, False]}


def test_trl_rows_load_as_a_datasets_preference_dataset(run_dir, tmp_path):
    datasets = pytest.importorskip("datasets")
    out = tmp_path / "trl.jsonl"
    export_lists(run_dir, out, "trl", pairs="all")
    for ds in (datasets.Dataset.from_json(str(out)), datasets.load_dataset("json", data_files=str(out), split="train")):
        assert ds.column_names == ["prompt", "chosen", "rejected"]
        assert len(ds) == 5 + 1 + 3 and ds[0] == {"prompt": "1+1=", "chosen": "2", "rejected": "3"}


def test_a_missing_iteration_is_a_user_error(run_dir, tmp_path):
    with pytest.raises(ConfigError, match="iter_5"):
        export_lists(run_dir, tmp_path / "x.jsonl", "trl", iteration=5)
    with pytest.raises(ConfigError, match="no iter_"):
        export_lists(tmp_path, tmp_path / "x.jsonl", "trl")


def test_cli_writes_the_file_and_reports_bad_input_in_one_line(run_dir, tmp_path):
    out = tmp_path / "cli.jsonl"
    cmd = [sys.executable, "-m", "larpo.cli", "export-lists", str(run_dir), "--format", "trl", "--pairs", "all", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert len(read_jsonl(out)) == 9 and "9 rows" in proc.stdout
    bad = subprocess.run([*cmd[:-2], "--iteration", "7", "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("larpo: error: --iteration 7")
