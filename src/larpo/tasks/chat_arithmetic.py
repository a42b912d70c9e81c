"""Chat arithmetic: ``"What is 47 + 38? Reply with only the number."`` → ``"85"``, for chat models.

The operations of :mod:`larpo.tasks.arithmetic` (``task.digits``, ``task.operations``, the same
prompt space and draw), asked as a question in one of a few phrasings, each of which asks for the
number alone. The phrasing of a prompt is fixed by ``task.seed`` and the prompt's index, and the
operation alone determines the answer, so a question never recurs in another phrasing.

Graded reward (``task.reward: graded``), in [0, 1]: ``correctness × (0.7 + 0.3 × format)``.

- correctness: the *last* integer in the response (``-?[0-9]+``; a model that restates the sum
  ends with its result) against the answer, digit by digit, right-aligned, the sign one more
  position, as arithmetic's graded reward: ``"85"`` → 1, ``"84"`` → 1/2, ``"-85"`` → 2/3;
  0 when the response has no integer.
- format: 1 when the response, stripped of surrounding whitespace, is one integer and nothing
  else, as asked; 1/2 when it contains exactly one integer among other text (``"85."``,
  ``"The answer is 85"``); 0 with several integers (``"47 + 38 = 85"``) or none.

So, for the answer 85: ``"85"`` → 1.0, ``"The answer is 85."`` → 0.85, ``"47 + 38 = 85"`` → 0.7,
``"84"`` → 0.5, ``"47 + 38 = 84"`` → 0.35, ``"58"``, ``""`` and ``"eighty-five"`` → 0. A correct
number in the wrong format outranks a wrong one in the right format, and each step towards the
requested form (restating the sum → one sentence → the bare number) is visible in the reward.

The format credit multiplies the correctness: it is earned only as far as the number is right.
A first version added the two (``0.7 × correctness + 0.3 × format``), which paid 0.3 for any bare
number; on one seed of the recipe the policy learned to reply with the first operand (``"69"``
for 69 + 61: 0.3) and its held-out accuracy fell from 0.50 to 0.02 in the second iteration
(docs/real-model.md).

Two readings of "right", measured on the base model in docs/real-model.md ("The task and its
headroom"):

- ``exact`` (*strict*): the response, stripped of surrounding whitespace, is exactly the answer
  (``"85"``, ``" 85 "``; not ``"85."``, ``"085"``, ``"The answer is 85"``, ``"47 + 38 = 85"``).
  It is the only response that scores 1.0 under the graded reward, and ``task.reward: exact`` is
  its 0/1.
- ``correct`` (*lenient*, what held-out accuracy and pass@k mean for this task): the last integer
  in the response (``-?[0-9]+``) is the answer, written as the answer is (``"85"``, ``"47 + 38 =
  85"``, ``"The answer is 85."``, ``"85. I hope this helps!"``; not ``"085"``, ``"-85"``, ``"The
  answer is 85 (47 + 38)"`` or ``"eighty-five"``).

Accuracy is lenient because the strict reading has no headroom to show: SmolLM2-135M-Instruct
answers in sentences (``"47 + 38 = 85"``, ``"The result of 51 + 37 is 158."``) and was strictly
right in none of 64 greedy replies nor of its samples (K = 8 on 32 prompts, at T = 0.7 and 1.0),
while its lenient greedy accuracy was 0.16, a measure that can move both ways. The format is
still trained for: it is 30% of the graded reward, and the strict reading is the exact reward.
Every greedy evaluation reports both: ``exact_accuracy`` (lenient) and ``strict_accuracy``.
"""

from __future__ import annotations

import random
import re

from ..config import TaskConfig
from .arithmetic import INTEGER, ArithmeticTask, digit_credit, result

PHRASINGS = (
    "What is {a} {op} {b}? Reply with only the number.",
    "Compute {a} {op} {b}. Answer with just the number.",
    "What is the result of {a} {op} {b}? Give only the number.",
    "Calculate {a} {op} {b} and reply with the number only.",
    "{a} {op} {b} = ? Reply with only the number.",
)
FORMAT_WEIGHT = 0.3  # the share of a right number's reward that its format earns
_OPERATION = re.compile(r"([0-9]+) ([+-]) ([0-9]+)")


class ChatArithmeticTask(ArithmeticTask):
    name = "chat_arithmetic"
    alphabet = "0123456789+-" + "".join(PHRASINGS)

    def __init__(self, cfg: TaskConfig) -> None:
        self.seed = cfg.seed  # prompt_at needs it, and the base class calls prompt_at
        super().__init__(cfg)

    def prompt_at(self, index: int) -> str:
        a, op, b = self.operation_at(index)
        phrasing = random.Random(f"{self.seed}:{index}").choice(PHRASINGS)
        return phrasing.format(a=a, op=op, b=b)

    def solve(self, prompt: str) -> str:
        match = _OPERATION.search(prompt)
        if match is None:
            raise ValueError(f"not a chat arithmetic prompt: {prompt!r}")
        return result(int(match[1]), match[2], int(match[3]))

    def correct(self, prompt: str, response: str) -> bool:
        """Lenient: the last integer in the response is the answer (see the module docstring)."""
        return INTEGER.findall(response)[-1:] == [self.solve(prompt)]

    def exact(self, prompt: str, response: str) -> bool:
        """Strict: the response, stripped of surrounding whitespace, is the answer and nothing else."""
        return response.strip() == self.solve(prompt)

    def reward(self, prompt: str, response: str) -> float:
        """The graded reward, or with ``task.reward: exact`` the strict reading's 0/1 (not ``correct``'s)."""
        return self.graded(prompt, response) if self._graded else float(self.exact(prompt, response))

    def graded(self, prompt: str, response: str) -> float:
        numbers = INTEGER.findall(response)
        if not numbers:
            return 0.0
        correctness = digit_credit(numbers[-1], self.solve(prompt))
        if INTEGER.fullmatch(response.strip()):
            form = 1.0
        elif len(numbers) == 1:
            form = 0.5
        else:
            form = 0.0
        return correctness * (1 - FORMAT_WEIGHT + FORMAT_WEIGHT * form)
