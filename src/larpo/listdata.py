"""Ranked lists from data you already have: listwise rows, TRL preference pairs, or a saved dataset.

Three layouts, told apart by their fields (a JSONL file's first row, a dataset's columns):

- **listwise** ``{"prompt", "responses": [...], "rewards": [...]}``: larpo's ``export-lists
  --format listwise`` and RLHFlow's format. larpo's own lists may add ``response_ids`` (per
  response, the sampled token ids, EOS excluded) and ``finished`` (per response, whether it ended
  with EOS), so that the very tokens the loop trained on are trained again.
- **pairs** ``{"prompt", "chosen", "rejected"}``: TRL's preference format, a list of two, chosen
  first (chosen when the row has those two fields and no responses field).
- **mapped**: the listwise layout under other names (:class:`Fields`). ``column.key`` reads ``key``
  from every item of a list column, so UltraFeedback's list of rated completions is
  ``Fields(prompt="instruction", responses="completions.response", rewards="completions.overall_score")``.

A prompt is a non-empty string or a list of ``{"role", "content"}`` messages. A response is a string
or, in TRL's conversational format, a list of messages ending with the assistant's reply (any
messages before it must be the prompt's). An empty response is one that ended at once: it is
trained on as EOS alone, as the loop trains a sampled one (only a response that did not finish,
``finished`` false, needs a token of its own). Each row becomes one
:class:`~larpo.lists.RankedList` through :func:`larpo.lists.build_list`: sorted best first (ties
keep the row's order), cut by the list strategy. Its ``prompt_id`` is where it came from
(``file:line`` or ``directory row i``), so that later errors can name it too.

A malformed row (a missing field, a wrong type, lengths that disagree, a reward that is not a
finite number) raises a :class:`RowError` naming the file and line (or row), the field and what
was found; with ``drop_bad_rows`` it is dropped instead and counted by reason. A well-formed row
that makes no list (fewer than two responses, or rewards that all tie) is dropped and counted;
with ``strict`` it raises instead.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import numbers
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .config import ConfigError
from .io import text_lines
from .lists import Candidate, RankedList, build_list
from .tasks.dataset import load_split
from .tasks.jsonl import check_prompt

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

Strategy = Literal["top_bottom", "full"]
PAIR_FIELDS = ("chosen", "rejected")
TIED, TOO_FEW = "all_rewards_tied", "fewer_than_two_responses"
UNUSABLE = (TIED, TOO_FEW)  # well-formed rows that make no list: dropped unless strict


@dataclass(frozen=True)
class Fields:
    """Where a listwise row keeps its prompt, responses and rewards.

    ``column.key[.key…]`` reads the keys from every item of the list in ``column`` (a list of
    objects, or the object of lists that ``datasets`` gives for a ``Sequence`` of a struct).
    """

    prompt: str = "prompt"
    responses: str = "responses"
    rewards: str = "rewards"


class RowError(ConfigError):
    """One row that cannot become a ranked list; ``reason`` is its category in the counts."""

    def __init__(self, message: str, reason: str = "malformed"):
        super().__init__(message)
        self.reason = reason


@dataclass
class ListReport:
    """What reading the data did: rows read, lists kept, and every dropped row with its reason."""

    source: str
    format: Literal["listwise", "pairs"]
    fields: dict[str, str]
    rows: int = 0
    lists: int = 0
    responses_read: int = 0  # in the rows that became lists
    responses_kept: int = 0  # after the list strategy's selection
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> rows
    dropped_rows: list[str] = field(default_factory=list)  # each dropped row: where, field, why

    def drop(self, error: RowError) -> None:
        self.dropped[error.reason] = self.dropped.get(error.reason, 0) + 1
        self.dropped_rows.append(str(error))

    def summary(self) -> str:
        """One line: rows → lists (responses kept of read), and the drops by reason."""
        line = (f"{self.source}: {self.rows} rows ({self.format}) → {self.lists} lists, "
                f"{self.responses_kept} of their {self.responses_read} responses kept")
        if self.dropped:
            reasons = ", ".join(f"{n} {reason.replace('_', ' ')}" for reason, n in sorted(self.dropped.items()))
            line += f"; dropped {sum(self.dropped.values())} of the {self.rows} rows ({reasons})"
        return line

    def to_dict(self) -> dict:
        return asdict(self)


def lists_digest(lists: Iterable[RankedList]) -> str:
    """sha256 of the lists as rows: whether two readings gave the same training data."""
    digest = hashlib.sha256()
    for rl in lists:
        digest.update(json.dumps(rl.to_row(), sort_keys=True).encode())
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# one row → candidates of one prompt


def _show(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _item_name(path: str, i: int) -> str:
    """``responses`` → ``responses[i]``; ``completions.response`` → ``completions[i].response``."""
    column, *keys = path.split(".")
    return f"{column}[{i}]" + "".join(f".{k}" for k in keys)


def _column(row: dict, path: str, where: str) -> Any:
    """The value at ``path``: a field of ``row``, or for ``column.key…`` the key of every item of the column."""
    column, *keys = path.split(".")
    if column not in row:
        raise RowError(f"{where}: {column}: missing; expected a field {column!r} (fields: {', '.join(map(str, row))})")
    value = row[column]
    if not keys:
        return value
    if isinstance(value, dict) and isinstance(value.get(keys[0]), list):  # datasets' Sequence of a struct: columns
        value = [{keys[0]: v} for v in value[keys[0]]]
    if not isinstance(value, list):
        raise RowError(f"{where}: {column}: got {_show(value)}, expected a list of objects with {'.'.join(keys)!r}")
    out = []
    for i, item in enumerate(value):
        for key in keys:
            if not isinstance(item, dict) or key not in item:
                raise RowError(f"{where}: {_item_name(path, i)}: missing in {_show(value[i])}")
            item = item[key]
        out.append(item)
    return out


def _prompt(value: Any, where: str, name: str) -> str | list[dict]:
    if value == "":
        raise RowError(f"{where}: {name}: empty; expected a prompt", "empty_prompt")
    try:
        return check_prompt(value, f"{where}: {name}", f"got {_show(value)}, expected a string or a list of messages")
    except ConfigError as e:
        raise RowError(str(e)) from None


def _as_messages(prompt: str | list[dict]) -> list[dict]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt


def _response(value: Any, prompt: str | list[dict], where: str, name: str) -> str:
    """A response's text: a string, or the content of the assistant's message that ends a message list."""
    if isinstance(value, str):
        return value
    expected = "expected a string, or a list of messages ending with the assistant's reply"
    try:
        messages = check_prompt(value, f"{where}: {name}", f"got {_show(value)}, {expected}")
    except ConfigError as e:
        raise RowError(str(e)) from None
    *context, reply = messages
    if reply["role"] != "assistant":
        raise RowError(f"{where}: {name}: the last message is the {reply['role']!r}'s; {expected}")
    if context and [{"role": m["role"], "content": m["content"]} for m in context] != _as_messages(prompt):
        raise RowError(f"{where}: {name}: the messages before the reply are not the prompt; "
                       "expected the reply alone, or the prompt's messages then the reply")
    return reply["content"]


def _reward(value: Any, where: str, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise RowError(f"{where}: {name}: got {_show(value)}, expected a finite number", "reward_not_a_number")
    return float(value)


def _per_response(row: dict, key: str, n: int, where: str, check: Callable[[Any, str], Any]) -> list | None:
    """The optional per-response field ``key`` (None when absent): ``check(value, "where: key[i]")`` of each entry."""
    values = row.get(key)
    if values is None:
        return None
    if not isinstance(values, list) or len(values) != n:
        raise RowError(f"{where}: {key}: got {_show(values)}, expected a list of {n} entries, one per response",
                       "lengths_differ")
    return [check(v, f"{where}: {key}[{i}]") for i, v in enumerate(values)]


def _token_ids(value: Any, at: str) -> tuple[int, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in value):
        raise RowError(f"{at}: got {_show(value)}, expected a list of token ids (non-negative integers)")
    return tuple(value)


def _flag(value: Any, at: str) -> bool:
    if not isinstance(value, bool):
        raise RowError(f"{at}: got {_show(value)}, expected true or false")
    return value


def row_candidates(row: Any, fmt: Literal["listwise", "pairs"], fields: Fields, where: str) -> list[Candidate]:
    """The candidates of one row (in the row's order), or a :class:`RowError` naming ``where`` and the field."""
    if not isinstance(row, dict):
        raise RowError(f"{where}: got {_show(row)}, expected an object with fields")
    prompt = _prompt(_column(row, fields.prompt, where), where, fields.prompt)
    if fmt == "pairs":
        texts = [_response(_column(row, name, where), prompt, where, name) for name in PAIR_FIELDS]
        rewards, names = [1.0, 0.0], list(PAIR_FIELDS)
        ids = finished = None
    else:
        responses, scores = _column(row, fields.responses, where), _column(row, fields.rewards, where)
        for name, value in ((fields.responses, responses), (fields.rewards, scores)):
            if not isinstance(value, list):
                raise RowError(f"{where}: {name}: got {_show(value)}, expected a list")
        if len(responses) != len(scores):
            raise RowError(f"{where}: {fields.rewards}: {len(scores)} rewards for {len(responses)} responses; "
                           "expected one reward per response", "lengths_differ")
        if len(responses) < 2:
            raise RowError(f"{where}: {fields.responses}: {len(responses)} response(s); expected at least 2", TOO_FEW)
        names = [_item_name(fields.responses, i) for i in range(len(responses))]
        texts = [_response(value, prompt, where, name) for value, name in zip(responses, names)]
        rewards = [_reward(v, where, _item_name(fields.rewards, i)) for i, v in enumerate(scores)]
        ids = _per_response(row, "response_ids", len(texts), where, _token_ids)
        finished = _per_response(row, "finished", len(texts), where, _flag)
    ids = ids or [None] * len(texts)
    finished = finished or [True] * len(texts)
    for i, (text, name) in enumerate(zip(texts, names)):
        if not finished[i] and (ids[i] == () or (ids[i] is None and text == "")):  # sampling cannot cut at 0 tokens
            raise RowError(f"{where}: finished[{i}]: false for the empty {name}; expected true (a response with no "
                           "token ended at once, and is trained on as EOS alone)", "empty_and_unfinished")
    return [Candidate(where, prompt, t, r, source="data", response_ids=i, finished=f)
            for t, r, i, f in zip(texts, rewards, ids, finished)]


# ---------------------------------------------------------------------------------------------
# rows → lists


def detect_format(names: Iterable[str], fields: Fields) -> Literal["listwise", "pairs"]:
    """``pairs`` when the fields include chosen and rejected and not the responses column, else ``listwise``."""
    names = set(names)
    return "pairs" if set(PAIR_FIELDS) <= names and fields.responses.split(".")[0] not in names else "listwise"


def _build(
    labelled: Iterable[tuple[str, Any]],
    report: ListReport,
    fields: Fields,
    strategy: Strategy,
    top: int,
    bottom: int,
    drop_bad_rows: bool,
    strict: bool,
) -> list[RankedList]:
    """One list per labelled row (``(where, row)``, where a row may be the RowError of an unreadable line)."""
    lists: list[RankedList] = []
    for where, row in labelled:
        report.rows += 1
        try:
            if isinstance(row, RowError):
                raise row
            candidates = row_candidates(row, report.format, fields, where)
            ranked = build_list(candidates, strategy, top, bottom)
            if ranked is None:
                raise RowError(f"{where}: {fields.rewards if report.format == 'listwise' else 'chosen'}: "
                               f"all {len(candidates)} rewards tie (after lists.strategy {strategy!r}); no preference", TIED)
        except RowError as e:
            unusable = e.reason in UNUSABLE
            if (strict and unusable) or (not drop_bad_rows and not unusable):
                raise
            report.drop(e)
            continue
        lists.append(ranked)
        report.responses_read += len(candidates)
        report.responses_kept += len(ranked.responses)
    report.lists = len(lists)
    return lists


def _report(source: str, fmt: Literal["listwise", "pairs"], fields: Fields) -> ListReport:
    names = {"prompt": fields.prompt, **({"chosen": "chosen", "rejected": "rejected"} if fmt == "pairs"
                                         else {"responses": fields.responses, "rewards": fields.rewards})}
    return ListReport(source, fmt, names)


def lists_from_rows(
    rows: Iterable[dict],
    fields: Fields = Fields(),
    strategy: Strategy = "full",
    top: int = 2,
    bottom: int = 2,
    drop_bad_rows: bool = False,
    source: str = "rows",
    strict: bool = False,
) -> tuple[list[RankedList], ListReport]:
    """Ranked lists from any iterable of row dicts (a list, a generator, a ``datasets.Dataset``).

    The layout is detected from the first row. Rows are named ``"<source> row <i>"`` (from 0) in
    errors and in the report. ``strategy``/``top``/``bottom`` are :func:`larpo.lists.build_list`'s
    (default: every response). A row with fewer than two responses, or whose rewards all tie, is
    dropped and counted (``strict``: raises a :class:`RowError`); a malformed row raises one (with
    ``drop_bad_rows``: is dropped and counted).
    """
    iterator = iter(rows)
    first = next(iterator, None)
    if first is None:
        raise ConfigError(f"{source}: no rows; expected at least one ranked list")
    fmt = detect_format(first if isinstance(first, dict) else (), fields)
    report = _report(source, fmt, fields)
    labelled = ((f"{source} row {i}", row) for i, row in enumerate(itertools.chain([first], iterator)))
    return _build(labelled, report, fields, strategy, top, bottom, drop_bad_rows, strict), report


def _jsonl_rows(path: Path) -> list[tuple[str, Any]]:
    """``(path:line, parsed row)`` for every non-blank line; an unparseable line's row is its RowError."""
    rows = []
    for number, line in text_lines(path, "the data file"):
        where = f"{path}:{number}"
        try:
            rows.append((where, json.loads(line)))
        except json.JSONDecodeError as e:
            rows.append((where, RowError(f"{where}: not valid JSON ({e.msg}); expected one JSON object per line")))
    if not rows:
        raise ConfigError(f"{path}: empty; expected one ranked list (a JSON object) per line")
    return rows


def read_lists(
    path: str | Path,
    fields: Fields = Fields(),
    split: str | None = None,
    strategy: Strategy = "full",
    top: int = 2,
    bottom: int = 2,
    drop_bad_rows: bool = False,
    strict: bool = False,
) -> tuple[list[RankedList], ListReport]:
    """Ranked lists from a JSONL file or a ``datasets`` directory saved with ``save_to_disk``.

    ``split`` names the split of a saved ``DatasetDict`` (it may be left out when there is one).
    Rows are named ``file:line`` (from 1) or ``directory[/split] row i`` (from 0); otherwise as
    :func:`lists_from_rows`.
    """
    path = Path(path)
    if path.is_dir():
        table, split = load_split(path, split, key="DATA", split_key="--split")
        fmt = detect_format(table.column_names, fields)
        report = _report(str(path) if split is None else f"{path}/{split}", fmt, fields)
        wanted = {name.split(".")[0] for name in report.fields.values()} & set(table.column_names)
        table = table.select_columns(sorted(wanted))  # other columns are never decoded
        labelled = ((f"{report.source} row {i}", row) for i, row in enumerate(table))
    elif path.is_file():
        if split is not None:
            raise ConfigError(f"--split: got {split!r}, but {path} is a JSONL file; a split names part of a saved dataset")
        rows = _jsonl_rows(path)
        first = next((row for _, row in rows if isinstance(row, dict)), {})
        report = _report(str(path), detect_format(first, fields), fields)
        labelled = iter(rows)
    else:
        raise ConfigError(f"DATA {path}: not found; expected a JSONL file or a dataset directory saved with save_to_disk")
    return _build(labelled, report, fields, strategy, top, bottom, drop_bad_rows, strict), report


# ---------------------------------------------------------------------------------------------
# what only the model's tokenizer can check


def check_tokenizer(lists: Iterable[RankedList], tokenizer: PreTrainedTokenizerBase) -> None:
    """Raise a ConfigError naming the row unless ``tokenizer`` can encode every list as given.

    A prompt given as messages needs a chat template. Token ids carried by a list (larpo's own
    lists) must decode, as sampling decoded them, to their response's text: ids from another
    tokenizer would train the model on other text.
    """
    for rl in lists:
        if not isinstance(rl.prompt, str) and tokenizer.chat_template is None:
            raise ConfigError(f"{rl.prompt_id}: prompt: a list of messages, but the model's tokenizer has no chat "
                              "template; expected a string prompt")
        for i, (text, ids) in enumerate(zip(rl.responses, rl.response_ids or ())):
            if ids is None:
                continue
            try:
                decoded = tokenizer.decode(list(ids), skip_special_tokens=True)
            except (OverflowError, TypeError, ValueError, IndexError):
                decoded = None
            if decoded != text:
                raise ConfigError(
                    f"{rl.prompt_id}: response_ids of {_show(text)}: decode to {_show(decoded)} with the model's "
                    "tokenizer; expected ids from this tokenizer (leave response_ids out to train on the text)")
