"""Training throughput: larpo's ``train_phase`` against TRL's ``DPOTrainer``, and larpo on longer lists.

Run from the repository root (needs the ``bench`` extra: trl, datasets):

    .venv/bin/python bench/train_throughput.py            # the full run (see docs/performance.md)
    .venv/bin/python bench/train_throughput.py --smoke    # everything shrunk: about 1 minute

Each configuration of table 1 runs in a fresh subprocess (``--worker NAME``), so its peak RSS is its
own; tables 2 and 3 run in one subprocess each, their configurations' repeats interleaved. Per
configuration: one warm-up optimizer step on a throwaway model, then ``--repeats`` timed phases,
each on a fresh model built from the same seed; medians are reported. Tables:

1. larpo vs TRL on the same pairs, model, batch, lr and dtype (fp32 on CPU, bf16 autocast on CUDA),
   one epoch. larpo's phase = ``reference_logps`` (timed alone) + ``train_phase(ref_logps=…)``,
   exactly the work ``train_phase`` does when it computes the reference itself. TRL's phase =
   its reference precompute (when on, timed inside the constructor) + ``trainer.train()``.
2. larpo on lists of m = 2, 4, 10 with the same number of responses per optimizer step.
3. The one-prompt-pass gain: ``shared_prompt`` True vs False at m = 4, prompt 2× and 1× the response.
4. Padding in micro-batches before and after ``train_phase``'s length grouping (no model involved).
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile

import torch

import common
from larpo.config import TrainConfig
from larpo.encoding import encode_prompt, encode_response
from larpo.lists import RankedList
from larpo.logprobs import collate_lists, collate_pairs
from larpo.trainer import encode_lists, list_tokens, make_accelerator, reference_logps, train_phase

BETA = 0.1
TRL_SETTINGS = {  # name -> (gradient_checkpointing (None: TRL's default, True), precompute_ref_log_probs)
    "trl-shipped": (None, False),
    "trl-nogc": (False, False),
    "trl-precompute": (False, True),
}
LIST_SIZES = (2, 4, 10)
SMOKE = ("--pairs", "16", "--batch", "8", "--micro", "2", "--hidden", "64", "--layers", "1", "--words", "256",
         "--repeats", "1", "--list-steps", "1", "--responses-per-step", "20")
GAIN_RESPONSE = 64  # response tokens (EOS included) in table 3; prompts are 2× or 1× this


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=256, help="preference pairs in table 1")
    p.add_argument("--batch", type=int, default=16, help="pairs (lists) per optimizer step in table 1")
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--words", type=int, default=4096, help="vocabulary: w0 .. w{N-1}")
    p.add_argument("--lr", type=float, default=5e-6)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=None, help="table 1: time only the first N steps (default: the whole epoch)")
    p.add_argument("--list-steps", type=int, default=5, help="tables 2-3: optimizer steps per timed phase")
    p.add_argument("--responses-per-step", type=int, default=40, help="tables 2-3: responses per optimizer step")
    p.add_argument("--micro", type=int, default=4, help="table 4: lists per micro-batch (< --batch)")
    p.add_argument("--tables", default="1234", help="which tables to run, e.g. 13")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads per worker (default: torch's choice)")
    p.add_argument("--smoke", action="store_true", help="shrink everything (" + " ".join(SMOKE) + "); "
                   "flags given explicitly still win")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.smoke:
        given = {x.split("=")[0] for x in (argv if argv is not None else sys.argv[1:])}
        for flag, value in zip(SMOKE[::2], SMOKE[1::2]):
            if flag not in given:
                setattr(a, flag[2:].replace("-", "_"), type(getattr(a, flag[2:].replace("-", "_")))(value))
    return a


def pair_rows(a) -> list[dict]:
    n = a.pairs if a.steps is None else min(a.pairs, a.steps * a.batch)
    return common.make_lists(n, 2, (48, 96), (16, 128), a.words, a.seed)


def ranked(rows: list[dict]) -> list[RankedList]:
    out = []
    for i, r in enumerate(rows):
        m = len(r["responses"])
        out.append(RankedList(str(i), r["prompt"], tuple(r["responses"]), tuple(float(m - j) for j in range(m)), ("own",) * m))
    return out


def larpo_timing(a, tok, jobs: dict[str, tuple[list[dict], TrainConfig]]) -> dict[str, dict]:
    """Per job (rows, config): a warm-up step, then ``repeats`` × (reference pass, training phase) on
    fresh models, medians. Repeats are interleaved across jobs, so a load change on the machine
    hits every job alike."""
    acc = make_accelerator(next(iter(jobs.values()))[1])  # mixed_precision is the same for all jobs
    lists = {name: ranked(rows) for name, (rows, _) in jobs.items()}
    for name, (_, cfg) in jobs.items():
        model = common.build_model(tok, a.hidden, a.layers, a.seed)
        train_phase(model, tok, lists[name][: cfg.batch_size], cfg, acc, progress=False)
        del model
        gc.collect()
    times: dict[str, dict] = {name: {"ref": [], "train": [], "phase": []} for name in jobs}
    for _ in range(a.repeats):
        for name, (_, cfg) in jobs.items():
            model = common.build_model(tok, a.hidden, a.layers, a.seed).to(acc.device)
            encoded = encode_lists(tok, lists[name])
            with common.Timer() as t_ref:
                ref = reference_logps(model, encoded, tok.pad_token_id, cfg.ref_batch_size, acc, shared_prompt=cfg.shared_prompt)
            with common.Timer() as t_train:
                result = train_phase(model, tok, lists[name], cfg, acc, seed=a.seed, ref_logps=ref, progress=False)
            t = times[name]
            t["steps"] = result.steps
            t["ref"].append(t_ref.s), t["train"].append(t_train.s), t["phase"].append(t_ref.s + t_train.s)
            del model, ref
            gc.collect()
    out = {}
    for name in jobs:
        encoded = encode_lists(tok, lists[name])
        t = times[name]
        out[name] = {f"{k}_s": common.median(t[k]) for k in ("ref", "train", "phase")} | {
            "steps": t["steps"], "lists": len(encoded), "responses": sum(len(e.response_ids) for e in encoded),
            "tokens": sum(len(e.prompt_ids) + sum(map(len, e.response_ids)) for e in encoded)}
    return out


def larpo_cfg(a, batch: int, ref_batch: int, shared: bool, loss: str) -> TrainConfig:
    return TrainConfig(loss=loss, beta=BETA, lr=a.lr, epochs=1, batch_size=batch, micro_batch_size=batch,
                       ref_batch_size=ref_batch, warmup_ratio=0.0, shared_prompt=shared,
                       mixed_precision="bf16" if torch.cuda.is_available() else "no")


def trl_timing(a, tok, rows: list[dict], grad_ckpt: bool | None, precompute: bool, out_dir: str) -> dict:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    class TimedDPOTrainer(DPOTrainer):
        precompute_s = 0.0

        def _precompute_ref_logps(self, *args, **kwargs):
            with common.Timer() as t:
                out = super()._precompute_ref_logps(*args, **kwargs)
            self.precompute_s += t.s
            return out

    data = [{"prompt": r["prompt"], "chosen": r["responses"][0], "rejected": r["responses"][1]} for r in rows]
    cuda = torch.cuda.is_available()

    def trainer(subset: list[dict], max_steps: int = -1) -> TimedDPOTrainer:
        extra = {} if grad_ckpt is None else {"gradient_checkpointing": grad_ckpt}  # None: as shipped (True)
        args = DPOConfig(output_dir=out_dir, beta=BETA, loss_type="sigmoid", learning_rate=a.lr,
                         per_device_train_batch_size=a.batch, num_train_epochs=1, max_steps=max_steps,
                         bf16=cuda, use_cpu=not cuda, precompute_ref_log_probs=precompute, report_to=[],
                         logging_strategy="no", save_strategy="no", disable_tqdm=True, seed=a.seed, **extra)
        policy = common.build_model(tok, a.hidden, a.layers, a.seed)
        ref = None if precompute else common.build_model(tok, a.hidden, a.layers, a.seed)  # precompute: TRL needs none
        return TimedDPOTrainer(model=policy, ref_model=ref, args=args, train_dataset=Dataset.from_list(subset),
                               processing_class=tok)

    def same_ids(ds) -> bool:  # TRL appends EOS as text and infers the boundary: same ids as larpo's encoding?
        return all(ds[i]["prompt_ids"] == encode_prompt(tok, r["prompt"])
                   and ds[i]["chosen_ids"] == encode_response(tok, r["chosen"])
                   and ds[i]["rejected_ids"] == encode_response(tok, r["rejected"]) for i, r in enumerate(data))

    trainer(data[: a.batch], max_steps=1).train()  # warm-up step
    gc.collect()
    train_s, phase_s, ref_s, ids_match = [], [], [], None
    for _ in range(a.repeats):
        t = trainer(data)
        ids_match = same_ids(t.train_dataset) if ids_match is None else ids_match
        with common.Timer() as t_train:
            t.train()
        train_s.append(t_train.s), ref_s.append(t.precompute_s), phase_s.append(t_train.s + t.precompute_s)
        ds, steps = t.train_dataset, t.state.global_step
        del t
        gc.collect()  # one trainer alive at a time, so peak RSS is one configuration's
    return {"ref_s": common.median(ref_s) if precompute else None, "train_s": common.median(train_s),
            "phase_s": common.median(phase_s), "steps": steps, "ids_match": ids_match,
            "example_ids": ds[0]["prompt_ids"][-3:] + ["|"] + ds[0]["chosen_ids"][:3] + ["...", ds[0]["chosen_ids"][-1]]}


def worker(a) -> dict:
    common.quiet()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    name = a.worker
    with tempfile.TemporaryDirectory() as tmp:
        tok = common.word_tokenizer(a.words, f"{tmp}/tok")
        if name in TRL_SETTINGS:
            res = trl_timing(a, tok, pair_rows(a), *TRL_SETTINGS[name], out_dir=f"{tmp}/trl")
        elif name.startswith("larpo-"):
            cfg = larpo_cfg(a, a.batch, 2 * a.batch, name == "larpo-shared", "pairwise")
            res = larpo_timing(a, tok, {name: (pair_rows(a), cfg)})[name]
        elif name == "lists":  # table 2, one process
            jobs = {}
            for m in LIST_SIZES:
                per_step = a.responses_per_step // m
                rows = common.make_lists(per_step * a.list_steps, m, (48, 96), (16, 128), a.words, a.seed + 1)
                jobs[f"m{m}"] = (rows, larpo_cfg(a, per_step, a.responses_per_step, True, "lambdarank"))
            res = larpo_timing(a, tok, jobs)
        elif name == "gain":  # table 3, one process: prompt 2x and 1x the response, shared_prompt True and False
            jobs, per_step = {}, a.responses_per_step // 4
            for ratio in (2, 1):
                p = ratio * GAIN_RESPONSE
                rows = common.make_lists(per_step * a.list_steps, 4, (p, p), (GAIN_RESPONSE,) * 2, a.words, a.seed + 2)
                for shared in (True, False):
                    jobs[f"{ratio}-{shared}"] = (rows, larpo_cfg(a, per_step, a.responses_per_step, shared, "lambdarank"))
            res = larpo_timing(a, tok, jobs)
        else:
            raise SystemExit(f"unknown worker {name!r}")
        res["model"] = common.describe_model(common.build_model(tok, a.hidden, a.layers, a.seed))
    res.update(rss_mb=common.peak_rss_mb(), gpu_mb=common.peak_gpu_mb(), machine=common.machine())
    return res


def padding_line(a) -> str:
    """Padded fraction of micro-batch positions: the step's lists in shuffled order vs sorted by list_tokens."""
    with tempfile.TemporaryDirectory() as tmp:
        tok = common.word_tokenizer(a.words, f"{tmp}/tok")
        encoded = encode_lists(tok, ranked(pair_rows(a)))
    pad = tok.pad_token_id
    lengths = [list_tokens(el) for el in encoded]
    order = torch.randperm(len(encoded), generator=torch.Generator().manual_seed(a.seed * 1000)).tolist()  # as train_phase
    counts = {k: [0, 0] for k in ("lists-shuffled", "lists-sorted", "pairs-shuffled", "pairs-sorted")}
    for start in range(0, len(order), a.batch):
        step = order[start : start + a.batch]
        for how, ids in (("shuffled", step), ("sorted", sorted(step, key=lambda i: lengths[i]))):
            for j in range(0, len(ids), a.micro):
                micro = [encoded[i] for i in ids[j : j + a.micro]]
                b = collate_lists([(e.prompt_ids, e.response_ids) for e in micro], pad)
                real = int(b["prompt_mask"].sum() + b["response_mask"].sum())
                c = counts[f"lists-{how}"]
                c[0] += b["prompt_ids"].numel() + b["response_ids"].numel() - real
                c[1] += b["prompt_ids"].numel() + b["response_ids"].numel()
                b = collate_pairs([(e.prompt_ids, r) for e in micro for r in e.response_ids], pad)
                c = counts[f"pairs-{how}"]
                c[0] += int((b["attention_mask"] == 0).sum())
                c[1] += b["attention_mask"].numel()
    f = {k: 100 * v[0] / v[1] for k, v in counts.items()}
    return (f"Padding (table-1 pairs, {a.batch} lists/step, micro-batches of {a.micro}): shared-prompt layout "
            f"{f['lists-shuffled']:.1f}% shuffled -> {f['lists-sorted']:.1f}% length-grouped; "
            f"one-sequence-per-response layout {f['pairs-shuffled']:.1f}% -> {f['pairs-sorted']:.1f}%")


