"""Training throughput: larpo's ``train_phase`` against TRL's ``DPOTrainer``, and larpo on longer lists.

Run from the repository root with the ``bench`` extra (trl, datasets); ``bash scripts/bench.sh``
installs it and runs this script and ``sample_throughput.py`` in one go:

    .venv/bin/python bench/train_throughput.py            # the full run (see docs/performance.md)
    .venv/bin/python bench/train_throughput.py --quick    # table 1 only, 1 step of 8 pairs, 1 repeat
    .venv/bin/python bench/train_throughput.py --smoke    # every table, models shrunk: plumbing only

Each configuration of table 1 runs in a fresh subprocess (``--worker MODEL/SETTING``), so its peak
RSS (``ru_maxrss``, warm-up included) is its own, once per round for ``--repeats`` rounds taken
round-robin over the configurations, so a load change on the machine hits all of them alike; the
round with the median phase time is reported. Tables 2 and 3 run in one subprocess each, their
configurations' ``--repeats`` repeats interleaved, medians reported. Every timed phase follows a
warm-up optimizer step on two pairs and a throwaway model, and starts from a fresh model built from
the same seed. After timing, each worker measures the machine's matmul peak
(``common.matmul_peak``) with the same threads. Tables:

1. Per model of ``--models`` (the 20M model; SmolLM2-135M-Instruct's shape and 49,152-id
   vocabulary, its weights when ``models/SmolLM2-135M-Instruct`` exists): larpo (shared prompt;
   one sequence per response, the equal-algorithm row; shared prompt with activation
   checkpointing) against TRL (as shipped; without checkpointing; without checkpointing and with
   precomputed reference log-probs) on the same pairs, batch, lr, dtype and threads. larpo's phase
   = ``reference_logps`` + ``train_phase(ref_logps=…)`` on already encoded lists (no tokenisation
   is timed, for either trainer). TRL's phase = its reference precompute (when on) + ``train()``.
   Model FLOP/s and MFU use ``common.forward_flops`` (3 × forward for training + 1 × forward for
   the reference pass, per the algorithm each row runs).
2. larpo on lists of m = 2, 4, 10 with the same number of responses per optimizer step (20M).
3. The one-prompt-pass gain: ``shared_prompt`` True vs False at m = 4, prompt 2× and 1× the response (20M).
4. Padding in micro-batches before and after ``train_phase``'s length grouping (no model involved).
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile

import torch

import common
import trl_dpo
from larpo.config import ModelConfig, TrainConfig
from larpo.lists import RankedList
from larpo.logprobs import collate_lists, collate_pairs
from larpo.models import prepare_policy
from larpo.trainer import encode_lists, list_tokens, make_accelerator, reference_logps, train_phase

BETA = 0.1
LARPO_SETTINGS = {  # name -> (shared_prompt, activation checkpointing, label)
    "larpo-shared": (True, False, "shared_prompt=True"),
    "larpo-unshared": (False, False, "shared_prompt=False (equal algorithm)"),
    "larpo-shared-ckpt": (True, True, "shared_prompt=True + gradient_checkpointing"),
}
TRL_SETTINGS = {  # name -> (gradient_checkpointing (None: TRL's default, True), precompute_ref_log_probs, label)
    "trl-shipped": (None, False, "as shipped (grad ckpt on)"),
    "trl-nogc": (False, False, "gradient_checkpointing=False"),
    "trl-precompute": (False, True, "no grad ckpt + precompute_ref_log_probs"),
}
LIST_SIZES = (2, 4, 10)
PROMPT_TOKENS, RESPONSE_TOKENS = (48, 96), (16, 128)  # table 1 and 2 lengths (response EOS included)
GAIN_RESPONSE = 64  # response tokens (EOS included) in table 3; prompts are 2× or 1× this
WARMUP_PAIRS = 2
SMOKE = ("--batch", "4", "--micro", "2", "--steps", "1", "--smollm2-steps", "1", "--repeats", "1",
         "--list-steps", "1", "--responses-per-step", "20")
QUICK = ("--tables", "1", "--batch", "8", "--micro", "4", "--steps", "1", "--smollm2-steps", "1", "--repeats", "1")


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="20M,smollm2", help="table 1 models, from: 20M, smollm2, tiny")
    p.add_argument("--batch", type=int, default=16, help="pairs (lists) per optimizer step in table 1")
    p.add_argument("--micro", type=int, default=4, help="larpo's lists per micro-batch in table 1 and the padding line")
    p.add_argument("--steps", type=int, default=4, help="table 1, 20M/tiny: optimizer steps timed (pairs = steps x batch)")
    p.add_argument("--smollm2-steps", type=int, default=2, help="table 1, SmolLM2: optimizer steps timed")
    p.add_argument("--lr", type=float, default=5e-6)
    p.add_argument("--repeats", type=int, default=3, help="table 1: rounds of every configuration, each in a fresh "
                   "process; tables 2-3: timed phases per configuration in one process")
    p.add_argument("--list-steps", type=int, default=5, help="tables 2-3: optimizer steps per timed phase")
    p.add_argument("--responses-per-step", type=int, default=40, help="tables 2-3: responses per optimizer step")
    p.add_argument("--tables", default="1234", help="which tables to run, e.g. 13")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads per worker (default: torch's choice)")
    p.add_argument("--quick", action="store_true", help="about 10 minutes on 2 idle cores: " + " ".join(QUICK))
    p.add_argument("--smoke", action="store_true", help="shrink the models to one layer of hidden 64 and everything "
                   "else to " + " ".join(SMOKE) + "; flags given explicitly still win")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    given = {x.split("=")[0] for x in (argv if argv is not None else sys.argv[1:])}
    for preset, on in ((SMOKE, a.smoke), (QUICK, a.quick)):
        for flag, value in zip(preset[::2], preset[1::2]):
            if on and flag not in given:
                name = flag[2:].replace("-", "_")
                setattr(a, name, type(getattr(a, name))(value))
    if a.micro > a.batch:
        p.error("--micro must be at most --batch")
    return a


def shape(a, name: str) -> common.Shape:
    return common.SHAPES[name].shrunk() if a.smoke else common.SHAPES[name]


def pair_rows(a, model: str) -> list[dict]:
    steps = a.smollm2_steps if model == "smollm2" else a.steps
    return common.make_lists(steps * a.batch, 2, PROMPT_TOKENS, RESPONSE_TOKENS, shape(a, model).vocab - 3, a.seed)


def ranked(rows: list[dict]) -> list[RankedList]:
    out = []
    for i, r in enumerate(rows):
        m = len(r["responses"])
        out.append(RankedList(str(i), r["prompt"], tuple(r["responses"]), tuple(float(m - j) for j in range(m)), ("own",) * m))
    return out


def phase_flops(config, rows: list[dict], shared: bool) -> float:
    """Model FLOPs of a phase on ``rows``: the reference forward and the training step's forward + backward (3×)."""
    lengths = [(len(r["prompt"].split()), [len(x.split()) + 1 for x in r["responses"]]) for r in rows]
    return 4 * sum(common.forward_flops(config, p, rs, shared) for p, rs in lengths)


