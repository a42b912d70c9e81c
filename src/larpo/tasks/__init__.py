"""Tasks: prompts, gold answers and a gold reward — the ground truth a run is measured against.

A task is anything that satisfies the small :class:`Task` protocol; :func:`build_task` resolves
``task.name`` to one of the built-ins:

- ``arithmetic``: ``"123+456="`` → ``"579"`` (:mod:`larpo.tasks.arithmetic`)
- ``chat_arithmetic``: ``"What is 47 + 38? Reply with only the number."`` → ``"85"``, for chat
  models; graded for correctness and format (:mod:`larpo.tasks.chat_arithmetic`)
- ``sorting``: ``"sort 42 7 93 7 15:"`` → ``"7 7 15 42 93"`` (:mod:`larpo.tasks.sorting`)
- ``jsonl``: the user's prompts file and reward function (:mod:`larpo.tasks.jsonl`)
- ``dataset``: a ``datasets`` dataset saved on disk and the user's reward function (:mod:`larpo.tasks.dataset`)

The synthetic built-ins share :class:`SyntheticTask`: prompts are drawn without replacement from a
finite space, deterministically from ``task.seed``, and each prompt determines its own answer, so
``reward(prompt, response)`` needs nothing else.
"""

from __future__ import annotations

from ..config import ConfigError, TaskConfig
from .arithmetic import ArithmeticTask
from .base import Example, SyntheticTask, Task
from .chat_arithmetic import ChatArithmeticTask
from .dataset import DatasetTask
from .jsonl import JsonlTask
from .sorting import SortingTask

TASKS: dict[str, type] = {
    "arithmetic": ArithmeticTask, "chat_arithmetic": ChatArithmeticTask, "sorting": SortingTask, "jsonl": JsonlTask,
    "dataset": DatasetTask,
}


def build_task(cfg: TaskConfig) -> Task:
    """The task named by ``cfg.name``, built from the rest of ``cfg``."""
    if cfg.name not in TASKS:
        raise ConfigError(f"task.name: got {cfg.name!r}, expected one of {', '.join(map(repr, TASKS))}")
    return TASKS[cfg.name](cfg)


__all__ = ["ArithmeticTask", "ChatArithmeticTask", "DatasetTask", "Example", "JsonlTask", "SortingTask", "SyntheticTask", "TASKS", "Task", "build_task"]
