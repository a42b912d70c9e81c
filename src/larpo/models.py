"""The policy as a Hugging Face causal LM: build the tiny default, save it, load any local one.

A user's own model and the tiny default go through the same :func:`load_policy`, so everything
downstream (sampling, log-probs, training) sees one kind of object. Loading is local-only and
safetensors-only: nothing is downloaded and no pickle is ever unpickled.

With ``model.lora`` the policy is a peft ``PeftModel``: the base weights are frozen and only the
LoRA adapters train. A saved LoRA policy is an adapter directory (``adapter_config.json``,
``adapter_model.safetensors``, tokenizer) whose config names its base model's local directory;
:func:`load_policy` recognises it and loads base + adapter, and :func:`export_model` merges the
adapters into a plain model directory that needs neither peft nor the base.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import warnings
from collections.abc import Iterable
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors import safe_open
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from .config import ConfigError, ModelConfig
from .encoding import set_length_limits
from .io import temp_dir

PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}  # model.dtype → torch dtype
ADAPTER_CONFIG = "adapter_config.json"  # what marks a saved LoRA policy


def build_tokenizer(corpus: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``corpus``, with every digit its own token.

    ``vocab_size`` is a cap: the vocabulary is the corpus's own characters, the special tokens
    and as many merges as fit. One token per digit is what lets a tiny model learn arithmetic
    (FIELD-NOTES). A character absent from the corpus encodes to ``<unk>`` rather than vanishing.
    No BOS is added, so ``tokenizer(prompt, add_special_tokens=True)`` is the prompt's own tokens.
    """
    bpe = Tokenizer(models.BPE(unk_token=UNK))
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD, EOS, UNK], show_progress=False)
    bpe.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token=PAD, eos_token=EOS, unk_token=UNK)


def build_tiny_model(cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase, seed: int) -> PreTrainedModel:
    """A small Llama-style causal LM, randomly initialised from ``seed`` (same seed, same weights).

    The global torch RNG is left as it was.
    """
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        intermediate_size=cfg.intermediate_size,
        max_position_embeddings=cfg.max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng(devices=[]):  # the model is built on the CPU: only its RNG is used
        torch.default_generator.manual_seed(seed)
        return LlamaForCausalLM(config)


@contextlib.contextmanager
def evaluating(model: torch.nn.Module):
    """Inside the block ``model`` is in eval mode (dropout off); its own mode is restored after, also on an error."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@contextlib.contextmanager
def _peft_quietly():
    """peft 0.21 reads ``is_gradient_checkpointing``, which transformers 5.24 deprecates: not the user's to fix."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def apply_lora(model: PreTrainedModel, cfg: ModelConfig) -> PeftModel:
    """Wrap ``model`` in LoRA adapters (``model.lora_*``); the base weights are frozen, only adapters train.

    ``lora_target_modules: null`` takes peft's default modules for the architecture (the attention
    query and value projections for Llama); ``[all-linear]`` is peft's every-linear-layer shorthand.
    The adapters start as the identity (LoRA's B is zero), so the wrapped model computes exactly
    what ``model`` did. ``model`` itself is modified in place.
    """
    targets = cfg.lora_target_modules
    lora = LoraConfig(
        task_type="CAUSAL_LM",
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules="all-linear" if targets == ["all-linear"] else targets,
    )
    try:
        with _peft_quietly():
            return get_peft_model(model, lora)
    except ValueError as e:  # no default modules for this architecture, or a name that matches nothing
        raise ConfigError(f"model.lora_target_modules: got {targets!r}, which peft cannot use ({e})") from None


def prepare_policy(model: PreTrainedModel, cfg: ModelConfig) -> PreTrainedModel:
    """The policy as ``cfg`` wants it trained: LoRA-wrapped (once) and with activation checkpointing."""
    if cfg.lora and not isinstance(model, PeftModel):
        model = apply_lora(model, cfg)
    if cfg.gradient_checkpointing:
        base = model.get_base_model() if isinstance(model, PeftModel) else model
        # Recomputes activations in backward, in train mode only. Non-reentrant checkpointing lets
        # gradients reach adapters behind a frozen embedding; transformers (>= 5.23) names it so by default.
        base.activation_checkpointing_enable()
    return model


