"""Byte-level BPE tokenizers trained locally, saved in Hugging Face layout.

`train_tokenizer` learns a byte-level BPE vocabulary from text in seconds (Rust `tokenizers`) and
wraps it as a `transformers.PreTrainedTokenizerFast`, so `save_pretrained(dir)` writes files that
`transformers.AutoTokenizer.from_pretrained(dir)` loads. Any Hugging Face tokenizer works with the
models too; `load_tokenizer` accepts a directory holding one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from common.errors import InvalidInput, MissingInput

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"


def train_tokenizer(texts: Iterable[str], vocab_size: int = 4096, min_frequency: int = 2,
                    show_progress: bool = False) -> PreTrainedTokenizerFast:
    """Learn a byte-level BPE tokenizer with `vocab_size` entries (special tokens included) from `texts`."""
    if vocab_size < 256 + 2:
        raise InvalidInput(f"vocab_size={vocab_size} is too small for byte-level BPE; use at least 258 (256 bytes + 2 special tokens).")
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=show_progress,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    if backend.get_vocab_size() <= 256 + 2:
        raise InvalidInput("the training text was empty or too small to learn any merges; give the tokenizer more text.")
    return wrap_tokenizer(backend)


def wrap_tokenizer(backend: Tokenizer) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token=EOS_TOKEN, bos_token=EOS_TOKEN, pad_token=PAD_TOKEN,
        unk_token=None, padding_side="left", clean_up_tokenization_spaces=False,
    )


def load_tokenizer(path: str | os.PathLike) -> PreTrainedTokenizerBase:
    """Load any Hugging Face tokenizer from a local directory or a .gguf model file (no downloads), padded on the left."""
    path = Path(path).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True)
    elif path.is_dir():
        # a model directory's config.json names a model type transformers does not know; reading the tokenizer
        # class from tokenizer_config.json avoids AutoTokenizer consulting it (and warning)
        settings = path / "tokenizer_config.json"
        class_name = json.loads(settings.read_text()).get("tokenizer_class") if settings.is_file() else None
        tokenizer_class = getattr(transformers, class_name, None) if class_name else None
        loader = tokenizer_class if tokenizer_class is not None else AutoTokenizer
        tokenizer = loader.from_pretrained(str(path), local_files_only=True)
    else:
        raise MissingInput(f"tokenizer directory or GGUF file {path} does not exist; train a tokenizer with "
                           "bwarea.tokenizer.train_tokenizer and save_pretrained it, or point to a local Hugging Face "
                           "tokenizer directory or GGUF model file.")
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
