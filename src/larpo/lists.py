"""From a prompt's scored candidates to the ranked list the policy is trained on.

Pure functions on plain data. A list is ordered best → worst by reward (the reranker's order);
ties keep the candidates' incoming order, so the result is deterministic.

A candidate cut at ``sampling.max_new_tokens`` (``finished`` false) is handled as
``lists.unfinished`` says: ``keep`` it (trained without EOS, as TRL's online trainers keep
truncated completions by default), ``drop`` it, or give it the ``lowest`` reward of its prompt.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field
from dataclasses import replace
from typing import Literal, Sequence

from .losses import DEFAULT_TOP_BOTTOM

Unfinished = Literal["keep", "drop", "lowest"]


@dataclass(frozen=True)
class Candidate:
    """One sampled (or otherwise sourced) response to a prompt, with its reranker score."""

    prompt_id: str
    prompt: str
    response: str
    reward: float
    temperature: float | None = None
    source: str = "own"
    iteration: int = 0
    response_ids: tuple[int, ...] | None = None  # the sampled token ids, EOS excluded (None: a text only)
    finished: bool = True  # the policy ended the response with EOS (False: cut at max_new_tokens)

    def to_row(self) -> dict:
        return asdict(self)

    @classmethod
    def from_row(cls, row: dict) -> "Candidate":
        ids = row.get("response_ids")
        return cls(**{**row, "response_ids": None if ids is None else tuple(ids)})


@dataclass(frozen=True)
class RankedList:
    """A training list: one prompt's responses, best first, with their rewards and sources."""

    prompt_id: str
    prompt: str
    responses: tuple[str, ...]
    rewards: tuple[float, ...]
    sources: tuple[str, ...]
    response_ids: tuple[tuple[int, ...] | None, ...] | None = None  # per item: sampled ids (None: tokenise the text)
    finished: tuple[bool, ...] | None = None  # per item: ended with EOS (None: all did)

    def __post_init__(self) -> None:
        sizes = {len(self.responses), len(self.rewards), len(self.sources)}
        sizes |= {len(x) for x in (self.response_ids, self.finished) if x is not None}
        if len(sizes) != 1:
            raise ValueError("responses, rewards, sources, response_ids and finished must have one entry per item")
        if len(self.responses) < 2:
            raise ValueError(f"list for prompt {self.prompt_id!r} has {len(self.responses)} item(s), expected at least 2")

    @classmethod
    def of(cls, items: Sequence[Candidate]) -> "RankedList":
        """The list of ``items`` (candidates of one prompt), in the order given."""
        first = items[0]
        return cls(
            prompt_id=first.prompt_id,
            prompt=first.prompt,
            responses=tuple(c.response for c in items),
            rewards=tuple(c.reward for c in items),
            sources=tuple(c.source for c in items),
            response_ids=tuple(c.response_ids for c in items),
            finished=tuple(c.finished for c in items),
        )

    def to_row(self) -> dict:
        """The listwise JSONL format: prompt, responses, rewards (plus prompt_id, sources and, for
        sampled items, the token ids trained on and whether each finished)."""
        row = {
            "prompt_id": self.prompt_id,
            "prompt": self.prompt,
            "responses": list(self.responses),
            "rewards": list(self.rewards),
            "sources": list(self.sources),
        }
        if self.response_ids is not None:
            row["response_ids"] = [None if ids is None else list(ids) for ids in self.response_ids]
        if self.finished is not None:
            row["finished"] = list(self.finished)
        return row

    @classmethod
    def from_row(cls, row: dict) -> "RankedList":
        ids = row.get("response_ids")
        return cls(
            prompt_id=row["prompt_id"],
            prompt=row["prompt"],
            responses=tuple(row["responses"]),
            rewards=tuple(float(r) for r in row["rewards"]),
            sources=tuple(row.get("sources") or ["own"] * len(row["responses"])),
            response_ids=None if ids is None else tuple(None if x is None else tuple(x) for x in ids),
            finished=None if row.get("finished") is None else tuple(row["finished"]),
        )


@dataclass
class ListStats:
    """What list building did: lists built, prompts skipped, duplicates dropped, unfinished handled."""

    lists: int = 0
    skipped_tied: int = 0  # prompts whose candidates all tied: no preference to learn
    skipped_no_negative: int = 0  # prompts with hard negatives configured, none of which ranked below the positives
    duplicates: int = 0
    items: int = 0
    unfinished: int = 0  # candidates cut at max_new_tokens, kept / dropped / lowered as lists.unfinished says
    sources: dict[str, int] = field(default_factory=dict)


def dedupe(candidates: Sequence[Candidate]) -> tuple[list[Candidate], int]:
    """Keep the first occurrence of each (prompt_id, response, finished); return (kept, number dropped).

    A finished response and the same text cut at the token limit are different training sequences
    (one ends in EOS), so both are kept.
    """
    seen: set[tuple[str, str, bool]] = set()
    kept: list[Candidate] = []
    for c in candidates:
        key = (c.prompt_id, c.response, c.finished)
        if key not in seen:
            seen.add(key)
            kept.append(c)
    return kept, len(candidates) - len(kept)


