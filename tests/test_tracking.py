"""report_to: every metrics row also goes to accelerate's experiment trackers, read back here with
TensorBoard's own reader."""

import json

import numpy as np
import pytest
import yaml

from larpo import config as C
from larpo.cli import main
from larpo.config import ConfigError, TrainConfig
from larpo.io import read_jsonl
from larpo.loop import run
from larpo.tracking import MetricsLog, check_trackers, hyperparameters, tracked, tracker_values
from larpo.trainer import make_accelerator

from test_loop import write_small_config
from test_train_lists import SMALL_TRAIN, listwise_file

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
TRAIN_FIELDS = ("loss", "pair_accuracy", "margin", "grad_norm", "lr")


def scalars(tracker_dir) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series TensorBoard reads from the run's tracker directory: tag -> [(step, value)]."""
    reader = event_accumulator.EventAccumulator(str(tracker_dir / "larpo"))
    reader.Reload()
    return {tag: [(e.step, e.value) for e in reader.Scalars(tag)] for tag in reader.Tags()["scalars"]}


def as_logged(values) -> list[float]:
    """Values as TensorBoard stores them (float32)."""
    return [float(np.float32(v)) for v in values]


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory):
    """Two iterations of the small config, reporting to TensorBoard."""
    directory = tmp_path_factory.mktemp("tracked")
    config = write_small_config(directory, ["eval.samples=0", "report_to=tensorboard"])
    run(C.load(config), directory / "run", progress=False, log=lambda _: None)
    return config, directory / "run"


def test_tensorboard_reads_back_every_training_steps_metrics_as_metrics_jsonl_has_them(tracked_run):
    _, run_dir = tracked_run
    series = scalars(run_dir / "tracker")
    rows = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r["stage"] == "train"]
    assert {r["iteration"] for r in rows} == {0, 1} and len(rows) > 2
    for field in TRAIN_FIELDS:
        assert series[f"train/{field}"] == list(zip(range(1, len(rows) + 1), as_logged(r[field] for r in rows))), field


def test_sft_and_held_out_evaluations_are_logged_at_their_sft_step_and_policy(tracked_run):
    _, run_dir = tracked_run
    rows = read_jsonl(run_dir / "metrics.jsonl")
    series = scalars(run_dir / "tracker")
    sft = [r for r in rows if r["stage"] == "sft"]
    evals = [r for r in rows if r["stage"] == "eval"]
    assert series["sft/val_accuracy"] == [(r["step"], *as_logged([r["val_accuracy"]])) for r in sft] and sft
    assert series["eval/exact_accuracy"] == [(r["policy"], *as_logged([r["exact_accuracy"]])) for r in evals]
    assert [step for step, _ in series["eval/gold_reward"]] == [0, 1, 2]
    assert not [tag for tag in series if tag.startswith(("time/", "truncation/"))]


def test_the_config_is_logged_as_hyperparameters(tracked_run):
    config, run_dir = tracked_run
    (stored,) = list((run_dir / "tracker" / "larpo").glob("*/hparams.yml"))  # accelerate's copy of what it logged
    hparams = yaml.safe_load(stored.read_text())
    assert hparams == hyperparameters(C.load(config))
    assert hparams["train.loss"] == "lambdarank" and hparams["report_to"] == "tensorboard"
    assert hparams["task.operations"] == '["+"]'  # lists as JSON: trackers take numbers, strings and booleans


def test_a_run_resumes_with_another_report_to(tracked_run, tmp_path):
    config, run_dir = tracked_run
    summary = json.loads((run_dir / "summary.json").read_text())
    again = run(C.load(config, ["report_to=none"]), run_dir, progress=False, log=lambda _: None)
    assert again["final"] == summary["final"]  # the finished run, not refused as another config
    assert C.load(run_dir / "config.yaml").report_to == "none"


