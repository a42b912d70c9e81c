"""larpo train-lists and train_on_lists: training on lists from data, as a library and as a command."""

import copy
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from larpo import config as C
from larpo.cli import main
from larpo.config import TrainConfig
from larpo.export import listwise_row
from larpo.io import read_jsonl
from larpo.listdata import lists_from_rows
from larpo.loop import run
from larpo.train_lists import train_on_lists

from conftest import cpu_process_env

from phase_worker import fixed_lists
from test_listdata import ULTRAFEEDBACK
from test_loop import write_small_config

HERE = Path(__file__).parent
SMALL_TRAIN = ["train.batch_size=4", "train.micro_batch_size=2", "train.lr=3e-3", "train.epochs=2", "train.warmup_ratio=0"]


def listwise_file(path: Path, n: int = 10) -> Path:
    path.write_text("".join(json.dumps(listwise_row(rl)) + "\n" for rl in fixed_lists(n)))
    return path


def train_lists(capsys, *args: str) -> tuple[int, str, str]:
    """``larpo train-lists ARGS`` in this process: (exit code, stdout, stderr)."""
    code = main(["train-lists", "--quiet", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def assert_same_weights(a: Path, b: Path, atol: float = 0.0) -> None:
    got, want = load_file(a), load_file(b)
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=atol, rtol=atol)


def test_the_library_trains_a_model_in_memory_and_returns_each_steps_metrics(tiny_model, tiny_tokenizer):
    rows = [listwise_row(rl) for rl in fixed_lists(12)]
    lists, report = lists_from_rows(rows)
    result = train_on_lists(tiny_model, tiny_tokenizer, lists, TrainConfig(loss="listmle", lr=5e-3, epochs=8, batch_size=4,
                                                                            micro_batch_size=4, warmup_ratio=0.0))
    assert report.lists == 12 and result.steps == len(result.metrics) == 8 * 3
    first, last = result.metrics[0], result.metrics[-1]
    assert set(first) == {"epoch", "step", "loss", "pair_accuracy", "margin", "grad_norm", "lr"}
    assert abs(first["margin"]) < 1e-6  # the reference is the model as it was: γ starts at 0
    assert last["loss"] < first["loss"] and last["pair_accuracy"] > first["pair_accuracy"]


def test_a_separate_reference_model_is_used_as_trls_ref_model(tiny_model, tiny_tokenizer):
    lists = fixed_lists(4)
    reference = copy.deepcopy(tiny_model)
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(0)))
    cfg = TrainConfig(loss="pairwise", beta=0.1, batch_size=4, micro_batch_size=4, epochs=1)
    step = train_on_lists(tiny_model, tiny_tokenizer, lists, cfg, ref_model=reference).metrics[0]
    assert abs(step["margin"]) > 1e-3  # γ = β·(log π − log π_ref) is no longer 0 at the start


@pytest.fixture
def uf_dir(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = [{**row, "instruction": f"{i}+{i}="} for i, row in enumerate(ULTRAFEEDBACK * 2)]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "uf"))
    return tmp_path / "uf"


@pytest.mark.parametrize("layout", ["listwise", "trl", "ultrafeedback"])
def test_the_command_trains_each_layout_and_leaves_its_outputs(layout, tiny_model_dir, tmp_path, capsys, request):
    if layout == "listwise":
        data, mapping = listwise_file(tmp_path / "l.jsonl"), []
    elif layout == "trl":
        data = tmp_path / "p.jsonl"
        data.write_text("".join(json.dumps({"prompt": rl.prompt, "chosen": rl.responses[0], "rejected": rl.responses[-1]}) + "\n"
                                for rl in fixed_lists(10)))
        mapping = []
    else:
        data = request.getfixturevalue("uf_dir")
        mapping = ["--prompt-field", "instruction", "--responses-field", "completions.response",
                   "--rewards-field", "completions.overall_score"]
    out = tmp_path / "out"
    code, stdout, err = train_lists(capsys, data, "--model", tiny_model_dir, "--out", out, *mapping, *SMALL_TRAIN)
    assert code == 0, err
    for name in ("config.yaml", "data_report.json", "metrics.jsonl", "summary.json", "policy/model.safetensors",
                 "policy/tokenizer.json"):
        assert (out / name).is_file(), name
    report, summary = json.loads((out / "data_report.json").read_text()), json.loads((out / "summary.json").read_text())
    assert report["format"] == ("pairs" if layout == "trl" else "listwise") and report["lists"] == summary["lists"]
    assert summary["steps"] == 2 * -(-report["lists"] // 4) == len(read_jsonl(out / "metrics.jsonl"))
    assert f"→ {report['lists']} lists" in stdout and "policy in" in stdout


def test_a_bad_row_stops_the_command_in_one_line_before_anything_is_written(tiny_model_dir, tmp_path, capsys):
    data = listwise_file(tmp_path / "l.jsonl", 3)
    data.write_text(data.read_text() + json.dumps({"prompt": "1+1=", "responses": ["2", "3"], "rewards": [1, "high"]}) + "\n")
    code, _, err = train_lists(capsys, data, "--model", tiny_model_dir, "--out", tmp_path / "out")
    assert code == 2 and err == f"larpo: error: {data}:4: rewards[1]: got 'high', expected a finite number\n"
    assert not (tmp_path / "out").exists()
    code, stdout, err = train_lists(capsys, data, "--model", tiny_model_dir, "--out", tmp_path / "out", "--drop-bad-rows",
                                    *SMALL_TRAIN)
    assert code == 0, err
    assert "dropped 1 of the 4 rows (1 reward not a number)" in stdout and f"dropped {data}:4: rewards[1]" in stdout
    assert json.loads((tmp_path / "out" / "data_report.json").read_text())["dropped"] == {"reward_not_a_number": 1}


def test_a_bad_model_or_out_directory_is_named_before_anything_is_written(tiny_model_dir, tmp_path, capsys):
    data = listwise_file(tmp_path / "l.jsonl", 3)
    code, _, err = train_lists(capsys, data, "--model", tmp_path / "none", "--out", tmp_path / "out")
    assert code == 2 and err.startswith("larpo: error: --model:") and not (tmp_path / "out").exists()
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "mine.txt").write_text("x")
    code, _, err = train_lists(capsys, data, "--model", tiny_model_dir, "--out", tmp_path / "busy")
    assert code == 2 and "not empty and not a train-lists output" in err


