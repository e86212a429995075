"""Starting from a pretrained model instead of from scratch (`bwarea convert`, cli/convert.py).

`convert_hf` turns a Hugging Face causal LM (Llama family, Qwen2, Mistral: a model directory with safetensors
weights, or a .gguf file) into a BWArea model whose world model equals the LM before training
(bwarea.pretrained_lm.bwarea_from_lm), a CoLA model on the frozen LM (bwarea.cola), or our AR baseline; the
released BWArea-2.7B checkpoint converts through bwarea.released. Either way the output is an ordinary
save_pretrained directory (model, tokenizer, training_info.json with stage "converted") that
bwarea.load_pretrained and bwarea.load_tokenizer read; it is written whole or not at all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn as nn
from transformers import PreTrainedTokenizerBase

from bwarea.adaptation import model_from_lm
from bwarea.pretrained_lm import init_codebook_kmeans, load_causal_lm
from common.errors import UserError
from common.files import replace_directory
from training.data import corpus_files, iter_documents, tokenizer_fingerprint
from training.runs import write_training_info

KMEANS_BLOCK = 256        # tokens per row of the k-means batches
KMEANS_BATCH_ROWS = 8     # rows per batch fed to the inverse dynamics
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def convert_hf(options: Any) -> tuple[Path, nn.Module]:
    """Convert as `bwarea convert hf` options say; returns the output directory and the converted model."""
    out = Path(options.out).expanduser()
    _check_output(out, options.overwrite)
    if options.variant != "bwarea":
        for name in ("corpus", "code_dim"):
            if options[name] is not None:
                raise UserError(f"--{name} applies to --variant bwarea only; drop it for --variant {options.variant}.")
    torch.manual_seed(options.seed)
    lm, tokenizer = load_causal_lm(options.model, max_position_embeddings=options.max_position_embeddings,
                                   dtype=DTYPES[options.dtype])
    info: dict[str, Any] = {"stage": "converted", "source": str(Path(options.model).expanduser().resolve()),
                            "variant": options.variant}
    shapes = {"bwarea": {"num_actions": options.num_actions, "code_dim": options.code_dim},
              "cola": {"num_actions": options.num_actions}, "ar": {}}[options.variant]
    model = model_from_lm(lm, options.variant, **shapes)
    if options.variant == "bwarea":
        info["codebook_init"] = "random"
        if options.corpus is not None:
            block = min(KMEANS_BLOCK, model.config.max_position_embeddings)
            batches = corpus_token_batches(options.corpus, tokenizer, options.kmeans_tokens, block)
            stats = init_codebook_kmeans(model, batches, generator=torch.Generator().manual_seed(options.seed))
            info.update(codebook_init="kmeans", kmeans=stats,
                        kmeans_corpus=str(Path(options.corpus).expanduser().resolve()))
            print(f"codebook: k-means on {int(stats['features'])} inverse-dynamics features, "
                  f"{int(stats['alive_codes'])}/{options.num_actions} codes in use, "
                  f"largest cluster {stats['largest_cluster_share']:.0%} of the features")
    info.update(model_type=model.config.model_type, parameters=model.num_parameters(), vocabulary=len(tokenizer),
                tokenizer_fingerprint=tokenizer_fingerprint(tokenizer),
                max_position_embeddings=model.config.max_position_embeddings)

    def write(staging: Path) -> None:
        model.save_pretrained(staging, tokenizer=tokenizer)
        write_training_info(staging, info)

    replace_directory(out, write)
    return out, model


def corpus_token_batches(corpus: str, tokenizer: PreTrainedTokenizerBase, max_tokens: int,
                         block: int = KMEANS_BLOCK) -> list[torch.Tensor]:
    """The first `max_tokens` tokens of the corpus (documents joined by EOS) as batches of
    (KMEANS_BATCH_ROWS, block) token ids; a corpus shorter than one block gives one shorter row."""
    ids = list(_corpus_ids(corpus, tokenizer, max_tokens))
    if len(ids) < 2:
        raise UserError(f"corpus {corpus} holds fewer than 2 tokens; k-means needs text to read.")
    block = min(block, len(ids))
    rows = torch.tensor(ids[: len(ids) // block * block]).view(-1, block)
    return list(rows.split(KMEANS_BATCH_ROWS))


def _corpus_ids(corpus: str, tokenizer: PreTrainedTokenizerBase, max_tokens: int) -> Iterator[int]:
    count = 0
    for document in iter_documents(corpus_files(corpus)):
        for chunk in document.chunks():
            for token in tokenizer(chunk, add_special_tokens=False)["input_ids"]:
                yield token
                count += 1
                if count == max_tokens:
                    return
        if tokenizer.eos_token_id is not None:
            yield tokenizer.eos_token_id
            count += 1
            if count == max_tokens:
                return


def _check_output(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a directory.")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(f"--out {out} already exists and is not empty; pass --overwrite to replace it, "
                        "or choose another directory.")
