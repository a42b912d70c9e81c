"""Shared fixtures: a tiny tokenizer and a tiny random Llama, built from scratch (no downloads).

``tiny_tokenizer`` and ``tiny_model_dir`` are built once per session and must not be mutated;
``tiny_model`` is a fresh model (seed 0) for every test, so a test may train or modify it.
"""

from __future__ import annotations

import os
import random

import pytest
import torch

from larpo.config import ModelConfig
from larpo.models import build_tiny_model, build_tokenizer, save_policy


# Tiny models run fastest on one thread, and two OpenMP threads spin badly when another process
# shares the cores (measured: a 0.06 s generate took 10 s).
torch.set_num_threads(1)


def arithmetic_corpus(n: int = 300, seed: int = 0) -> list[str]:
    """Strings like ``"123+456=579"`` and ``"12-57=-45"``."""
    rng = random.Random(seed)
    corpus = []
    for _ in range(n):
        a, b = rng.randint(0, 999), rng.randint(0, 999)
        corpus.append(f"{a}+{b}={a + b}" if rng.random() < 0.5 else f"{a}-{b}={a - b}")
    return corpus


def cpu_process_env(**extra: str) -> dict[str, str]:
    """The environment of a subprocess that sees no GPU and runs one torch thread: multi-process tests
    put their ranks on the CPU (gloo), which every machine has, whatever GPUs this one has."""
    return {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", **extra}


# Smaller than the default so that tests stay fast; still a real LlamaForCausalLM.
TINY = ModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_position_embeddings=64)


@pytest.fixture(scope="session")
def tiny_model_config() -> ModelConfig:
    return TINY


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tokenizer(arithmetic_corpus(), vocab_size=96)


@pytest.fixture
def tiny_model(tiny_tokenizer):
    return build_tiny_model(TINY, tiny_tokenizer, seed=0)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer):
    """A saved policy directory (config, tokenizer, safetensors) holding ``tiny_model``'s weights."""
    directory = tmp_path_factory.mktemp("tiny") / "policy"
    save_policy(build_tiny_model(TINY, tiny_tokenizer, seed=0), tiny_tokenizer, directory)
    return directory
