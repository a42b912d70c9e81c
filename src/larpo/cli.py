"""The ``larpo`` command: run, sft, report.

User errors (a bad config, a missing file) print one line and exit with code 2, no traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import config as config_mod
from .config import ConfigError

USAGE_OVERRIDES = "section.field=value overrides, e.g. train.loss=listmle sampling.k=4 (values parsed as YAML)"


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config file (default: the embedded default, configs/default.yaml)")
    parser.add_argument("--out", help="run directory (default: runs/<config name>); rerun the same command to resume")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=USAGE_OVERRIDES)


def _resolve(args: argparse.Namespace) -> tuple[config_mod.Config, Path]:
    cfg = config_mod.load(args.config, args.overrides)
    out = Path(args.out) if args.out else Path("runs") / (Path(args.config).stem if args.config else "default")
    return cfg, out


def cmd_run(args: argparse.Namespace) -> int:
    from .loop import run
    from .report import print_summary, write_report

    cfg, out = _resolve(args)
    summary = run(cfg, out, progress=not args.quiet)
    write_report(out)
    print_summary(summary, out)
    return 0


def cmd_sft(args: argparse.Namespace) -> int:
    from .loop import run_sft_only

    cfg, out = _resolve(args)
    scores = run_sft_only(cfg, out, progress=not args.quiet)
    print(f"[larpo] SFT policy in {out / 'sft'}: held-out exact accuracy {scores['exact_accuracy']:.3f}, "
          f"gold reward {scores['gold_reward']:.3f}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report

    run_dir = Path(args.run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{run_dir}: not a larpo run directory (no config.yaml)")
    print(f"[larpo] wrote {write_report(run_dir)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="larpo",
        description="LLM alignment as retriever optimization: the policy retrieves K candidates, "
        "a reranker orders them, and the policy learns the ranking (listwise preference optimization).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run LarPO end to end (build, SFT, iterations, evaluation, report)",
                         description="Run LarPO end to end. With no arguments: the embedded default on a tiny "
                         "model (3-digit addition, lambdarank, K=10, top-2 + bottom-2, 3 iterations).")
    _add_run_arguments(run)
    run.set_defaults(func=cmd_run)
    sft = sub.add_parser("sft", help="build the initial policy and warm it up with SFT only",
                         description="Build (or load) the initial policy, run the SFT warm-up and evaluate it. "
                         "A later `larpo run` with the same --out reuses it.")
    _add_run_arguments(sft)
    sft.set_defaults(func=cmd_sft)
    report = sub.add_parser("report", help="regenerate report.md and plots of a run directory",
                            description="Regenerate RUN_DIR/report.md and RUN_DIR/plots/*.png from the run's files.")
    report.add_argument("run_dir", metavar="RUN_DIR")
    report.set_defaults(func=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own bars cover every long stage
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"larpo: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("larpo: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
