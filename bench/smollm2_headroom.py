"""How much room the base SmolLM2-135M-Instruct leaves on ``chat_arithmetic`` (2-digit addition).

Run from the repository root, after ``bash scripts/fetch-smollm2.sh``:

    OMP_NUM_THREADS=1 .venv/bin/python bench/smollm2_headroom.py    # about 6 minutes on 2 busy CPU cores

The held-out prompts are the first ``--prompts`` of ``task.name=chat_arithmetic`` with the default
task config (2 digits, ``+``, seed 1234), i.e. the prompts a run evaluates on. Decoding is
:func:`larpo.sampling.generate` (chat template through :func:`larpo.encoding.encode_prompt`, stop
at EOS = ``<|im_end|>``). Columns:

- greedy: mean graded reward, strict accuracy (``task.exact``: the reply is exactly the number),
  lenient accuracy (``task.correct``: the last integer in the reply is the answer), and the share
  of replies that ended with EOS within ``max_new_tokens``;
- sampled, on the first ``--sample-prompts`` prompts, K = 8 samples per prompt at each
  (temperature, max_new_tokens) of ``--grid``; the K = 4 rows use the first 4 of those 8 samples
  (samples are independent, so this is a K = 4 draw). ``not tied``: the share of prompts whose K
  rewards are not all equal — the prompts a ranked list can be built from; ``mean``: mean reward
  of the samples; ``best``: mean over prompts of the best of the K rewards; ``strict`` and
  ``lenient``: shares of the samples that are right in either reading; ``EOS``: as above.

A reply ended with EOS when the sampler says it finished (``Sample.finished``: the policy emitted
EOS within ``max_new_tokens``).
"""

from __future__ import annotations

import argparse
import time

import torch

from larpo.config import TaskConfig
from larpo.models import load_policy
from larpo.sampling import generate
from larpo.tasks import build_task


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="models/SmolLM2-135M-Instruct", help="policy directory (default: %(default)s)")
    p.add_argument("--prompts", type=int, default=64, help="held-out prompts for greedy decoding")
    p.add_argument("--sample-prompts", type=int, default=32, help="held-out prompts for sampling")
    p.add_argument("--k", type=int, default=8, help="samples per prompt (rows for K and K/2)")
    p.add_argument("--greedy-lengths", default="16,24", help="max_new_tokens of the greedy rows")
    p.add_argument("--grid", default="0.7:16,1.0:16,0.7:24", help="temperature:max_new_tokens of the sampled rows")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def main(argv=None) -> None:
    args = parse(argv)
    torch.set_num_threads(1)
    task = build_task(TaskConfig(name="chat_arithmetic"))
    examples = task.eval_examples()[: args.prompts]
    model, tokenizer = load_policy(args.model)
    print(f"{args.model}: EOS {tokenizer.eos_token!r}; {len(examples)} held-out prompts, e.g. {examples[0].prompt!r}")

    print("\ngreedy          max_new  reward  strict  lenient   EOS    time")
    for length in map(int, args.greedy_lengths.split(",")):
        start = time.time()
        samples = [g[0] for g in generate(model, tokenizer, [e.prompt for e in examples], 1, 0.0, length, batch_size=64)]
        pairs = [(e, s.text) for e, s in zip(examples, samples)]
        print(f"{'':15} {length:7d}  {mean(task.reward(e.prompt, r) for e, r in pairs):6.3f}"
              f"  {mean(task.exact(e.prompt, r) for e, r in pairs):6.3f}  {mean(task.correct(e.prompt, r) for e, r in pairs):7.3f}"
              f"  {mean(s.finished for s in samples):5.2f}  {time.time() - start:5.0f}s")
    for e, r in pairs[:4]:
        print(f"  {e.prompt!r} -> {r!r}")

    sampled = examples[: args.sample_prompts]
    print(f"\nsampled ({len(sampled)} prompts)   K     T  max_new  not tied   mean   best  strict  lenient   EOS    time")
    for cell in args.grid.split(","):
        temperature, length = float(cell.split(":")[0]), int(cell.split(":")[1])
        start = time.time()
        groups = generate(model, tokenizer, [e.prompt for e in sampled], args.k, temperature, length,
                          batch_size=16, seed=args.seed)
        seconds = time.time() - start
        for k in (args.k // 2, args.k):
            rewards = [[task.reward(e.prompt, s.text) for s in g[:k]] for e, g in zip(sampled, groups)]
            flat = [(e, s) for e, g in zip(sampled, groups) for s in g[:k]]
            print(f"{'':22} {k:3d}  {temperature:4.1f}  {length:7d}  {mean(len(set(rw)) > 1 for rw in rewards):8.3f}"
                  f"  {mean(x for rw in rewards for x in rw):5.3f}  {mean(max(rw) for rw in rewards):5.3f}"
                  f"  {mean(task.exact(e.prompt, s.text) for e, s in flat):6.3f}"
                  f"  {mean(task.correct(e.prompt, s.text) for e, s in flat):7.3f}"
                  f"  {mean(s.finished for _, s in flat):4.2f}  {seconds:5.0f}s")
        for sample in groups[0][:4]:
            print(f"  {sampled[0].prompt!r} -> {sample.text!r}")


if __name__ == "__main__":
    main()