def test_train_lists_and_sft_report_to_tensorboard_from_the_command_line(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "tl"
    code = main(["train-lists", "--quiet", str(listwise_file(tmp_path / "l.jsonl", 8)), "--model", str(tiny_model_dir),
                 "--out", str(out), "--report-to", "tensorboard", *SMALL_TRAIN])
    assert code == 0, capsys.readouterr().err
    rows = read_jsonl(out / "metrics.jsonl")
    assert scalars(out / "tracker")["train/loss"] == list(zip(range(1, len(rows) + 1), as_logged(r["loss"] for r in rows)))

    sft = tmp_path / "sft"
    config = write_small_config(tmp_path, [])
    assert main(["sft", "--quiet", "--config", str(config), "--out", str(sft), "--report-to", "tensorboard"]) == 0
    rows = read_jsonl(sft / "metrics.jsonl")
    assert scalars(sft / "tracker")["sft/loss"] == [(r["step"], *as_logged([r["loss"]])) for r in rows if r["stage"] == "sft"]
    assert "metrics also go to tensorboard" in capsys.readouterr().out


def test_a_resumed_log_numbers_training_steps_on_from_its_file(tmp_path):
    cfg = C.load(None, ["report_to=tensorboard"])
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"stage": "train", "loss": float(i)}) + "\n" for i in range(3)))
    accelerator = make_accelerator(TrainConfig(), trackers=cfg.trackers, tracker_dir=tmp_path / "tracker")
    with tracked(cfg, tmp_path, accelerator, log=lambda _: None) as metrics:
        metrics.write({"stage": "sft", "step": 50, "loss": 7.0})
        metrics.write({"stage": "train", "iteration": 1, "loss": 3.0})
        metrics.write({"stage": "train", "iteration": 1, "loss": 4.0})
        metrics.write({"stage": "time", "name": "training", "seconds": 1.0})  # metrics.jsonl only
    series = scalars(tmp_path / "tracker")
    assert series["train/loss"] == [(4, 3.0), (5, 4.0)] and series["sft/loss"] == [(50, 7.0)]
    assert set(series) == {"train/loss", "train/iteration", "sft/loss"}
    assert len(read_jsonl(tmp_path / "metrics.jsonl")) == 7


def test_without_trackers_rows_go_to_the_file_only(tmp_path):
    log = MetricsLog(tmp_path / "m.jsonl")
    log.write({"stage": "eval", "policy": 0, "exact_accuracy": 0.25})
    log.write({"stage": "eval", "policy": 0, "exact_accuracy": 0.5}, replaces=lambda r: r["policy"] == 0)
    assert read_jsonl(tmp_path / "m.jsonl") == [{"stage": "eval", "policy": 0, "exact_accuracy": 0.5}]
    assert tracker_values({"stage": "eval", "policy": 3, "n_prompts": 40, "exact_accuracy": 0.5, "note": "x",
                           "pair_accuracy": None}) == {"eval/exact_accuracy": 0.5}


def test_an_unknown_tracker_is_one_line_naming_report_to_before_anything_is_written(tmp_path, capsys):
    assert main(["run", "--quiet", "--out", str(tmp_path / "run"), "--report-to", "tensorbord"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("larpo: error: report_to: got 'tensorbord', expected none or one of ") and "tensorboard" in err
    assert err.count("\n") == 1 and not (tmp_path / "run").exists()


def test_a_tracker_whose_package_is_missing_says_what_to_install(monkeypatch):
    import accelerate.tracking

    monkeypatch.setattr(accelerate.tracking, "get_available_trackers", lambda: [])  # as where none is installed
    with pytest.raises(ConfigError, match=r"^report_to: tensorboard needs its package, which is not installed; "
                                          r"pip install 'larpo\[tensorboard\]'$"):
        check_trackers(["tensorboard"])
    with pytest.raises(ConfigError, match=r"^report_to: comet_ml needs its package, which is not installed; pip install comet-ml$"):
        check_trackers(["comet_ml"])
