"""Sorting: ``"sort 42 7 93 7 15:"`` → ``"7 7 15 42 93"`` — a task whose reward is graded by nature.

A prompt holds ``task.length`` numbers drawn from 0..``task.max_value``.

Graded reward: the response (stripped) must be non-negative integers in plain decimal (no
leading zeros) separated by single spaces, else it scores 0. It then scores ``order × overlap``:

- ``order``: the fraction of the response's pairs ``i < j`` with ``r_i <= r_j`` (1.0 when it has
  fewer than two numbers) — a Kendall-tau-style measure of sortedness;
- ``overlap``: the size of the multiset intersection of response and input, over the longer of
  the two — so missing, extra or invented numbers cost credit.

Only the exact answer scores 1.0; a reversed list of distinct numbers scores 0; a list with one
adjacent swap keeps most of its credit.
"""

from __future__ import annotations

import re
from collections import Counter

from ..config import TaskConfig
from .base import SyntheticTask

_PROMPT = re.compile(r"sort ((?:[0-9]+ )*[0-9]+):")
_NUMBERS = re.compile(r"(?:0|[1-9][0-9]*)(?: (?:0|[1-9][0-9]*))*")


class SortingTask(SyntheticTask):
    name = "sorting"
    alphabet = "sort 0123456789:"

    def __init__(self, cfg: TaskConfig) -> None:
        self.length = cfg.length
        self.base = cfg.max_value + 1
        space = self.base**self.length
        super().__init__(cfg, space, f"sorting {cfg.length} numbers from 0..{cfg.max_value}")

    def prompt_at(self, index: int) -> str:
        numbers = []
        for _ in range(self.length):
            index, number = divmod(index, self.base)
            numbers.append(number)
        return f"sort {' '.join(map(str, numbers))}:"

    def _numbers(self, prompt: str) -> list[int]:
        match = _PROMPT.fullmatch(prompt)
        if match is None:
            raise ValueError(f"not a sorting prompt: {prompt!r}")
        return [int(n) for n in match[1].split(" ")]

    def solve(self, prompt: str) -> str:
        return " ".join(map(str, sorted(self._numbers(prompt))))

    def graded(self, prompt: str, response: str) -> float:
        numbers, response = self._numbers(prompt), response.strip()
        if _NUMBERS.fullmatch(response) is None:
            return 0.0
        got = [int(n) for n in response.split(" ")]
        pairs = len(got) * (len(got) - 1) // 2
        in_order = sum(got[i] <= got[j] for i in range(len(got)) for j in range(i + 1, len(got)))
        order = in_order / pairs if pairs else 1.0
        overlap = sum((Counter(got) & Counter(numbers)).values()) / max(len(got), len(numbers))
        return order * overlap
