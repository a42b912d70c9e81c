"""The policy as a Hugging Face causal LM: build the tiny default, save it, load any local one.

A user's own model and the tiny default go through the same :func:`load_policy`, so everything
downstream (sampling, log-probs, training) sees one kind of object. Loading is local-only and
safetensors-only: nothing is downloaded and no pickle is ever unpickled.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

import torch
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

PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"


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


def save_policy(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, directory: str | Path) -> None:
    """Write model and tokenizer (safetensors) to ``directory``, atomically replacing what was there.

    Both are written to a temporary sibling first; a crash leaves either the old directory or the
    new one, never a half-written policy.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        model.save_pretrained(tmp)  # safetensors: the default, and the only format in transformers 5
        tokenizer.save_pretrained(tmp)
        if directory.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old.", dir=directory.parent))
            os.replace(directory, old / directory.name)
            os.replace(tmp, directory)
            shutil.rmtree(old)
        else:
            os.replace(tmp, directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_local_model_dir(path: str | Path, key: str) -> Path:
    """Return ``path`` if it is a local model directory with a config and safetensors weights.

    Otherwise raise a ConfigError naming ``key`` (the config field) and the path. Pickled
    ``.bin`` weights are refused on purpose: loading them would run arbitrary code.
    """
    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"{key}: {path} is not a directory; expected a local model directory")
    if not (path / "config.json").is_file():
        raise ConfigError(f"{key}: {path} has no config.json; expected a saved Hugging Face model")
    if not any(path.glob("*.safetensors")):
        raise ConfigError(f"{key}: {path} has no *.safetensors weights (.bin/pickle weights are not loaded)")
    return path


def load_policy(
    path: str | Path, trust_remote_code: bool = False, dtype: torch.dtype | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer from a local directory (no network, safetensors only).

    ``dtype=None`` keeps the dtype recorded in the checkpoint. A tokenizer without a pad token
    gets its EOS token as pad.
    """
    path = check_local_model_dir(path, "model.path")
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(
        path,
        use_safetensors=True,
        trust_remote_code=trust_remote_code,
        local_files_only=True,
        dtype=dtype if dtype is not None else "auto",
    )
    return model, tokenizer
