"""The persistent candidate store: each iteration's scored samples, and memorization across them."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from .io import read_jsonl, write_jsonl_atomic
from .lists import Candidate

FILE = "candidates.jsonl"


def iteration_dir(run_dir: str | Path, iteration: int) -> Path:
    return Path(run_dir) / f"iter_{iteration}"


def iterations_with(run_dir: str | Path, name: str) -> list[int]:
    """The iterations s of ``run_dir`` whose ``iter_<s>/<name>`` exists, in order."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = (re.fullmatch(r"iter_(\d+)", p.name) for p in run_dir.iterdir() if (p / name).is_file())
    return sorted(int(m.group(1)) for m in found if m)


def save_candidates(run_dir: str | Path, iteration: int, candidates: list[Candidate]) -> None:
    write_jsonl_atomic(iteration_dir(run_dir, iteration) / FILE, (c.to_row() for c in candidates))


def load_candidates(run_dir: str | Path, iteration: int) -> list[Candidate]:
    return [Candidate.from_row(row) for row in read_jsonl(iteration_dir(run_dir, iteration) / FILE)]


def remembered(
    run_dir: str | Path, iteration: int, mode: Literal["none", "previous", "all"], prompt_ids: set[str]
) -> list[Candidate]:
    """Earlier iterations' candidates for ``prompt_ids``: none, the previous iteration's, or all.

    Newest first, so that when the current candidates are placed before them and duplicates are
    dropped, each response keeps its most recent record.
    """
    if mode == "none" or iteration == 0:
        return []
    earlier = [iteration - 1] if mode == "previous" else list(range(iteration - 1, -1, -1))
    return [c for s in earlier for c in load_candidates(run_dir, s) if c.prompt_id in prompt_ids]