def test_rerunning_a_finished_command_does_nothing_and_another_config_is_refused(tiny_model_dir, tmp_path, capsys):
    data, out = listwise_file(tmp_path / "l.jsonl", 4), tmp_path / "out"
    args = [data, "--model", tiny_model_dir, "--out", out, *SMALL_TRAIN]
    assert train_lists(capsys, *args)[0] == 0
    weights = (out / "policy" / "model.safetensors").read_bytes()
    code, stdout, _ = train_lists(capsys, *args)
    assert code == 0 and "already holds this run" in stdout
    assert (out / "policy" / "model.safetensors").read_bytes() == weights
    code, _, err = train_lists(capsys, *args, "train.loss=listmle")
    assert code == 2 and "holds a finished train-lists run with another config" in err
    (out / "summary.json").unlink()  # as if killed before the end: the next run starts again
    code, stdout, _ = train_lists(capsys, *args, "train.loss=listmle")
    assert code == 0 and "starting again" in stdout and len(read_jsonl(out / "metrics.jsonl")) == 2


def test_lora_training_saves_adapters_over_the_starting_model(tiny_model_dir, tmp_path, capsys):
    from peft import PeftModel

    from larpo.models import is_adapter_dir, load_policy

    out = tmp_path / "out"
    code, _, err = train_lists(capsys, listwise_file(tmp_path / "l.jsonl", 4), "--model", tiny_model_dir, "--out", out,
                               *SMALL_TRAIN, "model.lora=true", "model.lora_r=4")
    assert code == 0, err
    assert is_adapter_dir(out / "policy")
    model, _ = load_policy(out / "policy")
    assert isinstance(model, PeftModel) and model.peft_config["default"].r == 4


@pytest.fixture(scope="module")
def loop_run(tmp_path_factory):
    """One iteration of the loop on the small config (no retriever evaluation)."""
    directory = tmp_path_factory.mktemp("round_trip")
    config = write_small_config(directory, ["loop.iterations=1", "eval.samples=0"])
    run(C.load(config), directory / "run", progress=False, log=lambda _: None)
    return directory / "run"


def test_exported_lists_trained_with_train_lists_repeat_the_loops_iteration_step_by_step(loop_run, tmp_path, capsys):
    exported = tmp_path / "lists.jsonl"
    assert main(["export-lists", str(loop_run), "--format", "listwise", "--iteration", "0", "--out", str(exported)]) == 0
    # Some responses were cut at max_new_tokens (trained without EOS): the text alone would not say so,
    # which is why the listwise export carries the sampled ids and finished flags.
    assert any(not f for row in read_jsonl(exported) for f in row["finished"])
    out = tmp_path / "out"
    code, _, err = train_lists(capsys, exported, "--model", loop_run / "sft", "--out", out,
                               "--config", loop_run / "config.yaml", "--eval")
    assert code == 0, err
    want = [r for r in read_jsonl(loop_run / "metrics.jsonl") if r["stage"] == "train"]
    got = [r for r in read_jsonl(out / "metrics.jsonl") if r["stage"] == "train"]
    assert len(got) == len(want) > 1
    for a, b in zip(got, want):
        assert {k: a[k] for k in ("epoch", "step", "loss", "pair_accuracy", "margin", "grad_norm", "lr")} == \
               {k: b[k] for k in ("epoch", "step", "loss", "pair_accuracy", "margin", "grad_norm", "lr")}
    assert_same_weights(out / "policy" / "model.safetensors", loop_run / "iter_0" / "policy" / "model.safetensors")
    # --eval: the loop's own held-out evaluations of the same two policies
    assert json.loads((out / "eval_initial.json").read_text()) == json.loads((loop_run / "eval_sft.json").read_text())
    assert json.loads((out / "eval.json").read_text()) == json.loads((loop_run / "iter_0" / "eval.json").read_text())