def main() -> int:
    a = parse()
    if a.worker:
        common.emit(worker(a))
        return 0
    if a.micro >= a.batch:
        raise SystemExit("--micro must be smaller than --batch")
    run = lambda name: common.run_worker(__file__, name, sys.argv[1:])  # noqa: E731
    out, first = [], None
    if "1" in a.tables:
        r = {n: run(n) for n in ("larpo-shared", "larpo-unshared", *TRL_SETTINGS)}
        first = r["larpo-shared"]
        bad = [n for n in TRL_SETTINGS if not r[n]["ids_match"]]
        if bad:
            raise SystemExit(f"token ids differ between larpo and TRL in {bad}")
        pairs, tokens, cands = first["lists"], first["tokens"], first["responses"]
        gpu = first["gpu_mb"] is not None
        head = ["trainer", "setting", "pairs/s", "tokens/s", "phase s", "ref s", "ref ms/cand", "train ms/cand",
                "peak RSS MB", *(["peak GPU MB"] if gpu else []), "larpo(shared)/this", "larpo(unshared)/this"]
        rows = []
        labels = {"larpo-shared": "shared_prompt=True", "larpo-unshared": "shared_prompt=False",
                  "trl-shipped": "as shipped (grad ckpt on)", "trl-nogc": "gradient_checkpointing=False",
                  "trl-precompute": "no grad ckpt + precompute_ref_log_probs"}
        for n, v in r.items():
            speed = lambda x: pairs / x["phase_s"]  # noqa: E731
            ref = "in step" if v["ref_s"] is None else f"{v['ref_s']:.2f}"
            ref_c = "-" if v["ref_s"] is None else f"{1e3 * v['ref_s'] / cands:.2f}"
            ratio = [f"{speed(r[k]) / speed(v):.2f}x" if n.startswith("trl") else "" for k in ("larpo-shared", "larpo-unshared")]
            rows.append(["larpo" if n.startswith("larpo") else "TRL", labels[n], f"{speed(v):.1f}",
                         f"{tokens / v['phase_s']:.0f}", f"{v['phase_s']:.2f}", ref, ref_c,
                         f"{1e3 * v['train_s'] / cands:.2f}", f"{v['rss_mb']:.0f}",
                         *([f"{v['gpu_mb']:.0f}"] if gpu else []), *ratio])
        out.append(f"### Table 1: larpo vs TRL DPO ({pairs} pairs, {first['steps']} steps of {a.batch} pairs, "
                   f"{tokens} prompt+chosen+rejected tokens, median of {a.repeats})\n\n" + common.table(head, rows)
                   + f"\n\nTRL saw the same token ids as larpo on all {pairs} pairs (e.g. prompt end | chosen: "
                   f"{r['trl-shipped']['example_ids']}). 'ref' = larpo's reference_logps / TRL's precompute; "
                   "TRL without precompute runs its reference model inside each step.")
    if "2" in a.tables:
        res = run("lists")
        first = first or res
        r = {m: res[f"m{m}"] for m in LIST_SIZES}
        per_resp = {m: v["train_s"] / v["responses"] for m, v in r.items()}
        rows = [[m, v["lists"] // v["steps"], v["responses"] // v["steps"], f"{v['train_s'] / v['steps']:.3f}",
                 f"{1e3 * v['train_s'] / v['lists']:.1f}", f"{1e3 * per_resp[m]:.2f}",
                 f"{1e3 * v['ref_s'] / v['responses']:.2f}"] for m, v in r.items()]
        out.append(f"### Table 2: larpo on lists of m responses ({a.responses_per_step} responses/step, "
                   f"{a.list_steps} steps, prompts 48-96, responses 16-128 tokens, shared_prompt=True, "
                   f"median of {a.repeats})\n\n"
                   + common.table(["m", "lists/step", "responses/step", "train s/step", "train ms/list",
                                   "train ms/response", "ref ms/response"], rows)
                   + f"\n\nTime per response, m={LIST_SIZES[-1]} / m={LIST_SIZES[0]}: "
                   f"{per_resp[LIST_SIZES[-1]] / per_resp[LIST_SIZES[0]]:.2f} (target <= 1.1)")
    if "3" in a.tables:
        res = run("gain")
        first = first or res
        rows, gains = [], {}
        for ratio in (2, 1):
            s, u = res[f"{ratio}-True"], res[f"{ratio}-False"]
            gains[ratio] = u["train_s"] / s["train_s"]
            rows.append([f"{ratio * GAIN_RESPONSE}:{GAIN_RESPONSE}", f"{s['train_s'] / s['steps']:.3f}",
                         f"{u['train_s'] / u['steps']:.3f}", f"{gains[ratio]:.2f}x",
                         f"{s['ref_s'] / s['steps']:.3f}"])
        out.append(f"### Table 3: one prompt pass per list (m=4, {a.responses_per_step // 4} lists/step, "
                   f"{a.list_steps} steps, median of {a.repeats})\n\n"
                   + common.table(["prompt:response tokens", "shared s/step", "unshared s/step", "gain",
                                   "shared ref s/step"], rows)
                   + f"\n\nGain at 2:1 (training steps; the reference pass shares prompts too, see table 1): "
                   f"{gains[2]:.2f}x (target >= 1.5x)")
    if "4" in a.tables:
        out.append(padding_line(a))
    if first:
        print(f"\nMachine: {first['machine']}\nModel: {first['model']}\n")
    print("\n\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
