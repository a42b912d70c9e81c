"""The closing table and report.md: undefined metrics, and what the initial policy is called."""

from larpo.report import print_summary


def summary(ndcg_sft, ndcg_final, label="SFT"):
    block = {"exact_accuracy": 0.25, "gold_reward": 0.5, "n_prompts": 8}
    brief = lambda ndcg: {"pass@1": 0.1, "pass@8": 0.4, "temperature": 1.0, "ndcg": ndcg, "mrr": ndcg}  # noqa: E731
    return {"initial_label": label, "sft": block, "final": {**block, "exact_accuracy": 0.5}, "wall_seconds": 3.0,
            "retriever": {"sft": brief(ndcg_sft), "final": brief(ndcg_final)}}


def test_undefined_ranking_metrics_print_as_a_dash(capsys, tmp_path):
    print_summary(summary(None, 0.75), tmp_path)  # every SFT prompt's samples tied: NDCG undefined
    lines = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert lines["ndcg"] == ["(T=1.0)", "–", "0.750", "–"]
    assert lines["exact_accuracy"] == ["0.250", "0.500", "+0.250"]


def test_the_initial_policy_is_called_what_it_is(capsys, tmp_path):
    print_summary(summary(0.5, 0.5, label="initial"), tmp_path)
    header = capsys.readouterr().out.strip().splitlines()[0].split()
    assert header[:4] == ["held-out", "(greedy)", "initial", "final"]