def list_sizes(loss: str, top: int | None, bottom: int | None) -> tuple[int, int]:
    """(top, bottom) for ``top_bottom`` lists: the configured values, else the paper's per loss."""
    default_top, default_bottom = DEFAULT_TOP_BOTTOM[loss]
    return (default_top if top is None else top, default_bottom if bottom is None else bottom)


def build_list(
    candidates: Sequence[Candidate],
    strategy: Literal["top_bottom", "full"] = "full",
    top: int = 2,
    bottom: int = 2,
) -> RankedList | None:
    """The training list of one prompt's (deduplicated) candidates, or None when they all tie.

    ``full`` keeps every candidate, sorted by reward; ``top_bottom`` keeps the ``top`` best and
    the ``bottom`` worst (all of them when there are no more than top + bottom).
    """
    if not candidates:
        return None
    if len({c.prompt_id for c in candidates}) != 1:
        raise ValueError("build_list takes the candidates of one prompt")
    if len({c.reward for c in candidates}) < 2:
        return None
    ranked = sorted(candidates, key=lambda c: -c.reward)  # stable: ties keep incoming order
    if strategy == "top_bottom" and len(ranked) > top + bottom:
        ranked = ranked[:top] + ranked[len(ranked) - bottom :] if bottom else ranked[:top]
    elif strategy not in ("top_bottom", "full"):
        raise ValueError(f"unknown list strategy {strategy!r}; expected 'top_bottom' or 'full'")
    if len({c.reward for c in ranked}) < 2:
        return None
    return RankedList.of(ranked)


def list_with_negatives(
    own: Sequence[Candidate], negatives: Sequence[Candidate], top: int, bottom: int
) -> RankedList | None:
    """The prompt's ``top`` best own candidates, then its ``bottom`` lowest-scored negatives.

    Only negatives scored strictly below every positive are kept; a response that is also a
    positive is never a negative. None when no positive or no negative remains.
    """
    positives = sorted(own, key=lambda c: -c.reward)[:top]
    if not positives:
        return None
    floor = min(c.reward for c in positives)
    texts = {c.response for c in positives}
    kept, seen = [], set()
    for c in sorted(negatives, key=lambda c: c.reward):
        if c.reward < floor and c.response not in texts and c.response not in seen:
            kept.append(c)
            seen.add(c.response)
    if not kept:
        return None
    return RankedList.of(positives + sorted(kept[:bottom], key=lambda c: -c.reward))


def handle_unfinished(candidates: Sequence[Candidate], mode: Unfinished, floor: float) -> list[Candidate]:
    """``candidates`` with the unfinished ones kept, dropped, or given the reward ``floor`` (``lowest``)."""
    if mode == "keep":
        return list(candidates)
    if mode == "drop":
        return [c for c in candidates if c.finished]
    if mode == "lowest":
        return [c if c.finished else replace(c, reward=floor) for c in candidates]
    raise ValueError(f"unknown lists.unfinished {mode!r}; expected 'keep', 'drop' or 'lowest'")


def build_lists(
    candidates: Sequence[Candidate],
    strategy: Literal["top_bottom", "full"] = "full",
    top: int = 2,
    bottom: int = 2,
    negatives: Sequence[Candidate] | None = None,
    unfinished: Unfinished = "keep",
) -> tuple[list[RankedList], ListStats]:
    """Group candidates by prompt (first-seen order), deduplicate, and build one list per prompt.

    With ``negatives`` (scored hard negatives from another source, ``larpo.negatives``), each
    list is the prompt's ``top`` own candidates followed by its negatives
    (:func:`list_with_negatives`) instead of ``strategy``'s selection. Unfinished candidates and
    negatives are handled first (:func:`handle_unfinished`, over the prompt's own candidates and
    its negatives together).
    """
    kept, duplicates = dedupe(candidates)
    by_prompt: dict[str, list[Candidate]] = defaultdict(list)
    for c in kept:
        by_prompt[c.prompt_id].append(c)
    borrowed: dict[str, list[Candidate]] = defaultdict(list)
    for c in negatives or ():
        borrowed[c.prompt_id].append(c)
    stats = ListStats(duplicates=duplicates)
    lists: list[RankedList] = []
    for pid, group in by_prompt.items():
        theirs = borrowed.get(pid, [])
        stats.unfinished += sum(not c.finished for c in [*group, *theirs])
        floor = min(c.reward for c in [*group, *theirs])  # the prompt's lowest reward
        group, theirs = handle_unfinished(group, unfinished, floor), handle_unfinished(theirs, unfinished, floor)
        if negatives is None:
            ranked = build_list(group, strategy, top, bottom)
        else:
            ranked = list_with_negatives(group, theirs, top, bottom)
        if ranked is None:
            if negatives is not None and group:
                stats.skipped_no_negative += 1
            else:
                stats.skipped_tied += 1
            continue
        lists.append(ranked)
        stats.items += len(ranked.responses)
        for source in ranked.sources:
            stats.sources[source] = stats.sources.get(source, 0) + 1
    stats.lists = len(lists)
    return lists, stats
