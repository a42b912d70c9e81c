"""Run configuration: dataclasses with defaults, YAML loading, dotted overrides, validation.

The YAML file mirrors these dataclasses one-to-one; every field can be overridden on the
command line as ``section.field=value``. All validation lives here, so a bad value is reported
once, at the boundary, as a :class:`ConfigError` naming the key, what was found and what was
expected.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A user error in a configuration file or override (exit code 2, no traceback)."""


LOSSES = ("pairwise", "contrastive", "lambdarank", "listmle")


@dataclass
class TaskConfig:
    """Which prompts, gold answers and gold reward to use."""

    name: Literal["arithmetic", "chat_arithmetic", "sorting", "jsonl", "dataset"] = "arithmetic"
    reward: Literal["exact", "graded"] = "graded"
    digits: int = 2  # arithmetic: digits per operand
    operations: list[str] = field(default_factory=lambda: ["+"])  # arithmetic: "+" and/or "-"
    length: int = 5  # sorting: numbers per list
    max_value: int = 99  # sorting: numbers drawn from 0..max_value
    n_train: int = 2000  # prompts for SFT and the LarPO pool
    n_eval: int = 200  # held-out prompts
    seed: int = 1234  # the data seed, independent of the run seed
    path: str | None = None  # jsonl: training prompts file; dataset: a Dataset.save_to_disk directory
    eval_path: str | None = None  # jsonl / dataset: held-out prompts (file / directory)
    reward_fn: str | None = None  # jsonl / dataset: "module:function" gold reward (prompt, response) -> float
    split: str | None = None  # dataset: the split to read when path holds a DatasetDict
    prompt_field: str = "prompt"  # dataset: column with the prompt (a string or a list of messages)
    id_field: str | None = None  # dataset: column with unique string ids (None: "<directory>/<split>-<row>")
    answer_field: str | None = None  # dataset: column with the gold answer for SFT (None: no answers)


@dataclass
class ModelConfig:
    """The policy: a local Hugging Face directory, or the tiny default built from scratch."""

    path: str | None = None  # local directory with config, tokenizer and safetensors weights
    trust_remote_code: bool = False
    vocab_size: int = 96  # tiny default: BPE vocabulary size
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 512
    max_position_embeddings: int = 64
    dtype: Literal["float32", "bfloat16"] = "float32"  # the policy's weights when loaded for sampling and training
    gradient_checkpointing: bool = False  # recompute activations in backward (LarPO phases): less memory, slower
    max_prompt_tokens: int | None = None  # longer prompts keep their last tokens (None: no limit)
    max_response_tokens: int | None = None  # longer responses keep their first tokens (None: no limit)
    lora: bool = False  # train LoRA adapters (peft) in the LarPO phases instead of every weight
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_target_modules: list[str] | None = None  # None: peft's default for the architecture; [all-linear]: every linear layer
    hub_kernels: bool = False  # let transformers fetch and run Hub kernels (its use_kernels) for every model larpo loads


@dataclass
class SFTConfig:
    """Supervised warm-up of the tiny default, stopped deliberately short of saturation."""

    enabled: bool = True
    max_steps: int = 3000
    batch_size: int = 64
    lr: float = 3e-3
    warmup_steps: int = 50
    eval_every: int = 50
    eval_prompts: int = 200  # the validation slice: the last eval_prompts training prompts, never trained on
    target_accuracy: float = 0.35  # stop once greedy exact accuracy on the validation slice reaches this
    smooth: int = 1  # ... averaged over the last `smooth` evaluations (1: the latest one alone)


@dataclass
class SamplingConfig:
    """Retrieval: K samples per prompt from the current policy."""

    k: int = 10
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 6
    prompts_per_batch: int = 32
    # how a token is drawn: inverse CDF (faster) | generate's torch.multinomial (same distribution, other random numbers)
    draw: Literal["multinomial", "inverse_cdf"] = "inverse_cdf"