def save_policy(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, directory: str | Path, state_dict: dict | None = None
) -> None:
    """Write model and tokenizer (safetensors) to ``directory``, atomically replacing what was there.

    ``state_dict`` (default: the model's own) is what a sharded model's gathered full state dict
    is passed as.

    A ``PeftModel`` is saved as its adapters only; their config records the base model's
    directory, which must be a saved model (it is whenever the base came from :func:`load_policy`).
    Both are written to a temporary sibling first; a crash leaves either the old directory or the
    new one, never a half-written policy.
    """
    if isinstance(model, PeftModel):
        base = model.peft_config[model.active_adapter].base_model_name_or_path
        check_local_model_dir(base or "<none>", "the LoRA base model (load it with load_policy before adding adapters)")
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir(directory)
    try:
        model.save_pretrained(tmp, state_dict=state_dict)  # safetensors: the default, and the only format in transformers 5
        tokenizer.save_pretrained(tmp)
        if directory.exists():
            old = temp_dir(directory)
            os.replace(directory, old / directory.name)
            os.replace(tmp, directory)
            shutil.rmtree(old)
        else:
            os.replace(tmp, directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def is_adapter_dir(path: str | Path) -> bool:
    """Whether ``path`` holds a saved LoRA policy (adapters) rather than a whole model."""
    return (Path(path) / ADAPTER_CONFIG).is_file()


def adapter_base(path: str | Path, key: str = "model.path") -> Path:
    """The checked local base-model directory that the adapter directory ``path`` was trained on."""
    path = Path(path)
    if not (path / "adapter_model.safetensors").is_file():
        raise ConfigError(f"{key}: {path} has no adapter_model.safetensors (.bin/pickle adapters are not loaded)")
    check_safetensors(path / "adapter_model.safetensors", key)
    try:
        base = json.loads((path / ADAPTER_CONFIG).read_text())["base_model_name_or_path"]
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(f"{key}: {path / ADAPTER_CONFIG} has no readable base_model_name_or_path ({e})") from None
    return check_local_model_dir(base or "<none>", f"{key} (the LoRA base named in {path / ADAPTER_CONFIG})")


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def check_local_model_dir(path: str | Path, key: str, tokenizer: bool = False) -> Path:
    """Return ``path`` if it is a local model directory with a config and complete safetensors weights
    (and, with ``tokenizer``, tokenizer files).

    Otherwise raise a ConfigError naming ``key`` (the config field) and the path. Pickled
    ``.bin`` weights are refused on purpose: loading them would run arbitrary code. Each weights
    file's header is read, so a truncated or corrupt file is named here, not deep in a load.
    """
    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"{key}: {path} is not a directory; expected a local model directory")
    if not (path / "config.json").is_file():
        raise ConfigError(f"{key}: {path} has no config.json; expected a saved Hugging Face model")
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        raise ConfigError(f"{key}: {path} has no *.safetensors weights (.bin/pickle weights are not loaded)")
    for file in weights:
        check_safetensors(file, key)
    if tokenizer and not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise ConfigError(f"{key}: {path} has no tokenizer files (any of {', '.join(TOKENIZER_FILES)}); "
                          "expected the tokenizer saved beside the model")
    return path


def check_safetensors(file: Path, key: str) -> None:
    """Raise a ConfigError naming ``key`` and ``file`` unless its safetensors header is complete."""
    try:
        with safe_open(str(file), "pt"):
            pass
    except Exception as e:  # SafetensorError, or OSError for an unreadable file
        raise ConfigError(f"{key}: {file} is not a complete safetensors file ({e})") from None