def larpo_cfg(a, batch: int, micro: int, ref_batch: int, shared: bool, loss: str) -> TrainConfig:
    return TrainConfig(loss=loss, beta=BETA, lr=a.lr, epochs=1, batch_size=batch, micro_batch_size=micro,
                       ref_batch_size=ref_batch, warmup_ratio=0.0, shared_prompt=shared,
                       mixed_precision="bf16" if torch.cuda.is_available() else "no")


def larpo_timing(a, tok, model_shape: common.Shape, jobs: dict[str, tuple[list[dict], TrainConfig, bool]],
                 warmup: int | None = WARMUP_PAIRS) -> dict[str, dict]:
    """Per job (rows, config, activation checkpointing): a warm-up phase on the first ``warmup`` lists (None:
    all of them, which a GPU needs: it compiles FlexAttention for the packed rows' lengths), then ``repeats``
    × (reference pass, training phase) on fresh models, medians. Repeats are interleaved across jobs, so a
    load change on the machine hits every job alike. The lists are encoded before timing."""
    acc = make_accelerator(next(iter(jobs.values()))[1])  # mixed_precision is the same for all jobs
    encoded = {name: encode_lists(tok, ranked(rows)) for name, (rows, _, _) in jobs.items()}

    def fresh_model(checkpointing: bool):
        model = common.build_model(tok, model_shape, a.seed, device=acc.device)
        return prepare_policy(model, ModelConfig(gradient_checkpointing=True)) if checkpointing else model

    for name, (_, cfg, ckpt) in jobs.items():
        train_phase(fresh_model(ckpt), tok, encoded[name][:warmup], cfg, acc, progress=False)
        gc.collect()
    times: dict[str, dict] = {name: {"ref": [], "train": [], "phase": []} for name in jobs}
    for _ in range(a.repeats):
        for name, (_, cfg, ckpt) in jobs.items():
            model = fresh_model(ckpt).to(acc.device)
            with common.Timer() as t_ref:
                ref = reference_logps(model, encoded[name], tok.pad_token_id, cfg.ref_batch_size, acc,
                                      shared_prompt=cfg.shared_prompt)
            with common.Timer() as t_train:
                result = train_phase(model, tok, encoded[name], cfg, acc, seed=a.seed, ref_logps=ref, progress=False)
            t = times[name]
            t["steps"] = result.steps
            t["ref"].append(t_ref.s), t["train"].append(t_train.s), t["phase"].append(t_ref.s + t_train.s)
            del model, ref
            gc.collect()
    out = {}
    for name in jobs:
        t = times[name]
        out[name] = {f"{k}_s": common.median(t[k]) for k in ("ref", "train", "phase")} | {
            "steps": t["steps"], "lists": len(encoded[name]), "responses": sum(len(e.response_ids) for e in encoded[name]),
            "tokens": sum(list_tokens(e) for e in encoded[name])}
    return out