@dataclass
class RerankerConfig:
    """The reranker that orders the candidates."""

    kind: Literal["rule", "hf", "callable"] = "rule"
    path: str | None = None  # hf: local reward-model directory
    function: str | None = None  # callable: "module:function" (prompts, responses) -> rewards
    batch_size: int = 32
    dtype: Literal["float32", "bfloat16"] | None = None  # hf: the reward model's weights (None: model.dtype)


@dataclass
class ListConfig:
    """How a prompt's scored candidates become a training list."""

    strategy: Literal["top_bottom", "full"] = "top_bottom"
    top: int | None = None  # None: the paper's default for the loss
    bottom: int | None = None
    memorization: Literal["none", "previous", "all"] = "none"
    # hard negatives (spec §5.2): own | own_low_temperature | own_high_temperature | similar_prompt | random_prompt
    negatives: Literal["own", "own_low_temperature", "own_high_temperature", "similar_prompt", "random_prompt"] = "own"
    low_temperature: float = 0.3  # own_low_temperature: negatives sampled separately at this temperature
    high_temperature: float = 1.5  # own_high_temperature: likewise
    unfinished: Literal["keep", "drop", "lowest"] = "keep"  # responses cut at sampling.max_new_tokens: trained without EOS | left out | given the prompt's lowest reward


@dataclass
class TrainConfig:
    """One training phase on ranked lists."""

    loss: Literal["pairwise", "contrastive", "lambdarank", "listmle"] = "lambdarank"
    weighting: Literal["none", "lipo"] = "none"  # lambdarank pair weights
    beta: float = 1.0  # the paper's scale is 0.1 (configs/paper); the tiny default needs a stronger anchor
    lr: float = 3e-4  # the embedded default's, chosen on validation over 5 seeds (docs/embedded-default.md)
    epochs: int = 2
    batch_size: int = 8  # lists per optimizer step, over all processes
    micro_batch_size: int = 8  # lists per forward pass on one process
    ref_batch_size: int = 64  # responses per forward pass of the reference
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    shared_prompt: bool = True  # one prompt pass per list, its KV cache shared by the m responses
    reference: Literal["previous", "initial", "mix"] = "previous"  # π_ref: start of iteration | SFT policy | average
    reference_mix: float = 0.5  # mix: weight of the initial policy in the parameter average
    dropout: bool = False  # keep the model's and LoRA's dropout while training (off: γ starts at 0, as in TRL)


@dataclass
class LoopConfig:
    """Algorithm 1: the outer iterations."""

    iterations: int = 3
    prompts_per_iteration: int | None = None  # the first N training prompts (None: all); the same every iteration
    select: Literal["last", "validation"] = "last"  # the final policy: the last iteration's, or the best on validation


@dataclass
class EvalConfig:
    n_prompts: int = 200  # held-out prompts for greedy accuracy and gold reward
    batch_size: int = 64
    samples: int = 8  # retriever evaluation of the SFT and final policies: samples per prompt (0: skip)
    temperatures: list[float] = field(default_factory=lambda: [1.0])


