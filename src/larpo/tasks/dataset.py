"""A user task: prompts from a Hugging Face ``datasets`` dataset saved on disk, gold reward from the user's function.

``task.path`` is a directory written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``
(e.g. a local copy of UltraFeedback); for a DatasetDict, ``task.split`` names the split (it may be
left out when there is only one). Each row gives a prompt from ``task.prompt_field`` — a string,
or a list of ``{"role", "content"}`` messages — and optionally a string id (``task.id_field``;
default ``"<directory name>/<split>-<row>"``, or ``"<directory name>-<row>"`` for a saved Dataset)
and a string gold answer for SFT (``task.answer_field``).

Held-out prompts come from ``task.eval_path`` (another saved dataset, same split) when it is set,
else the last ``task.n_eval`` rows are held out, as in the ``jsonl`` task, whose rules on sizes,
duplicates and ``task.reward_fn`` apply unchanged (:class:`larpo.tasks.jsonl.UserTask`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..config import ConfigError, TaskConfig
from .base import Example
from .jsonl import UserTask

if TYPE_CHECKING:
    import datasets


def load_split(
    path: str | Path, split: str | None, key: str = "task.path", split_key: str = "task.split"
) -> tuple["datasets.Dataset", str | None]:
    """The Dataset saved in ``path`` and the split it is (the ``split`` of a saved DatasetDict, None for a
    saved Dataset), or a ConfigError naming ``key`` (the path's setting) or ``split_key`` (the split's)."""
    try:
        import datasets  # here, not at the top: importing it takes a second that other tasks need not pay
    except ImportError:
        raise ConfigError("task.name: 'dataset' needs the datasets package (pip install datasets)") from None

    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"{key}: {path} is not a directory; expected a dataset saved with save_to_disk")
    try:
        loaded = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"{key}: {path} is not a dataset saved with save_to_disk ({e})") from None
    if isinstance(loaded, datasets.Dataset):
        if split is not None:
            raise ConfigError(f"{split_key}: got {split!r}, but {path} holds a single Dataset, not a DatasetDict; "
                              "expected no split")
        return loaded, None
    splits = list(loaded)
    if split is None and len(splits) == 1:
        split = splits[0]
    if split not in loaded:
        raise ConfigError(f"{split_key}: got {split!r}, expected one of the splits of {path}: {', '.join(splits)}")
    return loaded[split], split


class DatasetTask(UserTask):
    name = "dataset"

    def _read_train(self, cfg: TaskConfig) -> list[Example]:
        return self._read(cfg, cfg.path, "task.path")

    def _read_held_out(self, cfg: TaskConfig) -> list[Example] | None:
        return None if cfg.eval_path is None else self._read(cfg, cfg.eval_path, "task.eval_path")

    def _read(self, cfg: TaskConfig, path: str, key: str) -> list[Example]:
        table, split = load_split(path, cfg.split, key)
        fields = {"prompt_field": cfg.prompt_field, "id_field": cfg.id_field, "answer_field": cfg.answer_field}
        for name, column in fields.items():
            if column is not None and column not in table.column_names:
                raise ConfigError(f"task.{name}: got {column!r}, but {path} has no such column; "
                                  f"expected one of {', '.join(table.column_names)}")
        if len(table) == 0:
            raise ConfigError(f"{key}: {path} has no rows")
        stem = Path(path).name if split is None else f"{Path(path).name}/{split}"
        columns = table.select_columns([c for c in fields.values() if c is not None]).to_dict()  # column → list
        expected = f"expected a string or a list of messages in column {cfg.prompt_field!r}"
        return [
            self._example(
                f"{path} row {i}",
                columns[cfg.prompt_field][i],
                columns[cfg.id_field][i] if cfg.id_field else f"{stem}-{i}",
                columns[cfg.answer_field][i] if cfg.answer_field else None,
                expected,
            )
            for i in range(len(table))
        ]