def worker(a) -> dict:
    common.quiet()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    model = a.worker.split("/")[0] if "/" in a.worker else "20M"  # table 1: MODEL/SETTING; tables 2-3: the 20M model
    model_shape = shape(a, model)
    with tempfile.TemporaryDirectory() as tmp:
        tok = common.word_tokenizer(model_shape.vocab - 3, f"{tmp}/tok")
        built = common.build_model(tok, model_shape, a.seed)  # described before timing, then freed
        described, config = common.describe_model(built), built.config
        del built
        gc.collect()
        if "/" in a.worker:
            name = a.worker.split("/")[1]
            rows = pair_rows(a, model)
            if name in TRL_SETTINGS:
                res = trl_dpo.timing(tok, model_shape, rows, *TRL_SETTINGS[name][:2], beta=BETA, lr=a.lr, batch=a.batch,
                                     repeats=a.repeats, seed=a.seed, warmup_pairs=WARMUP_PAIRS, out_dir=f"{tmp}/trl")
            else:
                shared, ckpt, _ = LARPO_SETTINGS[name]
                cfg = larpo_cfg(a, a.batch, a.micro, 2 * a.batch, shared, "pairwise")
                res = larpo_timing(a, tok, model_shape, {name: (rows, cfg, ckpt)})[name]
            res["flops"] = phase_flops(config, rows, name in ("larpo-shared", "larpo-shared-ckpt"))
        else:
            jobs = {}
            if a.worker == "lists":  # table 2, one process
                for m in LIST_SIZES:
                    per_step = a.responses_per_step // m
                    rows = common.make_lists(per_step * a.list_steps, m, PROMPT_TOKENS, RESPONSE_TOKENS,
                                             model_shape.vocab - 3, a.seed + 1)
                    jobs[f"m{m}"] = (rows, larpo_cfg(a, per_step, per_step, a.responses_per_step, True, "lambdarank"), False)
            elif a.worker == "gain":  # table 3, one process: prompt 2x and 1x the response, shared_prompt True and False
                per_step = a.responses_per_step // 4
                for ratio in (2, 1):
                    p = ratio * GAIN_RESPONSE
                    rows = common.make_lists(per_step * a.list_steps, 4, (p, p), (GAIN_RESPONSE,) * 2,
                                             model_shape.vocab - 3, a.seed + 2)
                    for shared in (True, False):
                        cfg = larpo_cfg(a, per_step, per_step, a.responses_per_step, shared, "lambdarank")
                        jobs[f"{ratio}-{shared}"] = (rows, cfg, False)
            else:
                raise SystemExit(f"unknown worker {a.worker!r}")
            res = larpo_timing(a, tok, model_shape, jobs)
        res["model"] = described
    res.update(rss_mb=common.peak_rss_mb(), gpu_mb=common.peak_gpu_mb(), machine=common.machine())
    res["peak_flops"] = common.matmul_peak()  # after the peak RSS is read: its matrices are not the configuration's
    return res