@dataclass
class Config:
    seed: int = 0
    threads: int | None = None  # torch threads in every process (None: torch's default, one per core)
    # experiment trackers that get every metrics row (accelerate's): none | tensorboard | wandb | mlflow | trackio | ..., or a list
    report_to: str | list[str] = "none"
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    reranker: RerankerConfig = field(default_factory=RerankerConfig)
    lists: ListConfig = field(default_factory=ListConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    @property
    def trackers(self) -> list[str]:
        """The trackers ``report_to`` names ([] for none)."""
        names = [self.report_to] if isinstance(self.report_to, str) else list(self.report_to)
        return [] if names == ["none"] else names

    @property
    def initial_label(self) -> str:
        """What the policy before the first iteration is called in tables: SFT, or initial (model.path as given)."""
        return "SFT" if self.sft.enabled else "initial"


# ---------------------------------------------------------------------------------------------
# building dataclasses from plain data, with type checks


def _check_value(value: Any, hint: Any, key: str) -> Any:
    """Return ``value`` converted to ``hint`` or raise a ConfigError naming ``key``."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _check_value(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise errors[0] if len(errors) == 1 else ConfigError(f"{key}: got {value!r}, expected {hint}")
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise ConfigError(f"{key}: got {value!r}, expected one of {', '.join(map(repr, choices))}")
        return value
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: got {value!r}, expected a list")
        return [_check_value(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: got {value!r}, expected a mapping of {hint.__name__} fields")
        return _build(hint, value, key)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: got {value!r}, expected true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: got {value!r}, expected an integer")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: got {value!r}, expected a number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: got {value!r}, expected a string")
        return value
    raise TypeError(f"unsupported config type {hint} for {key}")  # a bug in this module


def _build(cls: type, data: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            where = f"{prefix}.{key}" if prefix else key
            raise ConfigError(f"{where}: unknown key; expected one of {', '.join(sorted(names))}")
    kwargs = {k: _check_value(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in data.items()}
    return cls(**kwargs)


def _positive(key: str, value: float | int | None, allow_zero: bool = False) -> None:
    if value is None:
        return
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{key}: got {value!r}, expected a {'non-negative' if allow_zero else 'positive'} number")


def validate(cfg: Config) -> Config:
    """Range checks and cross-field rules; returns ``cfg`` unchanged or raises ConfigError."""
    _positive("threads", cfg.threads)
    names = [cfg.report_to] if isinstance(cfg.report_to, str) else cfg.report_to
    if not names or "" in names or ("none" in names and len(names) > 1) or len(set(names)) < len(names):
        raise ConfigError(f"report_to: got {cfg.report_to!r}, expected none, a tracker's name or a list of distinct names")
    for key in (
        "task.digits", "task.length", "task.max_value", "task.n_train", "task.n_eval",
        "model.vocab_size", "model.hidden_size", "model.num_layers", "model.num_heads",
        "model.intermediate_size", "model.max_position_embeddings", "model.max_prompt_tokens",
        "model.max_response_tokens", "model.lora_r", "model.lora_alpha",
        "sft.max_steps", "sft.batch_size", "sft.lr", "sft.eval_every", "sft.eval_prompts", "sft.smooth",
        "sampling.temperature", "sampling.top_p", "sampling.max_new_tokens", "sampling.prompts_per_batch",
        "lists.low_temperature", "lists.high_temperature", "reranker.batch_size", "train.beta", "train.lr", "train.epochs", "train.batch_size",
        "train.micro_batch_size", "train.ref_batch_size", "loop.iterations", "loop.prompts_per_iteration",
        "eval.n_prompts", "eval.batch_size",
    ):
        section, name = key.split(".")
        _positive(key, getattr(getattr(cfg, section), name))
    for key in ("sft.warmup_steps", "train.weight_decay", "train.max_grad_norm", "eval.samples",
                "lists.top", "lists.bottom"):
        section, name = key.split(".")
        _positive(key, getattr(getattr(cfg, section), name), allow_zero=True)
    if cfg.train.micro_batch_size > cfg.train.batch_size:
        raise ConfigError(
            f"train.micro_batch_size: got {cfg.train.micro_batch_size}, expected at most train.batch_size "
            f"({cfg.train.batch_size}): a micro-batch is part of one optimizer step's lists"
        )
    if cfg.sampling.k < 2:
        raise ConfigError(f"sampling.k: got {cfg.sampling.k}, expected at least 2 samples per prompt")
    if cfg.sampling.top_p > 1:
        raise ConfigError(f"sampling.top_p: got {cfg.sampling.top_p}, expected a value in (0, 1]")
    if not 0 <= cfg.sft.target_accuracy <= 1:
        raise ConfigError(f"sft.target_accuracy: got {cfg.sft.target_accuracy}, expected a value in [0, 1]")
    if not 0 <= cfg.train.reference_mix <= 1:
        raise ConfigError(f"train.reference_mix: got {cfg.train.reference_mix}, expected a value in [0, 1]")
    if any(t <= 0 for t in cfg.eval.temperatures):
        raise ConfigError(f"eval.temperatures: got {cfg.eval.temperatures}, expected positive temperatures")
    if not 0 <= cfg.train.warmup_ratio < 1:
        raise ConfigError(f"train.warmup_ratio: got {cfg.train.warmup_ratio}, expected a value in [0, 1)")
    bad_ops = [op for op in cfg.task.operations if op not in ("+", "-")]
    if bad_ops or not cfg.task.operations:
        raise ConfigError(f"task.operations: got {cfg.task.operations!r}, expected a non-empty list of '+' and '-'")
    if cfg.task.name in ("jsonl", "dataset") and (cfg.task.path is None or cfg.task.reward_fn is None):
        raise ConfigError(f"task.path and task.reward_fn: required when task.name is {cfg.task.name!r}")
    if not 0 <= cfg.model.lora_dropout < 1:
        raise ConfigError(f"model.lora_dropout: got {cfg.model.lora_dropout}, expected a value in [0, 1)")
    if cfg.reranker.kind == "hf" and cfg.reranker.path is None:
        raise ConfigError("reranker.path: required when reranker.kind is 'hf'")
    if cfg.reranker.kind == "callable" and cfg.reranker.function is None:
        raise ConfigError("reranker.function: required when reranker.kind is 'callable'")
    if cfg.model.hidden_size % cfg.model.num_heads:
        raise ConfigError(
            f"model.hidden_size: got {cfg.model.hidden_size}, expected a multiple of model.num_heads ({cfg.model.num_heads})"
        )
    if cfg.train.weighting == "lipo" and cfg.train.loss != "lambdarank":
        raise ConfigError(f"train.weighting: 'lipo' weights lambdarank pairs; got train.loss={cfg.train.loss!r}, expected 'lambdarank'")
    if cfg.loop.select == "validation" and not cfg.sft.enabled:
        raise ConfigError("loop.select: 'validation' reads the validation prompts, which exist only with sft.enabled=true")
    if cfg.lists.strategy == "top_bottom" and cfg.lists.top == 0:
        raise ConfigError("lists.top: got 0, expected at least one positive per list")
    return cfg


def from_dict(data: dict) -> Config:
    """Build and validate a Config from nested plain data (as read from YAML)."""
    if not isinstance(data, dict):
        raise ConfigError(f"config: got {type(data).__name__}, expected a mapping at the top level")
    return validate(_build(Config, data))


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


WATCH_FIELDS = ("report_to",)  # how a run is watched, not what it computes: a run may resume with other values


def results_dict(cfg: Config) -> dict:
    """:func:`to_dict` without :data:`WATCH_FIELDS`: everything a run's results depend on."""
    return {k: v for k, v in to_dict(cfg).items() if k not in WATCH_FIELDS}


def same_results(text: str, cfg: Config) -> bool:
    """Whether a written config (``dump``'s text) is ``cfg`` but for :data:`WATCH_FIELDS`; False if it does not parse."""
    try:
        return results_dict(from_dict(yaml.safe_load(text))) == results_dict(cfg)
    except (ConfigError, yaml.YAMLError):
        return False


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected section.field=value")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``section.field=value`` overrides (values parsed as YAML) to nested plain data."""
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for item in overrides:
        path, value = _parse_override(item)
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{'.'.join(path)}: {part} is not a section")
            node[part] = child = dict(child)
            node = child
        node[path[-1]] = value
    return data


def load(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (or the defaults when ``path`` is None) and apply overrides."""
    data: Any = {}
    if path is not None:
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as e:
            raise ConfigError(f"{path}: cannot read config ({e.strerror})") from None
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark else str(path)
            raise ConfigError(f"{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of config sections at the top level")
    try:
        return from_dict(apply_overrides(data, overrides or []))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path is not None else str(e)) from None


def dump(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
