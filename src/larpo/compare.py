"""``larpo compare RUN_DIR...``: runs side by side — one table with intervals, plots with error bars.

Reads only the files a run leaves: ``summary.json`` (each policy's held-out greedy evaluation,
with per-prompt values) and, when present, ``retriever_eval_sft.json`` /
``retriever_eval_final.json`` (pass@k per temperature, written by the run's final evaluation).
"""

from __future__ import annotations

import json
from pathlib import Path

from .config import ConfigError
from .metrics import bootstrap_ci


def load_run(run_dir: str | Path) -> dict:
    """The comparable facts of one run directory."""
    run_dir = Path(run_dir)
    path = run_dir / "summary.json"
    if not path.is_file():
        raise ConfigError(f"{run_dir}: no summary.json; expected a finished larpo run directory")
    summary = json.loads(path.read_text())
    retriever = {}
    for name in ("sft", "final"):
        p = run_dir / f"retriever_eval_{name}.json"
        if p.is_file():
            retriever[name] = json.loads(p.read_text())
    return {"name": run_dir.name, "dir": str(run_dir), "summary": summary, "retriever": retriever}


def _ci(evaluation: dict, field: str, key: str) -> tuple[float, float | None, float | None]:
    """Mean and 95% bootstrap interval over prompts; no interval when per-prompt values are missing."""
    values = evaluation.get("per_prompt", {}).get(field)
    if values is None:
        return evaluation[key], None, None
    return bootstrap_ci(values)


def _fmt(stat: tuple[float, float | None, float | None]) -> str:
    mean, lo, hi = stat
    return f"{mean:.3f}" if lo is None else f"{mean:.3f} [{lo:.3f}, {hi:.3f}]"


def comparison_table(runs: list[dict]) -> str:
    header = ["run", "prompts", "initial accuracy", "final accuracy", "initial gold reward", "final gold reward",
              "pass@1 / pass@N (final)", "wall s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run in runs:
        sft, final = run["summary"]["sft"], run["summary"]["final"]
        cols = [run["name"], str(final["n_prompts"])]
        for evaluation, field, key in ((sft, "correct", "exact_accuracy"), (final, "correct", "exact_accuracy"),
                                       (sft, "reward", "gold_reward"), (final, "reward", "gold_reward")):
            cols.append(_fmt(_ci(evaluation, field, key)))
        block = run["retriever"].get("final", {}).get("sampled", {})
        if block:
            t, b = next(iter(block.items()))
            ks = list(b["pass_at_k"])
            cols.append(f"T={t}: {b['pass_at_k'][ks[0]]['mean']:.3f} / {b['pass_at_k'][ks[-1]]['mean']:.3f} (N={ks[-1]})")
        else:
            cols.append("—")
        cols.append(f"{run['summary']['wall_seconds']:.0f}")
        lines.append("| " + " | ".join(cols) + " |")
    return "\n".join(lines) + "\n"


def plot_comparison(runs: list[dict], out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.3))
    for run in runs:
        for ax, field, key in ((axes[0], "correct", "exact_accuracy"), (axes[1], "reward", "gold_reward")):
            stats = [_ci(e, field, key) for e in run["summary"]["per_policy"]]
            means = [s[0] for s in stats]
            errors = None if any(s[1] is None for s in stats) else [
                [s[0] - s[1] for s in stats], [s[2] - s[0] for s in stats]]
            ax.errorbar(range(len(stats)), means, yerr=errors, marker="o", capsize=3, label=run["name"])
    for ax, title in zip(axes, ("held-out exact accuracy", "held-out gold reward")):
        ax.set(xlabel="LarPO iterations completed (0 = the initial policy)", title=title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    written.append(out_dir / "compare_iterations.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)

    temperatures = sorted({t for r in runs for e in r["retriever"].values() for t in e["sampled"]}, key=float)
    if temperatures:
        fig, axes = plt.subplots(1, len(temperatures), figsize=(4.5 * len(temperatures), 3.3), squeeze=False)
        for ax, t in zip(axes[0], temperatures):
            for i, run in enumerate(runs):
                for stage, style in (("sft", "--"), ("final", "-")):
                    block = run["retriever"].get(stage, {}).get("sampled", {}).get(t)
                    if block is None:
                        continue
                    ks = [int(k) for k in block["pass_at_k"]]
                    s = [block["pass_at_k"][str(k)] for k in ks]
                    ax.errorbar(ks, [v["mean"] for v in s], yerr=[[v["mean"] - v["low"] for v in s], [v["high"] - v["mean"] for v in s]],
                                linestyle=style, marker="o", capsize=3, color=f"C{i}", label=f"{run['name']} {stage}")
            ax.set_xscale("log", base=2)
            ax.set(xlabel="k", ylabel="pass@k (= Recall@k)", title=f"T = {t}", ylim=(0, 1.02))
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.tight_layout()
        written.append(out_dir / "compare_pass_at_k.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    return written