def met(measured: float, target: float) -> str:
    """A target is met only when the measured value, as printed (two decimals), reaches it."""
    return "met" if round(measured, 2) >= target else "missed"


def interleaved(a, model: str, run) -> dict[str, dict]:
    """Every configuration of table 1 once per round, in a fresh process, for ``--repeats`` rounds: a load
    change on the machine hits every configuration alike. Per configuration, the round with the median
    phase time (its timings, matmul peak and FLOPs together) and the highest peak memory of all rounds."""
    names = (*LARPO_SETTINGS, *TRL_SETTINGS)
    rounds = [{n: run(f"{model}/{n}", "--repeats", "1") for n in names} for _ in range(a.repeats)]
    out = {}
    for n in names:
        runs = sorted((r[n] for r in rounds), key=lambda v: v["phase_s"])
        gpu = [v["gpu_mb"] for v in runs if v["gpu_mb"] is not None]
        out[n] = runs[len(runs) // 2] | {"rss_mb": max(v["rss_mb"] for v in runs), "gpu_mb": max(gpu) if gpu else None}
    return out


def table_one(a, model: str, run) -> str:
    """Table 1 for ``model`` and its lines against the targets."""
    r = interleaved(a, model, run)
    bad = [n for n in TRL_SETTINGS if not r[n]["ids_match"]]
    if bad:
        raise SystemExit(f"{model}: token ids differ between larpo and TRL in {bad}")
    first = r["larpo-shared"]
    pairs, tokens = first["lists"], first["tokens"]
    speed = {n: pairs / v["phase_s"] for n, v in r.items()}
    fastest = max(TRL_SETTINGS, key=speed.get)
    gpu = first["gpu_mb"] is not None
    head = ["trainer", "setting", "pairs/s", "tokens/s", "phase s", "ref s", "peak RSS MB", *(["peak GPU MB"] if gpu else []),
            "matmul peak GFLOP/s", "model GFLOP/s", "MFU", "/ TRL as shipped", "/ TRL fastest"]
    rows = []
    for n, v in r.items():
        larpo = n in LARPO_SETTINGS
        achieved = v["flops"] / v["phase_s"]
        rows.append(["larpo" if larpo else "TRL", (LARPO_SETTINGS if larpo else TRL_SETTINGS)[n][-1],
                     f"{speed[n]:.2f}", f"{tokens / v['phase_s']:.0f}", f"{v['phase_s']:.2f}",
                     "in step" if v["ref_s"] is None else f"{v['ref_s']:.2f}", f"{v['rss_mb']:.0f}",
                     *([f"{v['gpu_mb']:.0f}"] if gpu else []), f"{v['peak_flops'] / 1e9:.0f}", f"{achieved / 1e9:.1f}",
                     f"{achieved / v['peak_flops']:.2f}",
                     f"{speed[n] / speed['trl-shipped']:.2f}x" if larpo else "",
                     f"{speed[n] / speed[fastest]:.2f}x" if larpo else ""])
    equal = speed["larpo-unshared"] / speed["trl-precompute"]
    out = (f"### Table 1, {shape(a, model).name}: larpo vs TRL DPO ({pairs} pairs, {first['steps']} steps of {a.batch} pairs, "
           f"larpo in micro-batches of {a.micro} lists, {tokens} prompt+chosen+rejected tokens, median of {a.repeats} rounds)\n\n"
           f"Model: {first['model']}\n\n" + common.table(head, rows)
           + f"\n\nTRL saw the same token ids as larpo on all {pairs} pairs (e.g. prompt end | chosen: "
           f"{r['trl-shipped']['example_ids']}). 'ref' = larpo's reference_logps / TRL's precompute; TRL without "
           f"precompute runs its reference model inside each step. TRL fastest = {TRL_SETTINGS[fastest][-1]}. "
           f"Equal algorithm (one sequence per response, precomputed reference, no checkpointing): larpo "
           f"shared_prompt=False / TRL no grad ckpt + precompute_ref_log_probs = {equal:.2f}x.")
    ratio_shipped = speed["larpo-shared"] / speed["trl-shipped"]
    ratio_fastest = speed["larpo-shared"] / speed[fastest]
    lines = [["larpo >= 2.5x TRL as shipped (pairs/s)", f"{ratio_shipped:.2f}x ({speed['larpo-shared']:.2f} vs "
              f"{speed['trl-shipped']:.2f} pairs/s)", met(ratio_shipped, 2.5)],
             ["larpo >= 2x TRL at its fastest", f"{ratio_fastest:.2f}x (vs {TRL_SETTINGS[fastest][-1]}, "
              f"{speed[fastest]:.2f} pairs/s)", met(ratio_fastest, 2.0)]]
    for n in ("larpo-shared", "larpo-shared-ckpt"):  # memory, on a row that also keeps both speed targets
        s, f = speed[n] / speed["trl-shipped"], speed[n] / speed[fastest]
        keeps = round(r[n]["rss_mb"]) <= round(r["trl-shipped"]["rss_mb"]) and met(s, 2.5) == met(f, 2.0) == "met"
        lines.append([f"peak RSS <= TRL as shipped, keeping both speed targets ({LARPO_SETTINGS[n][-1]})",
                      f"{r[n]['rss_mb']:.0f} vs {r['trl-shipped']['rss_mb']:.0f} MB; {s:.2f}x / {f:.2f}x",
                      "met" if keeps else "missed"])
    mfu = first["flops"] / first["phase_s"] / first["peak_flops"]
    if gpu and model == "smollm2":
        lines.append(["MFU >= 0.40 in bf16 on a GPU (larpo shared)", f"{mfu:.2f}", met(mfu, 0.40)])
    elif not gpu and model == "20M":
        lines.append(["MFU >= 0.50 at 20M on CPU (larpo shared)", f"{mfu:.2f}", met(mfu, 0.50)])
    return out + f"\n\n#### Against the targets ({shape(a, model).name})\n\n" + common.table(["target", "measured", ""], lines)


def padding_line(a) -> str:
    """Padded fraction of the positions a micro-batch runs, per padded layout: the step's lists in shuffled
    order vs sorted by list_tokens (what train_phase does). The packed layout (lists in one row) has none."""
    with tempfile.TemporaryDirectory() as tmp:
        tok = common.word_tokenizer(shape(a, "20M").vocab - 3, f"{tmp}/tok")
        encoded = encode_lists(tok, ranked(pair_rows(a, "20M")))
    pad = tok.pad_token_id
    lengths = [list_tokens(el) for el in encoded]
    order = torch.randperm(len(encoded), generator=torch.Generator().manual_seed(a.seed * 1000)).tolist()  # as train_phase
    layouts = ("shared prompt, one row per response", "one sequence per response")
    counts = {(layout, how): [0, 0] for layout in layouts for how in ("shuffled", "sorted")}  # [padded, run]
    for start in range(0, len(order), a.batch):
        step = order[start : start + a.batch]
        for how, ids in (("shuffled", step), ("sorted", sorted(step, key=lambda i: lengths[i]))):
            for j in range(0, len(ids), a.micro):
                micro = [encoded[i] for i in ids[j : j + a.micro]]
                lists = [(e.prompt_ids, e.response_ids) for e in micro]
                b = collate_lists(lists, pad)
                predicts = b["response_mask"][:, 1:]
                counts[layouts[0], how][0] += int((b["prompt_mask"] == 0).sum() + (predicts == 0).sum())
                counts[layouts[0], how][1] += b["prompt_mask"].numel() + predicts.numel()
                mask = collate_pairs([(e.prompt_ids, r) for e in micro for r in e.response_ids], pad)["attention_mask"][:, :-1]
                counts[layouts[1], how][0] += int((mask == 0).sum())
                counts[layouts[1], how][1] += mask.numel()
    f = {k: f"{100 * v[0] / v[1]:.1f}%" for k, v in counts.items()}
    return (f"Padding (table-1 pairs of the 20M model, {a.batch} lists/step, micro-batches of {a.micro}; padded share "
            "of the positions run, shuffled -> length-grouped): "
            + "; ".join(f"{layout} {f[layout, 'shuffled']} -> {f[layout, 'sorted']}" for layout in layouts)
            + "; lists packed in one row (the packed layout) none")


def main() -> int:
    a = parse()
    if a.worker:
        common.emit(worker(a))
        return 0
    machines: list[str] = []

    def run(name: str, *flags: str) -> dict:
        res = common.run_worker(__file__, name, [*sys.argv[1:], *flags])
        machines.append(res["machine"])
        return res

    out = []
    if "1" in a.tables:
        for model in a.models.split(","):
            out.append(table_one(a, model, run))
    if "2" in a.tables:
        res = run("lists")
        r = {m: res[f"m{m}"] for m in LIST_SIZES}
        per_resp = {m: v["train_s"] / v["responses"] for m, v in r.items()}
        rows = [[m, v["lists"] // v["steps"], v["responses"] // v["steps"], f"{v['train_s'] / v['steps']:.3f}",
                 f"{1e3 * v['train_s'] / v['lists']:.1f}", f"{1e3 * per_resp[m]:.2f}",
                 f"{1e3 * v['ref_s'] / v['responses']:.2f}"] for m, v in r.items()]
        out.append(f"### Table 2: larpo on lists of m responses ({shape(a, '20M').name}, {a.responses_per_step} "
                   f"responses/step in one micro-batch, {a.list_steps} steps, prompts 48-96, responses 16-128 tokens, "
                   f"shared_prompt=True, median of {a.repeats})\n\n"
                   + common.table(["m", "lists/step", "responses/step", "train s/step", "train ms/list",
                                   "train ms/response", "ref ms/response"], rows)
                   + f"\n\nTime per response, m={LIST_SIZES[-1]} / m={LIST_SIZES[0]}: "
                   f"{per_resp[LIST_SIZES[-1]] / per_resp[LIST_SIZES[0]]:.2f} (target <= 1.1)")
    if "3" in a.tables:
        res = run("gain")
        rows, gains = [], {}
        for ratio in (2, 1):
            s, u = res[f"{ratio}-True"], res[f"{ratio}-False"]
            gains[ratio] = u["train_s"] / s["train_s"]
            rows.append([f"{ratio * GAIN_RESPONSE}:{GAIN_RESPONSE}", f"{s['train_s'] / s['steps']:.3f}",
                         f"{u['train_s'] / u['steps']:.3f}", f"{gains[ratio]:.2f}x",
                         f"{s['ref_s'] / s['steps']:.3f}"])
        out.append(f"### Table 3: one prompt pass per list ({shape(a, '20M').name}, m=4, {a.responses_per_step // 4} "
                   f"lists/step, {a.list_steps} steps, median of {a.repeats})\n\n"
                   + common.table(["prompt:response tokens", "shared s/step", "unshared s/step", "gain",
                                   "shared ref s/step"], rows)
                   + f"\n\nGain at 2:1 (training steps; the reference pass shares prompts too, see table 1): "
                   f"{gains[2]:.2f}x (target >= 1.5x)")
    if "4" in a.tables:
        out.append(padding_line(a))
    if machines:
        print(f"\nMachine: {machines[0]}\n")
    print("\n\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
