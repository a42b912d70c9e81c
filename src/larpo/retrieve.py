"""Retrieve and rerank: K samples per prompt from the policy, scored by the reranker, over processes.

The prompt pool is cut into fixed chunks of ``sampling.prompts_per_batch`` prompts; chunk c is
sampled with seed (run seed, iteration, c) by process c mod world and scored there, and the
chunks are gathered in pool order on every process. Neither the chunks nor their seeds depend on
the number of processes, so neither do the candidates. Hard negatives from another source
(``lists.negatives``) are drawn and scored here too.
"""

from __future__ import annotations

from dataclasses import replace

from accelerate import Accelerator
from tqdm.auto import tqdm

from .callables import UserCodeError
from .config import Config
from .lists import Candidate, list_sizes
from .negatives import borrowed, random_partners, similar_partners
from .parallel import gather_merged, my_share
from .rerankers import Reranker
from .sampling import generate
from .seeding import chunk_seed, stage_seed
from .tasks import Example


def _score_chunk(
    model, tokenizer, chunk: list[Example], reranker: Reranker, cfg: Config, iteration: int, seed: int,
    temperature: float, source: str,
) -> list[Candidate]:
    """K samples for each prompt of one chunk (one ``generate`` batch), scored by the reranker."""
    prompts = [ex.prompt for ex in chunk]
    samples = generate(
        model, tokenizer, prompts, cfg.sampling.k, temperature, cfg.sampling.max_new_tokens,
        top_p=cfg.sampling.top_p, batch_size=len(prompts), seed=seed, draw=cfg.sampling.draw,
    )
    flat = [(ex, sample) for ex, group in zip(chunk, samples) for sample in group]
    try:
        rewards = reranker.score([ex.prompt for ex, _ in flat], [sample.text for _, sample in flat])
    except UserCodeError as e:
        if e.prompt_id is not None:
            raise
        raise UserCodeError(f"{e} (prompt ids {chunk[0].prompt_id} to {chunk[-1].prompt_id})") from e.__cause__
    return [
        Candidate(ex.prompt_id, ex.prompt, sample.text, float(reward), temperature, source, iteration,
                  sample.ids, sample.finished)
        for (ex, sample), reward in zip(flat, rewards)
    ]


def sample_and_score(
    model, tokenizer, pool: list[Example], reranker: Reranker, cfg: Config, iteration: int,
    accelerator: Accelerator, progress: bool, temperature: float | None = None, source: str = "own",
) -> list[Candidate]:
    """K samples per prompt from the current policy, each scored by the reranker, in pool order.

    The pool is cut into chunks of ``sampling.prompts_per_batch`` prompts; chunk c is sampled with
    seed (run seed, iteration, c) by process c mod world, and the chunks are gathered on every
    process. Neither the chunks nor their seeds depend on the number of processes, so neither do
    the candidates. ``temperature`` (default ``sampling.temperature``) and ``source`` serve the
    separately sampled hard negatives, which draw from seeds of their own.
    """
    temperature = cfg.sampling.temperature if temperature is None else temperature
    salt = 0 if source == "own" else 500  # negatives never reuse the candidates' seeds
    size = cfg.sampling.prompts_per_batch
    chunks = [pool[start : start + size] for start in range(0, len(pool), size)]
    local = {
        c: _score_chunk(model, tokenizer, chunks[c], reranker, cfg, iteration,
                        chunk_seed(cfg.seed, iteration + salt, c), temperature, source)
        for c in tqdm(my_share(len(chunks), accelerator), desc="sampling", unit="batch", disable=not (progress and accelerator.is_main_process))
    }
    merged = gather_merged(local, accelerator)
    return [candidate for c in range(len(chunks)) for candidate in merged[c]]


def negative_candidates(
    model, tokenizer, pool: list[Example], candidates: list[Candidate], reranker: Reranker, cfg: Config,
    iteration: int, accelerator: Accelerator, progress: bool,
) -> list[Candidate]:
    """Scored hard negatives of ``lists.negatives`` for every pool prompt (none for ``own``)."""
    source = cfg.lists.negatives
    if source == "own":
        return []
    if source in ("own_low_temperature", "own_high_temperature"):
        temperature = cfg.lists.low_temperature if source == "own_low_temperature" else cfg.lists.high_temperature
        return sample_and_score(model, tokenizer, pool, reranker, cfg, iteration, accelerator, progress, temperature, source)
    prompts = {ex.prompt_id: ex.prompt for ex in pool}
    partners = (similar_partners(prompts) if source == "similar_prompt"
                else random_partners(list(prompts), stage_seed(cfg.seed, iteration)))
    _, bottom = list_sizes(cfg.train.loss, cfg.lists.top, cfg.lists.bottom)
    unscored = borrowed(candidates, partners, source, bottom)
    rewards = score_sharded(reranker, [c.prompt for c in unscored], [c.response for c in unscored], accelerator,
                            cfg.reranker.batch_size)
    return [replace(c, reward=float(r)) for c, r in zip(unscored, rewards)]


def score_sharded(
    reranker: Reranker, prompts: list, responses: list[str], accelerator: Accelerator, chunk_size: int
) -> list[float]:
    """``reranker.score`` over all pairs, in chunks of ``chunk_size`` dealt to processes; every process gets all scores."""
    starts = range(0, len(prompts), chunk_size)
    local = {c: reranker.score(prompts[starts[c] : starts[c] + chunk_size], responses[starts[c] : starts[c] + chunk_size])
             for c in my_share(len(starts), accelerator)}
    merged = gather_merged(local, accelerator)
    return [score for c in range(len(starts)) for score in merged[c]]
