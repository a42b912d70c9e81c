"""A run's ranked lists as datasets for other trainers: TRL preference pairs or listwise rows.

``trl`` rows are ``{"prompt", "chosen", "rejected"}`` (plain strings), the format of TRL's
``DPOTrainer``. A list gives its best response against its worst (``pairs="best_worst"``, one row
per list), or every pair whose rewards are strictly ordered (``pairs="all"``, up to m(m−1)/2 rows;
tied pairs carry no preference and are left out). ``listwise`` rows are
``{"prompt", "responses", "rewards"}``, responses best first, the format of iterative-DPO and
listwise work; a list the loop sampled adds ``response_ids`` (per response, the token ids it was
trained on, EOS excluded) and ``finished`` (per response, whether it ended with EOS), which other
trainers ignore and ``larpo train-lists`` trains on, so that it trains exactly what the loop did. Lists are read from ``iter_<s>/lists.jsonl``: those trained on, after list
building, so with memorization a prompt can appear once per iteration.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Literal

from .candidates import iteration_dir, iterations_with
from .config import ConfigError
from .io import read_jsonl, write_jsonl_atomic
from .lists import RankedList

LISTS = "lists.jsonl"


def preference_rows(rl: RankedList, pairs: Literal["best_worst", "all"] = "best_worst") -> list[dict]:
    """TRL preference rows of one list (its items are ordered best first, first and last differ)."""
    if pairs == "best_worst":
        index_pairs = [(0, len(rl.responses) - 1)]
    elif pairs == "all":
        index_pairs = [(i, j) for i in range(len(rl.responses)) for j in range(i + 1, len(rl.responses))]
    else:
        raise ValueError(f"pairs: got {pairs!r}, expected 'best_worst' or 'all'")
    return [
        {"prompt": rl.prompt, "chosen": rl.responses[i], "rejected": rl.responses[j]}
        for i, j in index_pairs
        if rl.rewards[i] > rl.rewards[j]
    ]


def listwise_row(rl: RankedList) -> dict:
    """prompt, responses (best first), rewards; for sampled lists also ``response_ids`` and ``finished``."""
    row = {"prompt": rl.prompt, "responses": list(rl.responses), "rewards": list(rl.rewards)}
    if rl.response_ids is not None:
        row["response_ids"] = [None if ids is None else list(ids) for ids in rl.response_ids]
    if rl.finished is not None:
        row["finished"] = list(rl.finished)
    return row


def load_lists(run_dir: str | Path, iteration: int | None = None) -> Iterator[RankedList]:
    """The ranked lists of one iteration, or of every iteration in order (``iteration=None``)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: not a directory; expected a larpo run directory")
    if iteration is None:
        iterations = iterations_with(run_dir, LISTS)
        if not iterations:
            raise ConfigError(f"{run_dir}: no iter_<s>/{LISTS}; expected a run with at least one finished list stage")
    else:
        if not (iteration_dir(run_dir, iteration) / LISTS).is_file():
            raise ConfigError(f"--iteration {iteration}: {iteration_dir(run_dir, iteration) / LISTS} does not exist")
        iterations = [iteration]
    for s in iterations:
        for row in read_jsonl(iteration_dir(run_dir, s) / LISTS):
            yield RankedList.from_row(row)


def export_lists(
    run_dir: str | Path,
    out: str | Path,
    fmt: Literal["trl", "listwise"],
    iteration: int | None = None,
    pairs: Literal["best_worst", "all"] = "best_worst",
) -> int:
    """Write the lists of ``run_dir`` to ``out`` (JSONL, atomically) in ``fmt``; return the rows written."""
    lists = load_lists(run_dir, iteration)
    if fmt == "trl":
        rows = [row for rl in lists for row in preference_rows(rl, pairs)]
    elif fmt == "listwise":
        rows = [listwise_row(rl) for rl in lists]
    else:
        raise ConfigError(f"--format: got {fmt!r}, expected 'trl' or 'listwise'")
    write_jsonl_atomic(out, rows)
    return len(rows)
