"""From a prompt's scored candidates to the ranked list the policy is trained on.

Pure functions on plain data. A list is ordered best → worst by reward (the reranker's order);
ties keep the candidates' incoming order, so the result is deterministic.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Literal, Sequence

from .losses import DEFAULT_TOP_BOTTOM


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

    def to_row(self) -> dict:
        return asdict(self)

    @classmethod
    def from_row(cls, row: dict) -> "Candidate":
        return cls(**row)


@dataclass(frozen=True)
class RankedList:
    """A training list: one prompt's responses, best first, with their rewards and sources."""

    prompt_id: str
    prompt: str
    responses: tuple[str, ...]
    rewards: tuple[float, ...]
    sources: tuple[str, ...]

    def __post_init__(self) -> None:
        if not len(self.responses) == len(self.rewards) == len(self.sources):
            raise ValueError("responses, rewards and sources must have one entry per item")
        if len(self.responses) < 2:
            raise ValueError(f"list for prompt {self.prompt_id!r} has {len(self.responses)} item(s), expected at least 2")

    def to_row(self) -> dict:
        """The listwise JSONL format: prompt, responses, rewards (plus prompt_id and sources)."""
        return {
            "prompt_id": self.prompt_id,
            "prompt": self.prompt,
            "responses": list(self.responses),
            "rewards": list(self.rewards),
            "sources": list(self.sources),
        }

    @classmethod
    def from_row(cls, row: dict) -> "RankedList":
        return cls(
            prompt_id=row["prompt_id"],
            prompt=row["prompt"],
            responses=tuple(row["responses"]),
            rewards=tuple(float(r) for r in row["rewards"]),
            sources=tuple(row.get("sources") or ["own"] * len(row["responses"])),
        )


@dataclass
class ListStats:
    """What list building did: lists built, prompts skipped (all rewards tied), duplicates dropped."""

    lists: int = 0
    skipped_tied: int = 0
    duplicates: int = 0
    items: int = 0
    sources: dict[str, int] = field(default_factory=dict)


def dedupe(candidates: Sequence[Candidate]) -> tuple[list[Candidate], int]:
    """Keep the first occurrence of each (prompt_id, response); return (kept, number dropped)."""
    seen: set[tuple[str, str]] = set()
    kept: list[Candidate] = []
    for c in candidates:
        key = (c.prompt_id, c.response)
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
    first = ranked[0]
    return RankedList(
        prompt_id=first.prompt_id,
        prompt=first.prompt,
        responses=tuple(c.response for c in ranked),
        rewards=tuple(c.reward for c in ranked),
        sources=tuple(c.source for c in ranked),
    )


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
    items = positives + sorted(kept[:bottom], key=lambda c: -c.reward)
    return RankedList(
        prompt_id=positives[0].prompt_id,
        prompt=positives[0].prompt,
        responses=tuple(c.response for c in items),
        rewards=tuple(c.reward for c in items),
        sources=tuple(c.source for c in items),
    )


def build_lists(
    candidates: Sequence[Candidate],
    strategy: Literal["top_bottom", "full"] = "full",
    top: int = 2,
    bottom: int = 2,
    negatives: Sequence[Candidate] | None = None,
) -> tuple[list[RankedList], ListStats]:
    """Group candidates by prompt (first-seen order), deduplicate, and build one list per prompt.

    With ``negatives`` (scored hard negatives from another source, ``larpo.negatives``), each
    list is the prompt's ``top`` own candidates followed by its negatives
    (:func:`list_with_negatives`) instead of ``strategy``'s selection.
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
        if negatives is None:
            ranked = build_list(group, strategy, top, bottom)
        else:
            ranked = list_with_negatives(group, borrowed.get(pid, []), top, bottom)
        if ranked is None:
            stats.skipped_tied += 1
            continue
        lists.append(ranked)
        stats.items += len(ranked.responses)
        for source in ranked.sources:
            stats.sources[source] = stats.sources.get(source, 0) + 1
    stats.lists = len(lists)
    return lists, stats
