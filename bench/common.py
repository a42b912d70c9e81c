"""Shared pieces of the throughput benchmarks: word-level tokenizer, models, seeded data, timing.

The tokenizer is word-level over the words ``w0 .. w{N-1}`` (whitespace split), so a text of n
words is exactly n tokens and larpo and TRL see the same ids. Responses are written with a
leading space (" w3 w9 …"): TRL concatenates prompt and completion as strings, and the space keeps
the last prompt word and the first response word apart.
"""

from __future__ import annotations

import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from larpo.config import ModelConfig
from larpo.models import EOS, PAD, UNK, build_tiny_model

# name -> (hidden, layers): "tiny" is the embedded default's shape (larpo.config.ModelConfig: 4 heads,
# MLP 512), "20M" the benchmark model (head dim 64, MLP 1344).
MODEL_SIZES = {"tiny": (128, 4), "20M": (512, 6)}


def word_tokenizer(n_words: int, directory: str | Path) -> PreTrainedTokenizerFast:
    """A WordLevel tokenizer over ``w0 .. w{n_words-1}`` with pad/eos/unk, saved to and reloaded from disk."""
    vocab = {PAD: 0, EOS: 1, UNK: 2, **{f"w{i}": i + 3 for i in range(n_words)}}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token=PAD, eos_token=EOS, unk_token=UNK)
    tok.save_pretrained(directory)
    return AutoTokenizer.from_pretrained(directory, local_files_only=True)


def build_model(tokenizer, hidden: int, layers: int, seed: int = 0, max_positions: int = 512):
    """A from-config Llama-style model via ``larpo.models.build_tiny_model``.

    At the embedded default's hidden size (128) it takes that default's heads and MLP width;
    otherwise head dim 64 and an MLP of ≈ 8/3 × hidden (a multiple of 64), as in Llama.
    """
    default = ModelConfig()
    if hidden == default.hidden_size:
        heads, inter = default.num_heads, default.intermediate_size
    else:
        heads, inter = max(1, hidden // 64), 64 * round(hidden * 8 / 3 / 64)
    cfg = ModelConfig(hidden_size=hidden, num_layers=layers, num_heads=heads, intermediate_size=inter,
                      max_position_embeddings=max_positions)
    return build_tiny_model(cfg, tokenizer, seed=seed)


def describe_model(model) -> str:
    c = model.config
    n = sum(p.numel() for p in model.parameters())
    return (f"Llama hidden {c.hidden_size}, {c.num_hidden_layers} layers, {c.num_attention_heads} heads, "
            f"MLP {c.intermediate_size}, vocab {c.vocab_size}, tied embeddings: {n / 1e6:.1f}M parameters")


def words(rng: random.Random, n_words: int, lo: int, hi: int) -> str:
    """``lo..hi`` (inclusive, chosen at random) space-separated words from the vocabulary."""
    return " ".join(f"w{rng.randrange(n_words)}" for _ in range(rng.randint(lo, hi)))


def make_lists(n: int, m: int, prompt_tokens: tuple[int, int], response_tokens: tuple[int, int],
               n_words: int, seed: int) -> list[dict]:
    """``n`` seeded rows {"prompt", "responses"}: prompt and response lengths in tokens (response EOS included)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        prompt = words(rng, n_words, *prompt_tokens)
        responses = [" " + words(rng, n_words, response_tokens[0] - 1, response_tokens[1] - 1) for _ in range(m)]
        rows.append({"prompt": prompt, "responses": responses})
    return rows


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class Timer:
    def __enter__(self):
        sync()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        sync()
        self.s = time.perf_counter() - self.t0


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_gpu_mb() -> float | None:
    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None


def run_worker(script: str, name: str, argv: list[str]) -> dict:
    """Re-invoke ``script --worker name`` with the same flags in a fresh process; return its RESULT json."""
    cmd = [sys.executable, script, *argv, "--worker", name]
    env = {**os.environ, "TQDM_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-6000:])
        raise SystemExit(f"worker {name} failed (exit code {proc.returncode})")
    print(f"  {name}: done in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return json.loads(lines[-1][len("RESULT "):])


def emit(result: dict) -> None:
    print("RESULT " + json.dumps(result), flush=True)


def table(headers: list[str], rows: list[list]) -> str:
    """A markdown table; floats are formatted by the caller."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---:" if i else "---" for i in range(len(headers))) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def quiet() -> None:
    """Silence library warnings and progress bars in a worker."""
    import warnings

    import transformers

    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        import datasets

        datasets.disable_progress_bars()
        datasets.disable_caching()
    except ImportError:
        pass


def machine() -> str:
    import platform

    import transformers

    parts = [f"{os.cpu_count()} CPU cores", f"torch {torch.__version__}", f"transformers {transformers.__version__}"]
    try:
        import trl

        parts.append(f"trl {trl.__version__}")
    except ImportError:
        pass
    if torch.cuda.is_available():
        parts.insert(0, torch.cuda.get_device_name(0))
    return f"{platform.machine()}, " + ", ".join(parts) + f", {torch.get_num_threads()} torch threads"
