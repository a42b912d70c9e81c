"""Seeds of every stage, derived from the run seed, so a resumed run draws what an uninterrupted one does."""

from __future__ import annotations

from transformers import set_seed


def stage_seed(seed: int, iteration: int) -> int:
    """The seed of one iteration's stages (list shuffles, partner draws, LoRA init, dropout)."""
    return seed * 1000 + iteration


def chunk_seed(seed: int, iteration: int, chunk: int) -> int:
    """The sampling seed of one chunk of the prompt pool: fixed by the chunk, not by the process."""
    return stage_seed(seed, iteration) * 1_000_000 + chunk


def seed_everything(seed: int) -> None:
    """Seed python's, numpy's and torch's global generators (CUDA's too, where there is one)."""
    set_seed(seed)
