"""report.md and PNG plots of a run, rebuilt from the run directory's files alone."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from . import config as config_mod  # noqa: E402
from .candidates import iteration_dir, iterations_with, load_candidates  # noqa: E402
from .io import read_jsonl, write_text_atomic  # noqa: E402
from .metrics import HEADLINES  # noqa: E402


def _policy_evals(run_dir: Path) -> list[dict]:
    evals = [json.loads((run_dir / "eval_sft.json").read_text())] if (run_dir / "eval_sft.json").exists() else []
    return evals + [json.loads((iteration_dir(run_dir, s) / "eval.json").read_text())
                    for s in iterations_with(run_dir, "eval.json")]


def _plot_evals(evals: list[dict], path: Path, initial: str) -> None:
    fig, ax = plt.subplots(figsize=(5, 3.2))
    x = list(range(len(evals)))
    ax.plot(x, [e["exact_accuracy"] for e in evals], marker="o", label="exact accuracy")
    ax.plot(x, [e["gold_reward"] for e in evals], marker="s", label="gold reward")
    ax.set_xticks(x, [initial] + [str(i) for i in x[1:]])
    ax.set_xlabel("LarPO iterations completed")
    ax.set_ylabel("held-out, greedy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _smooth(values: list[float | None], window: int = 20) -> list[float]:
    """Trailing moving mean; None (a step with no ordered pair) is skipped."""
    out = []
    for i in range(len(values)):
        part = [v for v in values[max(0, i - window + 1) : i + 1] if v is not None]
        out.append(sum(part) / len(part) if part else float("nan"))
    return out


def _plot_training(rows: list[dict], path: Path) -> None:
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    for s in sorted({r["iteration"] for r in rows}):
        part = [r for r in rows if r["iteration"] == s]
        steps = [r["step"] for r in part]
        a.plot(steps, _smooth([r["loss"] for r in part]), label=f"iteration {s + 1}")
        b.plot(steps, _smooth([r["pair_accuracy"] for r in part]), label=f"iteration {s + 1}")
    a.set(xlabel="step", ylabel="ranking loss", title="training loss (moving mean of 20 steps)")
    b.set(xlabel="step", ylabel="fraction of pairs", title="pair accuracy (γ orders as the reranker)", ylim=(0, 1))
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_rewards(run_dir: Path, iterations: list[int], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5, 3.2))
    data = [[c.reward for c in load_candidates(run_dir, s) if c.iteration == s] for s in iterations]
    ax.violinplot(data, positions=[s + 1 for s in iterations], showmeans=True)
    ax.set(xlabel="iteration", ylabel="reward", title="reward of the sampled candidates")
    ax.set_xticks([s + 1 for s in iterations])
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _table(evals: list[dict], initial: str) -> list[str]:
    """One row per policy: its headlines (strict accuracy where the task scores it), mean length, prompts."""
    keys = [key for key in HEADLINES if key in evals[0]]
    lines = ["| policy | " + " | ".join(key.replace("_", " ") for key in keys) + " | mean length | prompts |",
             "|---" * (len(keys) + 3) + "|"]
    for i, e in enumerate(evals):
        name = initial if i == 0 else f"iteration {i}"
        lines.append(f"| {name} | " + " | ".join(f"{e[key]:.3f}" for key in keys) + f" | {e['mean_length']:.2f} | {e['n_prompts']} |")
    return lines


def write_report(run_dir: str | Path) -> Path:
    """Write ``run_dir/report.md`` and ``run_dir/plots/*.png``; return the report's path."""
    run_dir = Path(run_dir)
    plots = run_dir / "plots"
    plots.mkdir(exist_ok=True)
    metrics = read_jsonl(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").exists() else []
    evals = _policy_evals(run_dir)
    train_rows = [r for r in metrics if r.get("stage") == "train"]
    iterations = iterations_with(run_dir, "candidates.jsonl")
    lines = [f"# LarPO run: {run_dir.name}", "", "Resolved config: [config.yaml](config.yaml).", ""]
    if evals:
        initial = config_mod.load(run_dir / "config.yaml").initial_label
        _plot_evals(evals, plots / "heldout.png", initial)
        lines += ["## Held-out evaluation (greedy decoding)", "", *_table(evals, initial), "", "![held-out](plots/heldout.png)", ""]
    if train_rows:
        _plot_training(train_rows, plots / "training.png")
        lines += ["## Training", "", "![training](plots/training.png)", ""]
    if iterations:
        _plot_rewards(run_dir, iterations, plots / "rewards.png")
        lines += ["## Candidates", "", "| iteration | candidates | unfinished | mean reward | lists | skipped (all tied) "
                  "| skipped (no hard negative) |", "|---|---|---|---|---|---|---|"]
        for s in iterations:
            cands = [c for c in load_candidates(run_dir, s) if c.iteration == s]
            stats_path = iteration_dir(run_dir, s) / "lists_stats.json"
            stats = json.loads(stats_path.read_text()) if stats_path.exists() else {}
            mean = sum(c.reward for c in cands) / max(len(cands), 1)
            lines.append(f"| {s + 1} | {len(cands)} | {sum(not c.finished for c in cands)} | {mean:.3f} | "
                         f"{stats.get('lists', '-')} | {stats.get('skipped_tied', '-')} | {stats.get('skipped_no_negative', '-')} |")
        lines += ["", "![rewards](plots/rewards.png)", ""]
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").exists() else None
    if summary and summary.get("difference"):
        lines += ["Final − initial on the same held-out prompts (mean, paired 95% bootstrap interval): " + "; ".join(
            f"{key.replace('_', ' ')} {d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"
            for key, d in summary["difference"].items()) + ".", ""]
    times = [r for r in metrics if r.get("stage") == "time"]
    if times:
        lines += ["## Time per stage", "", "| stage | iteration | seconds |", "|---|---|---|"]
        lines += [f"| {r['name']} | {'' if r['iteration'] is None else r['iteration'] + 1} | {r['seconds']:.1f} |" for r in times]
        lines += [f"| all stages | | {sum(r['seconds'] for r in times):.1f} |", ""]
    if summary:
        lines += [f"Wall time of the last invocation: {summary['wall_seconds']:.0f} s.", ""]
    out = run_dir / "report.md"
    write_text_atomic(out, "\n".join(lines))
    return out


def _cell(value: float | None, width: int, sign: str = "") -> str:
    """A number for the closing table; an undefined one (None) prints as "–"."""
    return f"{'–':>{width}}" if value is None else f"{value:>{sign}{width}.3f}"


def print_summary(summary: dict, run_dir: Path) -> None:
    """The short table the terminal ends with."""
    sft, final = summary["sft"], summary["final"]
    label = summary.get("initial_label", "SFT")
    print()
    print(f"{'held-out (greedy)':<20}{label:>8}{'final':>8}{'change':>9}  paired 95% CI")
    rows = [(key, sft[key], final[key]) for key in HEADLINES if key in sft and key in final]
    retriever = summary.get("retriever")
    if retriever:
        ks = [k for k in retriever["final"] if k.startswith("pass@")]
        rows += [(f"{key} (T={retriever['final']['temperature']})", retriever["sft"][key], retriever["final"][key])
                 for key in (ks[0], ks[-1], "ndcg", "mrr")]
    differences = summary.get("difference", {})
    for name, a, b in rows:
        change = None if a is None or b is None else b - a
        interval = differences.get(name)
        ci = f"  [{interval['low']:+.3f}, {interval['high']:+.3f}]" if interval else ""
        print(f"{name:<20}{_cell(a, 8)}{_cell(b, 8)}{_cell(change, 9, '+')}{ci}")
    print(f"\n{sft['n_prompts']} held-out prompts; wall time {summary['wall_seconds']:.0f} s; "
          f"report: {run_dir / 'report.md'}")