def test_two_processes_train_as_one_process_does(tiny_model_dir, tmp_path, capsys):
    data = listwise_file(tmp_path / "l.jsonl", 10)
    args = [str(data), "--model", str(tiny_model_dir), "--quiet", "train.loss=listmle", "train.batch_size=4",
            "train.micro_batch_size=1", "train.lr=3e-3", "train.epochs=2", "train.warmup_ratio=0",
            *(["--report-to", "tensorboard"] if importlib.util.find_spec("tensorboard") else [])]
    for launcher, out in (([], "one"), (["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"], "two")):
        # both on the CPU, which every machine has: gloo ranks, and one process computing what they compute
        proc = subprocess.run([sys.executable, *launcher, "-m", "larpo.cli", "train-lists", *args, "--out", str(tmp_path / out)],
                              env=cpu_process_env(), capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("policy in") == 1  # only the main process logs
    one, two = read_jsonl(tmp_path / "one" / "metrics.jsonl"), read_jsonl(tmp_path / "two" / "metrics.jsonl")
    assert len(one) == len(two) == 6
    torch.testing.assert_close(torch.tensor([r["loss"] for r in two]), torch.tensor([r["loss"] for r in one]),
                               atol=1e-5, rtol=1e-5)
    assert_same_weights(tmp_path / "two" / "policy" / "model.safetensors", tmp_path / "one" / "policy" / "model.safetensors",
                        atol=1e-4)
    files = lambda d: sorted(str(p.relative_to(d)) for p in d.rglob("*")  # noqa: E731
                             if p.is_file() and ".larpo.lock" not in p.name and "tracker" not in p.parts)
    assert files(tmp_path / "two") == files(tmp_path / "one")
    if "--report-to" in args:  # only the main process logs to the tracker: one event file of every step
        from test_tracking import scalars

        events = list((tmp_path / "two" / "tracker").rglob("events.out.tfevents.*"))
        assert len(events) == 2  # the scalars, and accelerate's hyperparameters beside them
        assert [step for step, _ in scalars(tmp_path / "two" / "tracker")["train/loss"]] == list(range(1, 7))


LENGTH_SCORER = """
def score(prompts, responses):
    return [len(r) + sum(map(ord, r)) % 7 / 10 for r in responses]  # an empty reply scores lowest
"""


@pytest.fixture(scope="module")
def eos_or_cut_run(tmp_path_factory):
    """An iteration of a policy that answers EOS at once about one time in 16 and is often cut at 2 tokens.

    Its next-token distribution is uniform over a vocabulary of 16 (digits, '+', '-', '=' and 3 special
    tokens): the LM head is zero.
    """
    from conftest import TINY, arithmetic_corpus
    from larpo.models import build_tiny_model, build_tokenizer, save_policy

    directory = tmp_path_factory.mktemp("eos_or_cut")
    tokenizer = build_tokenizer(arithmetic_corpus(), vocab_size=16)
    model = build_tiny_model(TINY, tokenizer, seed=0)
    with torch.no_grad():
        model.lm_head.weight.zero_()
    save_policy(model, tokenizer, directory / "policy")
    (directory / "length_scorer.py").write_text(LENGTH_SCORER)
    sys.path.insert(0, str(directory))
    try:
        cfg = C.load(None, [f"model.path={directory / 'policy'}", "sft.enabled=false", "task.n_train=40", "task.n_eval=8",
                            "reranker.kind=callable", "reranker.function=length_scorer:score", "sampling.k=8",
                            "sampling.max_new_tokens=2", "loop.iterations=1", "loop.prompts_per_iteration=24",
                            "eval.n_prompts=8", "eval.samples=0", *SMALL_TRAIN])
        run(cfg, directory / "run", progress=False, log=lambda _: None)
    finally:
        sys.path.remove(str(directory))
    return directory / "run"


@pytest.mark.parametrize("fmt", ["trl", "listwise"])
def test_lists_exported_from_a_run_with_empty_and_cut_responses_train_with_train_lists(eos_or_cut_run, fmt, tmp_path, capsys):
    trained = read_jsonl(eos_or_cut_run / "iter_0" / "lists.jsonl")
    items = [(text, finished) for row in trained for text, finished in zip(row["responses"], row["finished"])]
    assert ("", True) in items and (False in {finished for _, finished in items})  # answered EOS at once; cut
    exported = tmp_path / f"{fmt}.jsonl"
    assert main(["export-lists", str(eos_or_cut_run), "--format", fmt, "--out", str(exported)]) == 0
    if fmt == "trl":
        assert "" in {row["rejected"] for row in read_jsonl(exported)}
    code, out, err = train_lists(capsys, exported, "--model", eos_or_cut_run.parent / "policy", "--out", tmp_path / "out",
                                 "--config", eos_or_cut_run / "config.yaml", "--strict")
    assert code == 0, err
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["lists"] == len(trained) and summary["steps"] > 0
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in read_jsonl(tmp_path / "out" / "metrics.jsonl"))