def load_options(hub_kernels: bool = False) -> dict:
    """``from_pretrained`` keywords of every model larpo loads: files from the local directory only, and
    transformers' Hub kernels off unless ``hub_kernels`` (``model.hub_kernels``) asks for them.

    transformers ≥ 5.25 loads models with ``use_kernels=True`` by default when the ``kernels`` package
    is installed (it is one of its requirements): on CUDA, ``model.train()`` then fetches kernel code
    from the Hugging Face Hub and runs it (offline, it raises). larpo fetches and runs nothing unasked.
    """
    if hub_kernels and importlib.util.find_spec("kernels") is None:
        raise ConfigError("model.hub_kernels: true needs the kernels package (pip install kernels); "
                          "or leave it false (the default)")
    return {"local_files_only": True, "use_kernels": hub_kernels}


def load_tokenizer(path: Path, key: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """The tokenizer saved in ``path`` (its pad token defaulting to EOS), or a ConfigError naming ``key``."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, local_files_only=True)
    except (OSError, ValueError, TypeError) as e:
        raise ConfigError(f"{key}: {path}: the tokenizer cannot be loaded ({e})") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_policy(
    path: str | Path, trust_remote_code: bool = False, dtype: torch.dtype | None = None, hub_kernels: bool = False
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer from a local directory (no network, safetensors only, no
    Hub kernels unless ``hub_kernels``: :func:`load_options`).

    ``dtype=None`` keeps the dtype recorded in the checkpoint. A tokenizer without a pad token
    gets its EOS token as pad. An adapter directory (a saved LoRA policy) loads as its base model
    with the adapters on top, trainable, so that training continues where it stopped; the
    adapters stay in float32 when the base is bfloat16 (peft's default).
    """
    path = Path(path)
    adapters = is_adapter_dir(path)
    base = adapter_base(path) if adapters else check_local_model_dir(path, "model.path", tokenizer=True)
    if adapters and not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise ConfigError(f"model.path: {path} has no tokenizer files; expected the tokenizer saved beside the adapters")
    tokenizer = load_tokenizer(path, "model.path", trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(
        str(base.resolve()),  # an absolute name_or_path: what a LoRA policy trained on it records as its base
        use_safetensors=True,
        trust_remote_code=trust_remote_code,
        dtype=dtype if dtype is not None else "auto",
        **load_options(hub_kernels),
    )
    if adapters:
        with _peft_quietly():
            model = PeftModel.from_pretrained(model, path, is_trainable=True)
    return model, tokenizer


def policy_from_config(
    path: str | Path, cfg: ModelConfig, train: bool = False, device: torch.device | str | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """:func:`load_policy` with ``model.dtype``, ``model.hub_kernels`` and the prompt/response token limits
    of ``cfg``, moved to ``device`` (None: where it loaded, the CPU); with ``train``, also LoRA and
    activation checkpointing as configured (:func:`prepare_policy`)."""
    model, tokenizer = load_policy(path, trust_remote_code=cfg.trust_remote_code, dtype=DTYPES[cfg.dtype],
                                   hub_kernels=cfg.hub_kernels)
    set_length_limits(tokenizer, cfg.max_prompt_tokens, cfg.max_response_tokens)
    if train:
        model = prepare_policy(model, cfg)
    return (model.to(device) if device is not None else model), tokenizer


def export_model(policy_dir: str | Path, out_dir: str | Path, trust_remote_code: bool = False) -> bool:
    """Save the policy in ``policy_dir`` as a plain model + tokenizer directory (safetensors) in ``out_dir``.

    LoRA adapters are merged into the base weights (``merge_and_unload``); a plain model is
    re-saved as it is. Returns whether adapters were merged.
    """
    model, tokenizer = load_policy(policy_dir, trust_remote_code=trust_remote_code)
    merged = isinstance(model, PeftModel)
    if merged:
        model = model.merge_and_unload()
    save_policy(model, tokenizer, out_dir)
    return merged
