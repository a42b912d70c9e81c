"""Hard-negative sources (LarPO's second IR principle), as pure functions on candidates.

From easiest to hardest, the paper's negatives for a prompt are: a response to an unrelated
prompt (``random_prompt``), a response to a similar but different prompt (``similar_prompt``),
an own wrong response sampled at a high temperature (``own_high_temperature``) and an own wrong
response at a low temperature (``own_low_temperature``). The default, ``own``, takes the
lowest-ranked of the prompt's own K samples.

Whatever the source, a negative is scored by the reranker against *this* prompt and kept only if
it ranks below every positive of the list.
"""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Sequence

from .lists import Candidate

SOURCES = ("own", "own_low_temperature", "own_high_temperature", "similar_prompt", "random_prompt")


def random_partners(prompt_ids: Sequence[str], seed: int) -> dict[str, str]:
    """For each prompt, a different prompt chosen uniformly at random (seeded)."""
    if len(prompt_ids) < 2:
        raise ValueError("borrowing negatives from other prompts needs at least two prompts")
    rng = random.Random(seed)
    partners = {}
    for i, pid in enumerate(prompt_ids):
        j = rng.randrange(len(prompt_ids) - 1)
        partners[pid] = prompt_ids[j + (j >= i)]
    return partners


def similar_partners(prompts: dict[str, str]) -> dict[str, str]:
    """For each prompt, the most similar other prompt by TF-IDF cosine over character n-grams.

    Character 1–3-grams, so that "37+48=" and "37+41=" are neighbours. Ties go to the prompt
    that comes first.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.metrics.pairwise import cosine_similarity

    ids = list(prompts)
    if len(ids) < 2:
        raise ValueError("borrowing negatives from other prompts needs at least two prompts")
    texts = [p if isinstance(p, str) else str(p) for p in prompts.values()]
    vectors = TfidfVectorizer(analyzer="char", ngram_range=(1, 3)).fit_transform(texts)
    similarity = cosine_similarity(vectors)
    for i in range(len(ids)):
        similarity[i, i] = -1.0
    return {pid: ids[int(similarity[i].argmax())] for i, pid in enumerate(ids)}


def borrowed(
    candidates: Sequence[Candidate], partners: dict[str, str], source: str, per_prompt: int
) -> list[Candidate]:
    """Responses of each prompt's partner, re-addressed to the prompt (rewards still unscored).

    Takes the partner's ``per_prompt`` best-rewarded responses — plausible answers, wrong for
    this prompt. The returned candidates carry reward ``nan`` until the reranker scores them.
    """
    by_prompt: dict[str, list[Candidate]] = defaultdict(list)
    for c in candidates:
        by_prompt[c.prompt_id].append(c)
    prompt_text = {pid: group[0].prompt for pid, group in by_prompt.items()}
    out = []
    for pid, partner in partners.items():
        best = sorted(by_prompt.get(partner, []), key=lambda c: -c.reward)[:per_prompt]
        out += [Candidate(pid, prompt_text[pid], c.response, float("nan"), c.temperature, source, c.iteration) for c in best]
    return out
