"""Shared pieces of the throughput benchmarks: model shapes, word-level tokenizer, seeded data,
model FLOPs, the machine's matmul peak, timing and worker processes.

The tokenizer is word-level over the words ``w0 .. w{N-1}`` (whitespace split), so a text of n
words is exactly n tokens and larpo and TRL see the same ids. Responses are written with a
leading space (" w3 w9 …"): TRL concatenates prompt and completion as strings, and the space keeps
the last prompt word and the first response word apart. A shape's vocabulary is filled exactly
(3 special tokens + words), so the LM head has the model's real width (49,152 for SmolLM2).
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from larpo.models import EOS, PAD, UNK, load_options
from larpo.packing import flops_per_pair, flops_per_position

ROOT = Path(__file__).resolve().parent.parent
SMOLLM2_DIR = "models/SmolLM2-135M-Instruct"  # where `bash scripts/fetch-smollm2.sh` puts the model


@dataclass(frozen=True)
class Shape:
    """A Llama-style model shape; ``weights``: a model directory (relative to the repository root)
    whose weights are loaded instead of a random initialisation when it exists."""

    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    mlp: int
    vocab: int
    rope_theta: float = 10000.0
    weights: str | None = None

    def shrunk(self) -> "Shape":
        """The same vocabulary on a one-layer, hidden-64 body with random weights: for ``--smoke`` runs."""
        return dataclasses.replace(self, name=f"{self.name} shrunk", hidden=64, layers=1, heads=1, kv_heads=1,
                                   mlp=128, weights=None)


# "tiny": the embedded default's shape (larpo.config.ModelConfig) over the benchmark's 4,096 words;
# "20M": the benchmark model (head dim 64, MLP ≈ 8/3 × hidden); "smollm2": SmolLM2-135M-Instruct;
# "1B": Llama 3.2 1B's shape (random weights), for MFU on a GPU.
SHAPES = {
    "tiny": Shape("tiny", 128, 4, 4, 4, 512, 4099),
    "20M": Shape("20M", 512, 6, 8, 8, 1344, 4099),
    "smollm2": Shape("SmolLM2-135M", 576, 30, 9, 3, 1536, 49152, rope_theta=100000.0, weights=SMOLLM2_DIR),
    "1B": Shape("Llama-1B", 2048, 16, 32, 8, 8192, 128256, rope_theta=500000.0),
}


def word_tokenizer(n_words: int, directory: str | Path) -> PreTrainedTokenizerFast:
    """A WordLevel tokenizer over ``w0 .. w{n_words-1}`` with pad/eos/unk, saved to and reloaded from disk."""
    vocab = {PAD: 0, EOS: 1, UNK: 2, **{f"w{i}": i + 3 for i in range(n_words)}}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token=PAD, eos_token=EOS, unk_token=UNK)
    tok.save_pretrained(directory)
    return AutoTokenizer.from_pretrained(directory, local_files_only=True)


def llama_config(tokenizer, shape: Shape, max_positions: int = 512) -> LlamaConfig:
    """The config of a Llama of ``shape`` with tied embeddings; pad and EOS are the tokenizer's."""
    return LlamaConfig(
        vocab_size=shape.vocab, hidden_size=shape.hidden, num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads, intermediate_size=shape.mlp,
        rope_parameters={"rope_type": "default", "rope_theta": shape.rope_theta},
        max_position_embeddings=max_positions, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
    )


def build_model(tokenizer, shape: Shape, seed: int = 0, max_positions: int = 512,
                device: torch.device | str = "cpu") -> LlamaForCausalLM:
    """A Llama of ``shape`` with tied embeddings: ``shape.weights`` when that directory holds a model, else
    randomly initialised from ``seed`` on ``device`` (the global RNGs are left as they were; a model built
    on a GPU draws from its generator). Pad and EOS are the tokenizer's."""
    weights = ROOT / shape.weights if shape.weights else None
    if weights is not None and (weights / "config.json").is_file():
        model = LlamaForCausalLM.from_pretrained(weights, dtype=torch.float32, **load_options())
        model.config.pad_token_id, model.config.eos_token_id = tokenizer.pad_token_id, tokenizer.eos_token_id
        return model.to(device)
    config = llama_config(tokenizer, shape, max_positions)
    device = torch.device(device)
    with torch.random.fork_rng(devices=[] if device.type == "cpu" else [device], device_type=device.type), device:
        torch.manual_seed(seed)
        return LlamaForCausalLM(config)


def describe_model(model) -> str:
    c = model.config
    n = sum(p.numel() for p in model.parameters())
    source = f"weights of {c._name_or_path}" if c._name_or_path else "from config, random weights"
    return (f"Llama hidden {c.hidden_size}, {c.num_hidden_layers} layers, {c.num_attention_heads} heads "
            f"({c.num_key_value_heads} key/value), MLP {c.intermediate_size}, vocab {c.vocab_size}, tied embeddings: "
            f"{n / 1e6:.1f}M parameters ({source})")


def forward_flops(config, prompt: int, responses: list[int], shared: bool) -> float:
    """Model FLOPs of one forward pass over a list of ``prompt`` tokens and ``responses`` (token counts):
    the prompt once with every response on top of it (``shared``), or each response after its own copy.

    Per layer, larpo's own FLOP model (the one its layout choice uses): ``larpo.packing.flops_per_position``
    per token (2 per decoder-layer weight) and ``flops_per_pair`` per (query, key) pair of causal
    attention; and 2 × hidden × vocab for the LM head on each response token (the positions whose
    log-probs are taken). Padding and recomputation (checkpointing) do not count.
    """
    h, n_layers = config.hidden_size, config.num_hidden_layers
    per_token, per_key = n_layers * flops_per_position(config), n_layers * flops_per_pair(config)

    def causal(n: int) -> float:  # (query, key) pairs of n tokens attending causally
        return n * (n + 1) / 2

    if shared:
        tokens = prompt + sum(responses)
        attention = causal(prompt) + sum(r * prompt + causal(r) for r in responses)
    else:
        tokens = sum(prompt + r for r in responses)
        attention = sum(causal(prompt + r) for r in responses)
    return per_token * tokens + per_key * attention + 2 * h * config.vocab_size * sum(responses)


def matmul_peak() -> float:
    """The machine's measured matmul peak in FLOP/s: the fastest of a few square matmuls with the current
    threads (fp32, n = 2048 and 4096 on CPU; bf16, n = 4096 and 8192 on CUDA)."""
    dev = device()
    dtype, sizes = (torch.bfloat16, (4096, 8192)) if dev.type == "cuda" else (torch.float32, (2048, 4096))
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n, dtype=dtype, device=dev), torch.randn(n, n, dtype=dtype, device=dev)
        a @ b
        for _ in range(2):
            with Timer() as t:
                a @ b
            best = max(best, 2 * n**3 / t.s)
    return best


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
