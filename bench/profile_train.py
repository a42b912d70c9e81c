"""Where a larpo training phase spends its time: one phase of table 1's pairs under ``torch.profiler``.

    .venv/bin/python bench/profile_train.py                      # 20M model, shared prompt, layout chosen by cost
    .venv/bin/python bench/profile_train.py --layout shared      # prompt pass + one row per response (no packing)
    .venv/bin/python bench/profile_train.py --model smollm2 --layout packed

Runs the phase that ``train_throughput.py --quick`` times for ``larpo shared_prompt=True`` (the
reference pass, then one optimizer step of 8 pairs in micro-batches of 4 lists) once to warm up,
then once profiled. Prints the phase time, the FLOPs the matmuls did against the model FLOPs of the
phase (``common.forward_flops``: their ratio is the padding and recomputation), and the operators
by self CPU time.
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile

import torch
from torch.profiler import ProfilerActivity, profile

import common
import train_throughput as tt
import larpo.trainer
from larpo import logprobs
from larpo.trainer import encode_lists, make_accelerator, reference_logps, train_phase


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="20M", choices=("20M", "smollm2"))
    p.add_argument("--layout", default="auto", choices=("auto", "packed", "shared"),
                   help="larpo.logprobs.list_logps's layout: chosen by estimated FLOPs, or forced")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--ops", type=int, default=15, help="operators listed")
    a = p.parse_args()
    common.quiet()
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.layout != "auto":
        larpo.trainer.list_logps = functools.partial(logprobs.list_logps, layout=a.layout)
    bench = tt.parse(["--quick"])
    shape = common.SHAPES[a.model]
    tmp = tempfile.TemporaryDirectory()
    tok = common.word_tokenizer(shape.vocab - 3, f"{tmp.name}/tok")
    rows = tt.pair_rows(bench, a.model)
    cfg = tt.larpo_cfg(bench, bench.batch, bench.micro, 2 * bench.batch, True, "pairwise")
    acc = make_accelerator(cfg)
    encoded = encode_lists(tok, tt.ranked(rows))

    def phase(model) -> None:
        ref = reference_logps(model, encoded, tok.pad_token_id, cfg.ref_batch_size, acc, shared_prompt=True)
        train_phase(model, tok, encoded, cfg, acc, ref_logps=ref, progress=False)

    phase(common.build_model(tok, shape, 0))  # warm-up
    model = common.build_model(tok, shape, 0)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        with common.Timer() as t:
            phase(model)
    mm = [e for e in prof.key_averages(group_by_input_shape=True) if e.key == "aten::mm"]
    mm_flops = sum(2 * e.input_shapes[0][0] * e.input_shapes[0][1] * e.input_shapes[1][1] * e.count for e in mm)
    mm_s = sum(e.self_cpu_time_total for e in mm) / 1e6
    model_flops = tt.phase_flops(model.config, rows, shared=True)
    print(f"Machine: {common.machine()}\n{a.model}, layout {a.layout}: phase {t.s:.2f} s under the profiler; "
          f"matmuls {mm_flops / 1e9:.0f} GFLOP in {mm_s:.2f} s ({mm_flops / mm_s / 1e9:.0f} GFLOP/s) for "
          f"{model_flops / 1e9:.0f} GFLOP of model work ({mm_flops / model_flops:.2f}x)\n")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=a.ops))
    return 0


if __name__ == "__main__":
    sys.exit(main())
