"""The parts of ``scripts/gpu-check.sh`` written in Python: one short GPU call that measures everything.

    python bench/gpu_check.py peak                  # the matmul peak: bf16 8192³ on CUDA (fp32 on a CPU)
    python bench/gpu_check.py train [--smoke]       # table 1 in one process: SmolLM2's shape and a 1B Llama
    python bench/gpu_check.py default OUT [ARGS]    # `larpo run` (the embedded default) into OUT
    python bench/gpu_check.py table LOGDIR          # the markdown table from the parts' logs

Each part prints ``RESULT {json}`` lines (``common.emit``); ``table`` reads them back from
``LOGDIR/<part>.log`` and says, for a part with none, whether it timed out or failed.

``train`` runs, for SmolLM2-135M's shape (random weights; the vocabulary of 49,152 ids) and for a
1B-parameter Llama (Llama 3.2 1B's shape: hidden 2048, 16 layers, 32 heads, 8 key/value heads,
MLP 8192, vocabulary 128,256), larpo with ``shared_prompt`` True and False and, on SmolLM2's
shape, TRL ``DPOTrainer`` as shipped (gradient checkpointing on, bf16 on CUDA, its reference model
run in each step), all in this one process on the same seeded pairs (prompts 48-96 tokens,
responses 16-128), one micro-batch per optimizer step, bf16 autocast on CUDA. larpo gets a
warm-up phase on all the pairs (it compiles FlexAttention for the packed rows' lengths), TRL one
step on two pairs, then each row is timed ``--repeats`` times on fresh models, interleaved; medians.
MFU is model FLOPs (``common.forward_flops``) per second over the matmul peak measured in the same
process. After timing, one larpo step runs under ``torch.cuda.set_sync_debug_mode("warn")`` and
the host synchronisations it made are counted, with where they came from.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import re
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

import common
import train_throughput as tt
import trl_dpo

PARTS = ("peak", "train", "sample", "default", "tests")  # in the order scripts/gpu-check.sh runs them
SHAPES = ("smollm2", "1B")


def peak(_: argparse.Namespace) -> None:
    common.emit({"peak_flops": common.matmul_peak(), "device": common.machine()})


def _pairs(a: argparse.Namespace, shape: common.Shape, n: int) -> list[dict]:
    return common.make_lists(n, 2, tt.PROMPT_TOKENS, tt.RESPONSE_TOKENS, shape.vocab - 3, a.seed)


def _sync_points(tok, shape: common.Shape, rows: list[dict], cfg, seed: int) -> dict:
    """One larpo training step with CUDA's sync debug mode on: how many host synchronisations, and from where."""
    from larpo.trainer import make_accelerator, train_phase

    model = common.build_model(tok, shape, seed, device="cuda")
    acc = make_accelerator(cfg)
    lists = tt.ranked(rows[: cfg.batch_size])
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            train_phase(model, tok, lists, cfg, acc, progress=False)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    where = collections.Counter(f"{Path(w.filename).name}:{w.lineno}" for w in seen
                                if "synchroniz" in str(w.message).lower())
    return {"syncs": sum(where.values()), "where": dict(where.most_common(8))}


def train(a: argparse.Namespace) -> None:
    cuda = torch.cuda.is_available()
    common.quiet()
    args = argparse.Namespace(seed=a.seed, repeats=a.repeats, lr=5e-6)
    with tempfile.TemporaryDirectory() as tmp:
        for name in SHAPES:
            shape = common.SHAPES[name].shrunk() if a.smoke else common.SHAPES[name]
            shape = dataclasses.replace(shape, weights=None)  # random weights for every shape: one basis
            tok = common.word_tokenizer(shape.vocab - 3, f"{tmp}/{name}")
            n = a.pairs if name == "smollm2" else a.pairs_1b
            rows = _pairs(a, shape, n)
            start = time.perf_counter()
            jobs = {f"larpo-{'shared' if shared else 'unshared'}":
                    (rows, tt.larpo_cfg(args, a.batch, a.batch, 2 * a.batch, shared, "pairwise"), False)
                    for shared in (True, False)}
            results = tt.larpo_timing(args, tok, shape, jobs, warmup=None if cuda else tt.WARMUP_PAIRS)
            if name == "smollm2":
                results["trl-shipped"] = trl_dpo.timing(tok, shape, rows, None, False, beta=tt.BETA, lr=args.lr,
                                                        batch=a.batch, repeats=a.repeats, seed=a.seed,
                                                        warmup_pairs=tt.WARMUP_PAIRS, out_dir=f"{tmp}/trl")
            config = common.llama_config(tok, shape)
            peak_flops = common.matmul_peak()
            for row, r in results.items():
                r["flops"] = tt.phase_flops(config, rows, row == "larpo-shared")
                r["mfu"] = r["flops"] / r["phase_s"] / peak_flops
                r["pairs_per_s"] = n / r["phase_s"]
            extra = {"syncs": _sync_points(tok, shape, rows, jobs["larpo-shared"][1], a.seed)} if cuda else {}
            common.emit({"shape": shape.name, "pairs": n, "batch": a.batch, "repeats": a.repeats, "peak_flops": peak_flops,
                         "gpu_mb": common.peak_gpu_mb(), "seconds": time.perf_counter() - start,
                         "rows": {row: {k: r[k] for k in ("phase_s", "ref_s", "pairs_per_s", "mfu")} for row, r in results.items()},
                         **extra})
            if cuda:
                torch.cuda.empty_cache()


