"""Sampling throughput: ``larpo.sampling.generate``, which prefills each prompt once and copies its
KV cache to the K samples (then decodes with the cache written in place), with ``generate``'s draw
and with ``draw="inverse_cdf"`` (larpo's default), against HF ``generate`` with ``num_return_sequences=K``, which
copies each prompt K times before its prefill (larpo's sampling path before).

Run from the repository root after ``bash scripts/fetch-smollm2.sh`` (``bash scripts/bench.sh``
does both and runs ``train_throughput.py`` too):

    .venv/bin/python bench/sample_throughput.py            # SmolLM2-135M-Instruct, 64 chat prompts, K = 8
    .venv/bin/python bench/sample_throughput.py --quick    # 16 prompts: about a minute and a half on 2 cores
    .venv/bin/python bench/sample_throughput.py --smoke    # a tiny random model, no SmolLM2 needed
    .venv/bin/python bench/sample_throughput.py --model smollm2-shape   # SmolLM2's shape, random weights (GPU check)

Prompts are the held-out prompts of ``task.name=chat_arithmetic`` (2-digit addition) through
SmolLM2's chat template, which adds a default system prompt (45–48 tokens per prompt). All
paths sample at temperature 0.7, top_p 1, up to 16 new tokens, 32 prompts per ``generate`` call
(``sampling.prompts_per_batch``'s default), with the same seed: they draw from the same
distribution (``tests/test_sampling.py``). Per path: the total time; the prefill time, which is the
model's forward calls on more than one token per row (each prompt K times in HF's path; all but the
last prompt token, once, in larpo's), timed by forward hooks; decode = total − prefill (forward
calls on one token per row, and ``generate``'s own work). larpo's second row is its default,
``draw="inverse_cdf"`` (``sampling.draw``), which draws the same distribution from other random
numbers, so its token count differs. Tokens are generated tokens up to and including EOS. One
warm-up call on two prompts per path, then the median of ``--repeats``, the paths' repeats
interleaved. A vLLM row appears only when ``import vllm`` works and CUDA is
available.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import sys
import tempfile
import time

import torch

import common
from larpo.config import TaskConfig
from larpo.encoding import encode_prompt, pad_id
from larpo.models import load_policy
from larpo import sampling
from larpo.logprobs import left_pad
from larpo.sampling import generate, split_at_eos
from larpo.tasks import build_task

RANDOM_MODELS = {"tiny": ("tiny", (16, 48)), "smollm2-shape": ("smollm2", (45, 48))}  # shape, prompt words
SMOKE = {"model": "tiny", "prompts": 4, "max_new_tokens": 8, "repeats": 1}
QUICK = {"prompts": 16, "repeats": 1}


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=common.SMOLLM2_DIR, help="a policy directory with a chat template "
                   "(default: %(default)s), or 'tiny' / 'smollm2-shape': a random model of that shape with the "
                   "word tokenizer and prompts of random words (16-48 / 45-48 words)")
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--ks", default="8", help="comma-separated K values")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--batch-prompts", type=int, default=32, help="prompts per model.generate call (larpo's default)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--quick", action="store_true", help=f"{QUICK}; explicit flags still win")
    p.add_argument("--smoke", action="store_true", help=f"{SMOKE}; explicit flags still win")
    p.add_argument("--result", action="store_true", help="end with a RESULT line: the speed-ups as JSON")
    a = p.parse_args(argv)
    given = " ".join(argv if argv is not None else sys.argv[1:])
    for preset, on in ((SMOKE, a.smoke), (QUICK, a.quick)):
        for key, value in preset.items():
            if on and f"--{key.replace('_', '-')}" not in given:
                setattr(a, key, value)
    return a


@torch.no_grad()
def k_copies(model, tokenizer, prompts, k, temperature, max_new_tokens, batch_size, seed):
    """HF ``generate`` with ``num_return_sequences=k`` on left-padded prompts: larpo's sampling before it prefilled once."""
    pad, responses = pad_id(tokenizer), []
    with torch.random.fork_rng(devices=[] if model.device.type == "cpu" else [model.device], device_type=model.device.type):
        torch.manual_seed(seed)
        for start in range(0, len(prompts), batch_size):
            input_ids, attention_mask = left_pad([encode_prompt(tokenizer, p) for p in prompts[start : start + batch_size]], pad)
            out = model.generate(input_ids=input_ids.to(model.device), attention_mask=attention_mask.to(model.device),
                                 max_new_tokens=max_new_tokens, num_return_sequences=k, do_sample=True,
                                 temperature=temperature, top_p=1.0, top_k=0, eos_token_id=tokenizer.eos_token_id,
                                 pad_token_id=pad)
            samples = [split_at_eos(tokenizer, ids) for ids in out[:, input_ids.shape[1] :].tolist()]
            responses.extend(samples[i : i + k] for i in range(0, len(samples), k))
    return responses


