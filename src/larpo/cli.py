"""The ``larpo`` command: run, sft, train-lists, report, eval, compare, sweep, export-lists, export-model, import-gguf.

User errors (a bad config, a missing file, an exception in the user's own function) print one
line and exit with code 2, no traceback (``--debug`` adds it). The config is read and checked
before torch and transformers are imported, so a bad config answers at once.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path

from . import config as config_mod
from .config import ConfigError
from .io import write_json_atomic, write_text_atomic

USAGE_OVERRIDES = "section.field=value overrides, e.g. train.loss=listmle sampling.k=4 (values parsed as YAML)"
USAGE_REPORT_TO = ("experiment trackers that get every training step and evaluation, comma-separated: tensorboard, "
                   "wandb, mlflow, trackio, ... (accelerate's; the config's `report_to`, default none); their local "
                   "files go to OUT/tracker/")


def _add_report_to(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--report-to", metavar="TRACKERS", help=USAGE_REPORT_TO)


def _option_overrides(args: argparse.Namespace) -> list[str]:
    """The config overrides that --threads and --report-to stand for."""
    overrides = [f"threads={args.threads}"] if getattr(args, "threads", None) is not None else []
    if args.report_to is not None:
        overrides.append(f"report_to={json.dumps(args.report_to.split(','))}")
    return overrides


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config file (default: the embedded default, configs/default.yaml)")
    parser.add_argument("--out", help="run directory (default: runs/<config name>); rerun the same command to resume")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--threads", type=int, metavar="N", help="torch threads in every process (the config's "
                        "`threads`); 1 is much faster on a machine shared with other work")
    _add_report_to(parser)
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=USAGE_OVERRIDES)


def _resolve(args: argparse.Namespace) -> tuple[config_mod.Config, Path]:
    cfg = config_mod.load(args.config, [*args.overrides, *_option_overrides(args)])
    out = Path(args.out) if args.out else Path("runs") / (Path(args.config).stem if args.config else "default")
    return cfg, out


def cmd_run(args: argparse.Namespace) -> int:
    cfg, out = _resolve(args)  # before the heavy imports below
    from .loop import run
    from .report import print_summary, write_report

    summary = run(cfg, out, progress=not args.quiet)
    from accelerate import PartialState

    if PartialState().is_main_process:  # under torchrun / accelerate launch, one report
        write_report(out)
        print_summary(summary, out)
    return 0


def cmd_sft(args: argparse.Namespace) -> int:
    cfg, out = _resolve(args)
    from .loop import run_sft_only

    scores = run_sft_only(cfg, out, progress=not args.quiet)
    print(f"[larpo] SFT policy in {out / 'sft'}: held-out exact accuracy {scores['exact_accuracy']:.3f}, "
          f"gold reward {scores['gold_reward']:.3f}")
    return 0


def cmd_train_lists(args: argparse.Namespace) -> int:
    cfg = config_mod.load(args.config, [*args.overrides, *_option_overrides(args)])  # before the heavy imports below
    if args.model is not None:
        cfg.model.path = args.model
    from .listdata import Fields
    from .train_lists import run_train_lists

    fields = Fields(args.prompt_field, args.responses_field, args.rewards_field)
    run_train_lists(cfg, args.data, args.out, fields, args.split, args.drop_bad_rows, args.eval, progress=not args.quiet,
                    strict=args.strict)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report

    run_dir = Path(args.run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{run_dir}: not a larpo run directory (no config.yaml)")
    print(f"[larpo] wrote {write_report(run_dir)}")
    return 0


def _eval_config(args: argparse.Namespace) -> config_mod.Config:
    """--config if given; else the config.yaml of the run POLICY_DIR belongs to (sft/ or
    iter_<s>/policy/: its parent or grandparent); else the embedded default."""
    if args.config:
        return config_mod.load(args.config)
    policy = Path(args.policy_dir).resolve()
    for run_dir in (policy.parent, policy.parent.parent):
        if (run_dir / "config.yaml").is_file():
            return config_mod.load(run_dir / "config.yaml")
    return config_mod.load(None)


def cmd_eval(args: argparse.Namespace) -> int:
    from .evaluate import format_table, retriever_eval
    from .models import policy_from_config
    from .rerankers import build_reranker
    from .tasks import build_task

    cfg = _eval_config(args)
    try:
        temperatures = [float(t) for t in args.temperatures.split(",")] if args.temperatures else [cfg.sampling.temperature]
    except ValueError:
        raise ConfigError(f"--temperatures: got {args.temperatures!r}, expected comma-separated numbers") from None
    if any(t <= 0 for t in temperatures) or args.samples < 1 or (args.prompts is not None and args.prompts < 1):
        raise ConfigError("--temperatures, --samples and --prompts: expected positive values")
    task = build_task(cfg.task)
    examples = task.eval_examples()[: args.prompts or cfg.eval.n_prompts]
    if cfg.threads is not None:
        import torch

        torch.set_num_threads(cfg.threads)
    from accelerate import PartialState

    device = PartialState().device  # the GPU where there is one
    model, tokenizer = policy_from_config(args.policy_dir, cfg.model, device=device)  # model.dtype and the token limits
    baseline = policy_from_config(args.baseline, cfg.model, device=device) if args.baseline else None
    reranker = build_reranker(cfg.reranker, task, model.device, cfg.model.dtype, cfg.model.hub_kernels)
    result = retriever_eval(model, tokenizer, task, examples, reranker, args.samples,
                            temperatures, cfg.sampling.max_new_tokens, cfg.eval.batch_size, cfg.seed, baseline,
                            progress=True)
    result.update(policy=str(args.policy_dir), baseline_policy=args.baseline)
    out = Path(args.out) if args.out else Path(args.policy_dir) / "retriever_eval.json"
    write_json_atomic(out, result)
    print(format_table(result))
    print(f"[larpo] wrote {out}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .compare import comparison_table, load_run, plot_comparison

    runs = [load_run(d) for d in args.run_dirs]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = comparison_table(runs)
    plots = plot_comparison(runs, out)
    write_text_atomic(out / "compare.md", table + "".join(f"\n![{p.stem}]({p.name})\n" for p in plots))
    print(table)
    print(f"[larpo] wrote {out / 'compare.md'} and {', '.join(p.name for p in plots)}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from .sweep import run_grid
    from .sweep_grid import load_grid
    from .sweep_stats import format_results

    grid = load_grid(args.grid)
    out = Path(args.out) if args.out else Path("sweeps") / grid.name
    results = run_grid(grid, out, progress=not args.quiet, sft_cache=args.sft_cache)
    print(format_results(grid, results))
    print(f"[larpo] wrote {out / (grid.name + '.md')} and {out / (grid.name + '.png')}")
    return 0


def cmd_export_lists(args: argparse.Namespace) -> int:
    from .export import export_lists

    n = export_lists(args.run_dir, args.out, args.fmt, iteration=args.iteration, pairs=args.pairs.replace("-", "_"))
    print(f"[larpo] wrote {n} rows to {args.out}")
    return 0


def cmd_export_model(args: argparse.Namespace) -> int:
    from .models import export_model

    merged = export_model(args.policy_dir, args.out_dir, trust_remote_code=args.trust_remote_code)
    print(f"[larpo] wrote {'the merged LoRA policy' if merged else 'the policy'} to {args.out_dir}")
    return 0


def cmd_import_gguf(args: argparse.Namespace) -> int:
    from .gguf import import_gguf

    record = import_gguf(args.gguf_file, args.out_dir, dtype=args.dtype)
    print(f"[larpo] wrote {args.out_dir}: {record.model_type}, {record.parameters:,} parameters in "
          f"{record.dtype}, from {record.source}; logits checked against the GGUF-loaded model")
    print(f"[larpo] {record.eos_summary()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="larpo",
        description="LLM alignment as retriever optimization: the policy retrieves K candidates, "
        "a reranker orders them, and the policy learns the ranking (listwise preference optimization).",
    )
    parser.add_argument("--debug", action="store_true", help="with a user error, also print its traceback "
                        "(e.g. of an exception raised in your reward function)")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_run, _add_sft, _add_train_lists, _add_report, _add_eval, _add_export_lists, _add_compare, _add_sweep,
                _add_export_model, _add_import_gguf):
        add(sub)
    return parser


def _add_run(sub) -> None:
    """The ``run`` command and its arguments."""
    run = sub.add_parser("run", help="run LarPO end to end (build, SFT, iterations, evaluation, report)",
                         description="Run LarPO end to end. With no arguments: the embedded default on a tiny "
                         "model (2-digit addition, lambdarank, K=10, top-2 + bottom-2, 3 iterations).")
    _add_run_arguments(run)
    run.set_defaults(func=cmd_run)


def _add_sft(sub) -> None:
    """The ``sft`` command and its arguments."""
    sft = sub.add_parser("sft", help="build the initial policy and warm it up with SFT only",
                         description="Build (or load) the initial policy, run the SFT warm-up and evaluate it. "
                         "A later `larpo run` with the same --out reuses it.")
    _add_run_arguments(sft)
    sft.set_defaults(func=cmd_sft)


def _add_train_lists(sub) -> None:
    """The ``train-lists`` command and its arguments."""
    tl = sub.add_parser("train-lists", help="train a model on ranked lists you already have (listwise, TRL pairs, a dataset)",
                        description="Train MODEL on the ranked lists in DATA with the configured loss: one LarPO "
                        "training phase, reference = the starting model, for train.epochs; the policy is saved to "
                        "OUT/policy. DATA is listwise JSONL {prompt, responses, rewards} (export-lists --format "
                        "listwise, RLHFlow), TRL preference JSONL {prompt, chosen, rejected}, or a directory saved "
                        "with datasets' save_to_disk; see docs/train-lists.md. A malformed row is an error naming file, "
                        "line and field; a row that makes no list (fewer than two responses, all rewards tied) is "
                        "dropped; how many lists were used and dropped, and why, is printed and written to "
                        "OUT/data_report.json. An empty response is one that ended at once (trained as EOS alone).")
    tl.add_argument("data", metavar="DATA", help="a JSONL file, or a dataset directory saved with save_to_disk")
    tl.add_argument("--model", metavar="DIR", help="the local model to train (model.path; default: the config's)")
    tl.add_argument("--out", required=True, metavar="DIR", help="output directory: new or empty, or an unfinished train-lists run")
    tl.add_argument("--config", help="YAML config: train.*, lists.strategy/top/bottom, model.*, seed, report_to (and task.*, eval.* "
                    "with --eval); default: the embedded default")
    tl.add_argument("--split", help="the split of a saved DatasetDict")
    tl.add_argument("--prompt-field", default="prompt", metavar="FIELD", help="the prompt's field (default: prompt)")
    tl.add_argument("--responses-field", default="responses", metavar="FIELD",
                    help="the responses' field; COLUMN.KEY reads KEY from each item of a list column, e.g. "
                    "completions.response (default: responses)")
    tl.add_argument("--rewards-field", default="rewards", metavar="FIELD",
                    help="the rewards' field, e.g. completions.overall_score (default: rewards)")
    tl.add_argument("--drop-bad-rows", action="store_true",
                    help="drop a malformed row (a missing field, a wrong type, lengths that disagree, a reward that is "
                    "not a finite number), counted by reason, instead of stopping at the first")
    tl.add_argument("--strict", action="store_true",
                    help="stop at a row that makes no list (fewer than two responses, or rewards that all tie) instead "
                    "of dropping it and counting it")
    tl.add_argument("--eval", action="store_true",
                    help="evaluate the starting and the trained policy on the held-out prompts of the configured task")
    tl.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_report_to(tl)
    tl.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=USAGE_OVERRIDES)
    tl.set_defaults(func=cmd_train_lists)


def _add_report(sub) -> None:
    """The ``report`` command and its arguments."""
    report = sub.add_parser("report", help="regenerate report.md and plots of a run directory",
                            description="Regenerate RUN_DIR/report.md and RUN_DIR/plots/*.png from the run's files.")
    report.add_argument("run_dir", metavar="RUN_DIR")
    report.set_defaults(func=cmd_report)


def _add_eval(sub) -> None:
    """The ``eval`` command and its arguments."""
    ev = sub.add_parser("eval", help="evaluate a policy as a retriever (pass@k, Best-of-N, NDCG/MRR, win rate)",
                        description="Evaluate POLICY_DIR (a run's sft/ or iter_<s>/policy/, or any local model "
                        "directory) on held-out prompts: greedy accuracy, pass@k, Best-of-N with the reranker, "
                        "NDCG/MRR of its log-prob order against the reranker, win rate against --baseline; "
                        "each with a 95% bootstrap interval over prompts. Task and reranker come from --config, "
                        "else from the config.yaml of the run POLICY_DIR is in, else the embedded default.")
    ev.add_argument("policy_dir", metavar="POLICY_DIR")
    ev.add_argument("--config", help="YAML config for the task, reranker and decoding (default: see above)")
    ev.add_argument("--baseline", metavar="DIR", help="a second policy; its greedy responses are compared with ours")
    ev.add_argument("--samples", type=int, default=16, help="samples per prompt (default 16)")
    ev.add_argument("--temperatures", help="comma-separated, e.g. 0.3,0.7,1.0,1.2 (default: sampling.temperature)")
    ev.add_argument("--prompts", type=int, help="held-out prompts (default: eval.n_prompts)")
    ev.add_argument("--out", help="JSON file to write (default: POLICY_DIR/retriever_eval.json)")
    ev.set_defaults(func=cmd_eval)


def _add_export_lists(sub) -> None:
    """The ``export-lists`` command and its arguments."""
    ex = sub.add_parser("export-lists", help="export a run's ranked lists as a TRL preference or listwise dataset",
                        description="Write the ranked lists of RUN_DIR (every iteration, or --iteration S) as JSON "
                        "lines: --format trl gives {prompt, chosen, rejected} rows (best vs worst of each list, or "
                        "every strictly ordered pair with --pairs all); --format listwise gives "
                        "{prompt, responses, rewards} rows, best first.")
    ex.add_argument("run_dir", metavar="RUN_DIR")
    ex.add_argument("--iteration", type=int, metavar="S", help="only iteration S (0-based, as in iter_<S>/)")
    ex.add_argument("--format", required=True, choices=["trl", "listwise"], dest="fmt")
    ex.add_argument("--pairs", choices=["best-worst", "all"], default="best-worst", help="trl pairs per list")
    ex.add_argument("--out", required=True, metavar="FILE.jsonl")
    ex.set_defaults(func=cmd_export_lists)


def _add_compare(sub) -> None:
    """The ``compare`` command and its arguments."""
    cmp = sub.add_parser("compare", help="put finished runs side by side: a table with intervals, plots",
                         description="Compare finished runs: held-out greedy accuracy and gold reward of the SFT and "
                         "final policies with 95% bootstrap intervals over prompts, pass@k of the final policy; "
                         "plots of every iteration with error bars and pass@k curves per temperature (SFT dashed, "
                         "final solid) where the runs recorded a retriever evaluation.")
    cmp.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    cmp.add_argument("--out", default="compare", help="directory for compare.md and the plots (default: compare/)")
    cmp.set_defaults(func=cmd_compare)


def _add_sweep(sub) -> None:
    """The ``sweep`` command and its arguments."""
    sw = sub.add_parser("sweep", help="run a grid of config overrides x seeds and test the differences",
                        description="Run every cell x seed of GRID.yaml as an ordinary run directory (resumable; equal "
                        "configs run once; SFT checkpoints shared), then write <out>/<name>.md/json/png: mean and 95% "
                        "interval over seeds per cell, the difference to the baseline cell and paired t-tests. "
                        "Several grids may share one --out: equal configs then run once across them. "
                        "Grid format: see configs/ablations/ and docs/findings.md.")
    sw.add_argument("grid", metavar="GRID.yaml")
    sw.add_argument("--out", help="sweep directory (default: sweeps/<grid name>); rerun to resume")
    sw.add_argument("--quiet", action="store_true", help="no progress bar")
    sw.add_argument("--sft-cache", metavar="DIR", help="SFT checkpoints shared across sweeps (default: <out>/sft-cache)")
    sw.set_defaults(func=cmd_sweep)


def _add_export_model(sub) -> None:
    """The ``export-model`` command and its arguments."""
    em = sub.add_parser("export-model", help="save a policy as a plain Hugging Face model (LoRA adapters merged)",
                        description="Save POLICY_DIR (a run's sft/ or iter_<s>/policy/) to OUT_DIR as a plain "
                        "model + tokenizer (safetensors) that transformers loads with no peft and no base model: "
                        "LoRA adapters are merged into the base weights; a full model is re-saved as it is.")
    em.add_argument("policy_dir", metavar="POLICY_DIR")
    em.add_argument("out_dir", metavar="OUT_DIR")
    em.add_argument("--trust-remote-code", action="store_true", help="allow the model's own code (model.trust_remote_code)")
    em.set_defaults(func=cmd_export_model)


def _add_import_gguf(sub) -> None:
    """The ``import-gguf`` command and its arguments."""
    ig = sub.add_parser("import-gguf", help="convert a GGUF model file into a local policy directory (safetensors)",
                        description="Convert FILE.gguf (any causal LM that transformers reads from GGUF; quantised "
                        "weights are dequantised) into OUT_DIR: safetensors weights, config, tokenizer with its chat "
                        "template, and EOS set to the chat template's end-of-turn token. The saved directory is "
                        "reloaded and must give the GGUF-loaded model's logits exactly. Needs the gguf package "
                        "(pip install 'larpo[gguf]').")
    ig.add_argument("gguf_file", metavar="FILE.gguf")
    ig.add_argument("out_dir", metavar="OUT_DIR", help="must not exist, or be empty")
    ig.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="of the saved weights (default float32)")
    ig.set_defaults(func=cmd_import_gguf)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse fills a KEY=VALUE list from the first run of positionals only; take those after an option too
    if extra and (not hasattr(args, "overrides") or any(item.startswith("-") for item in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.overrides += extra
    # Our own bars cover every long stage; transformers reads this when it is first imported.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        code = args.func(args)
        if "torch.distributed" in sys.modules:  # the command may have joined a process group: leave it
            from .parallel import end_processes

            end_processes()
        return code
    except ConfigError as e:
        if args.debug:
            traceback.print_exc()
        print(f"larpo: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("larpo: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