def default(a: argparse.Namespace) -> None:
    """The embedded default through the command line, as a user runs it; its wall time and headline."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "larpo.cli", "run", "--quiet", "--out", a.out, *a.overrides])
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"larpo run exited with {proc.returncode}")
    summary = json.loads((Path(a.out) / "summary.json").read_text())
    common.emit({"seconds": seconds, "sft": summary["sft"]["exact_accuracy"], "final": summary["final"]["exact_accuracy"],
                 "difference": summary["difference"]["exact_accuracy"], "stage_seconds": summary["stage_seconds"]})


def _results(log: Path) -> list[dict]:
    if not log.is_file():
        return []
    return [json.loads(line[len("RESULT "):]) for line in log.read_text(errors="replace").splitlines()
            if line.startswith("RESULT ")]


def _status(logdir: Path, part: str) -> str:
    """Why a part left no result: its exit status, as scripts/gpu-check.sh wrote it."""
    status = logdir / "status"
    codes = dict(line.split() for line in status.read_text().splitlines()) if status.is_file() else {}
    code = codes.get(part, "not run")
    return {"124": "timed out", "137": "timed out", "not run": "not run"}.get(code, f"failed (exit code {code})")


def _test_counts(log: Path) -> str | None:
    """pytest's final counts, or, for a run cut short, the outcome lines it printed (-v)."""
    text = log.read_text(errors="replace") if log.is_file() else ""
    final = re.findall(r"=+ (.*(?:passed|failed|error).*) in [\d.]+s", text)
    if final:
        return final[-1]
    counts = collections.Counter(re.findall(r"\b(PASSED|FAILED|ERROR|SKIPPED)\b", text))
    return ", ".join(f"{v} {k.lower()}" for k, v in counts.items()) + " (cut short)" if counts else None


def table(a: argparse.Namespace) -> None:
    logdir = Path(a.logdir)
    rows = []
    (p,) = _results(logdir / "peak.log") or [None]
    rows.append(["matmul peak", f"{p['peak_flops'] / 1e12:.3g} TFLOP/s ({p['device']})" if p else _status(logdir, "peak")])
    train_results = _results(logdir / "train.log")
    for r in train_results:
        t, speed = r["rows"], {k: v["pairs_per_s"] for k, v in r["rows"].items()}
        cells = [f"larpo shared {speed['larpo-shared']:.1f} pairs/s (MFU {t['larpo-shared']['mfu']:.3f}), "
                 f"unshared {speed['larpo-unshared']:.1f} (MFU {t['larpo-unshared']['mfu']:.3f})"]
        cells.append(f"shared / unshared {speed['larpo-shared'] / speed['larpo-unshared']:.2f}x")
        if "trl-shipped" in t:
            cells.append(f"TRL as shipped {speed['trl-shipped']:.1f} pairs/s (MFU {t['trl-shipped']['mfu']:.3f}); "
                         f"larpo shared / TRL {speed['larpo-shared'] / speed['trl-shipped']:.2f}x")
        if "syncs" in r:
            cells.append(f"{r['syncs']['syncs']} host syncs in one step")
        rows.append([f"training, {r['shape']} ({r['pairs']} pairs, {r['batch']} per step, median of {r['repeats']})",
                     "; ".join(cells)])
    if len(train_results) < len(SHAPES):
        rows.append(["training", f"{len(train_results)} of {len(SHAPES)} shapes: {_status(logdir, 'train')}"])
    (s,) = _results(logdir / "sample.log")[-1:] or [None]
    rows.append(["sampling, prefilled once / HF generate (K copies)",
                 "; ".join(f"K={k}: {v['prefilled_once']:.2f}x (inverse-CDF draw {v['inverse_cdf']:.2f}x"
                           + (f"; cache written in place {v['in_place']:.2f}x" if "in_place" in v else "") + ")"
                           for k, v in s["sampling"].items()) if s else _status(logdir, "sample")])
    (d,) = _results(logdir / "default.log") or [None]
    rows.append(["embedded default (`larpo run`)",
                 f"{d['seconds']:.0f} s; held-out accuracy {d['sft']:.3f} -> {d['final']:.3f} "
                 f"({d['difference']['mean']:+.3f} [{d['difference']['low']:+.3f}, {d['difference']['high']:+.3f}])"
                 if d else _status(logdir, "default")])
    counts = _test_counts(logdir / "tests.log")
    rows.append(["test suite", counts if counts else _status(logdir, "tests")])
    print(common.table(["check", "result"], rows))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="part", required=True)
    sub.add_parser("peak")
    t = sub.add_parser("train")
    t.add_argument("--smoke", action="store_true", help="one-layer hidden-64 bodies (same vocabularies), 8 pairs")
    t.add_argument("--pairs", type=int, default=256, help="SmolLM2's shape: pairs timed")
    t.add_argument("--pairs-1b", type=int, default=256, help="the 1B shape: pairs timed")
    t.add_argument("--batch", type=int, default=64, help="pairs per optimizer step, one micro-batch")
    t.add_argument("--repeats", type=int, default=3)
    t.add_argument("--seed", type=int, default=0)
    d = sub.add_parser("default")
    d.add_argument("out")
    d.add_argument("overrides", nargs="*")
    sub.add_parser("table").add_argument("logdir")
    a = p.parse_args()
    if a.part == "train" and a.smoke:
        a.pairs = a.pairs_1b = 8
        a.batch, a.repeats = 4, 1
    {"peak": peak, "train": train, "default": default, "table": table}[a.part](a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
