"""Arithmetic: ``"123+456="`` → ``"579"``, ``"12-57="`` → ``"-45"``.

Operands have exactly ``task.digits`` digits (first digit non-zero; 0..9 when ``digits`` is 1);
the operation is one of ``task.operations``.

Graded reward: the response (stripped) must be an integer written as an optional leading ``-``
followed by digits, else it scores 0. It is then compared with the answer character by character,
right-aligned (units with units, tens with tens, the sign as one more leading position), and
scores the number of agreeing positions over the longer of the two lengths — so a wrong digit, a
missing or extra digit and a wrong sign each cost credit, and only the exact answer scores 1.0.
E.g. answer ``"579"``: ``"579"`` → 1, ``"578"`` → 2/3, ``"79"`` → 2/3, ``"1579"`` → 3/4.
"""

from __future__ import annotations

import re

from ..config import TaskConfig
from .base import SyntheticTask

_PROMPT = re.compile(r"([0-9]+)([+-])([0-9]+)=")
INTEGER = re.compile(r"-?[0-9]+")


def result(a: int, op: str, b: int) -> str:
    """``a op b`` written as the gold answer, e.g. ``"-45"``."""
    return str(a + b if op == "+" else a - b)


def digit_credit(number: str, answer: str) -> float:
    """Share of right-aligned positions (the sign one more) where the integer ``number`` agrees with ``answer``."""
    agree = sum(r == a for r, a in zip(reversed(number), reversed(answer)))
    return agree / max(len(number), len(answer))


class ArithmeticTask(SyntheticTask):
    name = "arithmetic"
    alphabet = "0123456789+-="

    def __init__(self, cfg: TaskConfig) -> None:
        self.operations = tuple(dict.fromkeys(cfg.operations))
        self.low = 0 if cfg.digits == 1 else 10 ** (cfg.digits - 1)
        self.n_operands = 10**cfg.digits - self.low
        space = len(self.operations) * self.n_operands**2
        super().__init__(cfg, space, f"{cfg.digits}-digit arithmetic with operations {list(self.operations)}")

    def operation_at(self, index: int) -> tuple[int, str, int]:
        """``(a, op, b)`` of the prompt with this index."""
        op, rest = divmod(index, self.n_operands**2)
        a, b = divmod(rest, self.n_operands)
        return self.low + a, self.operations[op], self.low + b

    def prompt_at(self, index: int) -> str:
        a, op, b = self.operation_at(index)
        return f"{a}{op}{b}="

    def solve(self, prompt: str) -> str:
        match = _PROMPT.fullmatch(prompt)
        if match is None:
            raise ValueError(f"not an arithmetic prompt: {prompt!r}")
        return result(int(match[1]), match[2], int(match[3]))

    def graded(self, prompt: str, response: str) -> float:
        response = response.strip()
        if INTEGER.fullmatch(response) is None:
            return 0.0
        return digit_credit(response, self.solve(prompt))
