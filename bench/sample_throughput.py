"""Sampling throughput: ``larpo.sampling.generate`` batched against one prompt at a time.

Run from the repository root:

    .venv/bin/python bench/sample_throughput.py            # the full run (see docs/performance.md)
    .venv/bin/python bench/sample_throughput.py --smoke    # everything shrunk: well under a minute

For each model size (``tiny``: hidden 128, 4 layers, the embedded default's shape; ``20M``: hidden
512, 6 layers, the model of ``train_throughput.py``) and each K, the same seeded prompts are sampled
(temperature 1, top_p 1, HF ``generate`` with its KV cache):

* batched: one ``generate`` call over all prompts, ``batch_size=--batch-prompts`` prompts per
  ``model.generate`` call, each with ``num_return_sequences=K`` (what larpo's loop does);
* one prompt at a time: a Python loop calling ``generate`` on a single prompt with ``k=K``
  (``num_return_sequences=K``, so the K samples of one prompt are still one batch of K rows).

Tokens = generated tokens up to and including EOS (a response that hits ``--max-new-tokens`` counts
that many); with the word-level tokenizer a response of n words is n tokens. Special tokens other
than EOS that a random model happens to sample (pad, unk: 2 of ~4,100 ids) are dropped by the
decoder and not counted, an undercount of well under 0.1 % that is the same for both columns.
One warm-up call per (size, K), then the median of ``--repeats`` timings. A vLLM column appears
only when ``import vllm`` works and CUDA is available.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile

import torch

import common
from larpo.sampling import generate

SMOKE = {"prompts": 4, "max_new_tokens": 8, "repeats": 1, "sizes": "tiny", "words": 256}


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--prompt-tokens", type=int, nargs=2, default=(16, 48), metavar=("LO", "HI"))
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--ks", default="2,10,32", help="comma-separated K values")
    p.add_argument("--sizes", default="tiny,20M", help=f"comma-separated, from {', '.join(common.MODEL_SIZES)}")
    p.add_argument("--batch-prompts", type=int, default=32, help="prompts per model.generate call (larpo's default)")
    p.add_argument("--words", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--smoke", action="store_true", help=f"shrink everything: {SMOKE}; explicit flags still win")
    a = p.parse_args(argv)
    if a.smoke:
        given = " ".join(argv if argv is not None else sys.argv[1:])
        for key, value in SMOKE.items():
            if f"--{key.replace('_', '-')}" not in given:
                setattr(a, key, value)
    return a


def count_tokens(responses: list[list[str]], max_new: int) -> int:
    return sum(min(len(r.split()) + 1, max_new) for group in responses for r in group)


def timed(fn, repeats: int) -> tuple[float, int]:
    """(median seconds, tokens of the last run) of ``fn()`` after one warm-up call."""
    fn()
    times, tokens = [], 0
    for _ in range(repeats):
        with common.Timer() as t:
            tokens = fn()
        times.append(t.s)
    return common.median(times), tokens


def vllm_status() -> str | None:
    """None when vLLM can run here, else why not."""
    try:
        import vllm  # noqa: F401
    except Exception as e:  # ImportError, or a broken CUDA install
        return f"not importable ({type(e).__name__})"
    return None if torch.cuda.is_available() else "no CUDA device"


def vllm_tokens_per_s(model, tok, prompts: list[str], k: int, a) -> float:
    """Generated tokens/s with vLLM on the same weights and prompts (CUDA only; not run on CPU machines)."""
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    from larpo.encoding import encode_prompt
    from larpo.models import save_policy

    with tempfile.TemporaryDirectory() as tmp:
        save_policy(model, tok, tmp)
        llm = LLM(model=tmp, dtype="bfloat16", seed=a.seed, gpu_memory_utilization=0.3)
        params = SamplingParams(n=k, temperature=1.0, top_p=1.0, max_tokens=a.max_new_tokens, seed=a.seed)
        inputs = [TokensPrompt(prompt_token_ids=encode_prompt(tok, p)) for p in prompts]

        def run() -> int:
            outs = llm.generate(inputs, params, use_tqdm=False)
            return sum(len(c.token_ids) for o in outs for c in o.outputs)

        seconds, tokens = timed(run, a.repeats)
        del llm
    return tokens / seconds


def main() -> int:
    a = parse()
    common.quiet()
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = common.device()
    rng = random.Random(a.seed)
    prompts = [common.words(rng, a.words, *a.prompt_tokens) for _ in range(a.prompts)]
    ks = [int(k) for k in a.ks.split(",")]
    no_vllm = vllm_status()
    rows, models = [], []
    with tempfile.TemporaryDirectory() as tmp:
        tok = common.word_tokenizer(a.words, tmp)
        for size in a.sizes.split(","):
            hidden, layers = common.MODEL_SIZES[size]
            model = common.build_model(tok, hidden, layers, a.seed).to(dev)
            if dev.type == "cuda":
                model = model.to(torch.bfloat16)
            models.append(f"{size}: {common.describe_model(model)}")
            for k in ks:
                def batched() -> int:
                    out = generate(model, tok, prompts, k, 1.0, a.max_new_tokens, batch_size=a.batch_prompts, seed=a.seed)
                    return count_tokens(out, a.max_new_tokens)

                def one_at_a_time() -> int:
                    out = [g for i, p in enumerate(prompts)
                           for g in generate(model, tok, [p], k, 1.0, a.max_new_tokens, batch_size=1, seed=a.seed + i)]
                    return count_tokens(out, a.max_new_tokens)

                t_b, n_b = timed(batched, a.repeats)
                t_1, n_1 = timed(one_at_a_time, a.repeats)
                row = [size, k, a.prompts * k, f"{n_b / t_b:.0f}", f"{n_1 / t_1:.0f}", f"{(n_b / t_b) / (n_1 / t_1):.2f}x"]
                if no_vllm is None:
                    row.append(f"{vllm_tokens_per_s(model, tok, prompts, k, a):.0f}")
                rows.append(row)
                print(f"  {size} K={k}: batched {t_b:.2f} s, one at a time {t_1:.2f} s", file=sys.stderr, flush=True)
            del model
    head = ["model", "K", "samples", "batched tok/s", "one prompt at a time tok/s", "batched / one-at-a-time"]
    if no_vllm is None:
        head.append("vLLM tok/s")
    print(f"\nMachine: {common.machine()}\nModels: " + "; ".join(models))
    print(f"{a.prompts} prompts of {a.prompt_tokens[0]}-{a.prompt_tokens[1]} tokens, up to {a.max_new_tokens} new "
          f"tokens, temperature 1, {a.batch_prompts} prompts per generate call, "
          f"{'bf16' if dev.type == 'cuda' else 'fp32'} on {dev.type}, median of {a.repeats}\n")
    print(common.table(head, rows))
    if no_vllm is not None:
        print(f"\nvLLM column skipped: vllm {no_vllm}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