class PrefillClock:
    """Seconds spent in the model's forward calls on more than one token per row (the prefill)."""

    def __init__(self, model):
        self.seconds, self.start = 0.0, None
        self.handles = [model.register_forward_pre_hook(self.before, with_kwargs=True),
                        model.register_forward_hook(self.after, with_kwargs=True)]

    def before(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None and ids.shape[1] > 1:
            common.sync()
            self.start = time.perf_counter()

    def after(self, module, args, kwargs, output):
        if self.start is not None:
            common.sync()
            self.seconds += time.perf_counter() - self.start
            self.start = None


def larpo_path(draw: str):
    """A path: ``larpo.sampling.generate`` with the token drawn as ``draw`` says."""
    return lambda m, t, p, k, temp, new, b, s: generate(m, t, p, k, temp, new, batch_size=b, seed=s, draw=draw)


def in_place(path, m, t, p, k, temp, new, b, s):
    """``path`` (a larpo path) with the KV cache written in place (``_PreallocatedLayer``) on this device too."""
    saved = sampling.PREALLOCATED_CACHE_DEVICES
    sampling.PREALLOCATED_CACHE_DEVICES = (*saved, m.device.type)
    try:
        return path(m, t, p, k, temp, new, b, s)
    finally:
        sampling.PREALLOCATED_CACHE_DEVICES = saved


def tokens(groups) -> int:
    return sum(len(s.ids) + s.finished for group in groups for s in group)


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

    from larpo.models import save_policy

    with tempfile.TemporaryDirectory() as tmp:
        save_policy(model, tok, tmp)
        llm = LLM(model=tmp, dtype="bfloat16", seed=a.seed, gpu_memory_utilization=0.3)
        params = SamplingParams(n=k, temperature=a.temperature, top_p=1.0, max_tokens=a.max_new_tokens, seed=a.seed)
        inputs = [TokensPrompt(prompt_token_ids=encode_prompt(tok, p)) for p in prompts]

        def run() -> int:
            outs = llm.generate(inputs, params, use_tqdm=False)
            return sum(len(c.token_ids) for o in outs for c in o.outputs)

        run()
        times, n = [], 0
        for _ in range(a.repeats):
            with common.Timer() as t:
                n = run()
            times.append(t.s)
    return n / common.median(times)


def load(a, tmp: str):
    """The model, its tokenizer and the prompts."""
    if a.model in RANDOM_MODELS:
        name, (lo, hi) = RANDOM_MODELS[a.model]
        shape = dataclasses.replace(common.SHAPES[name], weights=None)
        tok = common.word_tokenizer(shape.vocab - 3, tmp)
        rng = random.Random(a.seed)
        prompts = [common.words(rng, shape.vocab - 3, lo, hi) for _ in range(a.prompts)]
        return common.build_model(tok, shape, a.seed), tok, prompts
    directory = common.ROOT / a.model if not a.model.startswith("/") else a.model
    if not (directory / "config.json").is_file():
        raise SystemExit(f"{directory}: no model there; run `bash scripts/fetch-smollm2.sh` first (or pass --model)")
    model, tok = load_policy(directory)
    examples = build_task(TaskConfig(name="chat_arithmetic")).eval_examples()[: a.prompts]
    return model, tok, [e.prompt for e in examples]


def main() -> int:
    a = parse()
    common.quiet()
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = common.device()
    with tempfile.TemporaryDirectory() as tmp:
        model, tok, prompts = load(a, tmp)
        model = model.to(dev).eval()
        if dev.type == "cuda":
            model = model.to(torch.bfloat16)
        lengths = [len(encode_prompt(tok, p)) for p in prompts]
        paths = {
            "HF generate, K copies of each prompt (before)": k_copies,
            "larpo.sampling.generate, prefilled once, generate's draw": larpo_path("multinomial"),
            "the same, draw=inverse_cdf (larpo's default)": larpo_path("inverse_cdf"),
        }
        if dev.type not in sampling.PREALLOCATED_CACHE_DEVICES:  # what writing the cache in place would do here
            paths["larpo, cache written in place (the CPU's way)"] = lambda *args: in_place(larpo_path("multinomial"), *args)
        no_vllm = vllm_status()
        rows, speedups = [], {}
        for k in (int(x) for x in a.ks.split(",")):
            clock = PrefillClock(model)
            runs: dict[str, dict] = {name: {"total": [], "prefill": []} for name in paths}
            for fn in paths.values():
                fn(model, tok, prompts[:2], k, a.temperature, a.max_new_tokens, a.batch_prompts, a.seed)  # warm-up
            for _ in range(a.repeats):
                for name, fn in paths.items():
                    clock.seconds = 0.0
                    with common.Timer() as t:
                        out = fn(model, tok, prompts, k, a.temperature, a.max_new_tokens, a.batch_prompts, a.seed)
                    runs[name]["total"].append(t.s), runs[name]["prefill"].append(clock.seconds)
                    runs[name]["tokens"] = tokens(out)
            for handle in clock.handles:
                handle.remove()
            speed = {}
            for name, r in runs.items():
                total, prefill = common.median(r["total"]), common.median(r["prefill"])
                speed[name] = r["tokens"] / total
                rows.append([name, k, len(prompts) * k, r["tokens"], f"{total:.2f}", f"{prefill:.2f}", f"{total - prefill:.2f}",
                             f"{speed[name]:.1f}", f"{speed[name] / next(iter(speed.values())):.2f}x"])
            speedups[k] = [speed[name] / speed[list(paths)[0]] for name in list(paths)[1:]]  # larpo's paths, in order
            if no_vllm is None:
                rows.append(["vLLM", k, len(prompts) * k, "", "", "", "", f"{vllm_tokens_per_s(model, tok, prompts, k, a):.1f}", ""])
            print(f"  K={k}: " + ", ".join(f"{n}: {common.median(r['total']):.1f} s" for n, r in runs.items()),
                  file=sys.stderr, flush=True)
        described = common.describe_model(model)
    print(f"\nMachine: {common.machine()}\nModel: {a.model}: {described}")
    print(f"{len(prompts)} prompts of {min(lengths)}-{max(lengths)} tokens (mean {sum(lengths) / len(lengths):.1f}), up to "
          f"{a.max_new_tokens} new tokens, temperature {a.temperature}, {a.batch_prompts} prompts per generate call, "
          f"{'bf16' if dev.type == 'cuda' else 'fp32'} on {dev.type}, median of {a.repeats}\n")
    print(common.table(["path", "K", "samples", "tokens", "total s", "prefill s", "decode s", "tok/s", "/ before"], rows))
    if no_vllm is not None:
        print(f"\nvLLM row skipped: vllm {no_vllm}.")
    for k, (ratio, inverse_cdf, *_) in speedups.items():
        verdict = "met" if round(ratio, 2) >= 2.0 else "missed"
        print(f"\nPrefilled once / K copies at K={k}: {ratio:.2f}x tokens/s" + (f" (target >= 2x at K=8: {verdict})" if k == 8 else "")
              + f"; with sampling.draw=inverse_cdf: {inverse_cdf:.2f}x")
    if a.result:
        common.emit({"sampling": {k: dict(zip(("prefilled_once", "inverse_cdf", "in_place"), v)) for k, v in speedups.items()},
                     "device": dev.type})
    return 0


if __name__ == "__main__":
    sys.exit(main())
