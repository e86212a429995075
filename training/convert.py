"""`bwarea convert`: start from a pretrained model instead of from scratch.

    bwarea convert hf --model ~/models/SmolLM2-135M --out models/smollm2-bwarea
    bwarea convert hf --model ~/models/SmolLM2-135M --out models/smollm2-bwarea --corpus data/textworld
    bwarea convert hf --model SmolLM2-135M-Instruct.Q4_1.gguf --out models/smollm2-ar --variant ar
    bwarea convert released --source ~/Pretrained_BWArea_2.7B_30G --out models/bwarea-2.7b

`hf` turns a Hugging Face causal LM (Llama family, Qwen2, Mistral: a model directory with safetensors
weights, or a .gguf file) into a BWArea model whose world model equals the LM before training
(bwarea.pretrained_lm.bwarea_from_lm), a CoLA model on the frozen LM (bwarea.cola), or our AR baseline.
`released` converts the released BWArea-2.7B checkpoint (bwarea.released). Either way --out becomes an
ordinary save_pretrained directory (model, tokenizer, training_info.json with stage "converted") that
bwarea.load_pretrained and bwarea.load_tokenizer read; it is written whole or not at all.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Iterator, Literal

import torch
import torch.nn as nn
from jsonargparse import ActionConfigFile, ArgumentParser
from transformers import PreTrainedTokenizerBase

import bwarea
from bwarea.adaptation import model_from_lm
from bwarea.pretrained_lm import init_codebook_kmeans, load_causal_lm
from training.data import corpus_files, iter_documents, tokenizer_fingerprint
from training.runs import UserError, replace_directory, write_training_info

KMEANS_BLOCK = 256        # tokens per row of the k-means batches
KMEANS_BATCH_ROWS = 8     # rows per batch fed to the inverse dynamics
VARIANTS = {"bwarea": "BWArea", "cola": "CoLA", "ar": "AR baseline"}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="bwarea convert", description=__doc__.split("\n\n")[0], default_env=False)
    subcommands = parser.add_subcommands(required=True, dest="kind")

    hf = ArgumentParser(description="A Hugging Face causal LM (LlamaForCausalLM, Qwen2ForCausalLM, MistralForCausalLM) "
                                    "as the start of BWArea, CoLA or the AR baseline.")
    hf.add_argument("--config", action=ActionConfigFile, help="YAML file with any of the options below.")
    hf.add_argument("--model", type=str, required=True,
                    help="Hugging Face model directory (config.json, safetensors weights, tokenizer) or a .gguf file.")
    hf.add_argument("--out", type=str, required=True, help="Output directory (save_pretrained layout).")
    hf.add_argument("--variant", type=Literal["bwarea", "cola", "ar"], default="bwarea",
                    help="bwarea: world model = the LM, inverse dynamics = its first half, policy = its trunk + a "
                         "K-way head; cola: CoLA's action networks on the frozen LM; ar: the LM as our AR baseline.")
    hf.add_argument("--num_actions", type=int, default=64, help="K, the number of latent actions (bwarea, cola).")
    hf.add_argument("--code_dim", type=int | None, default=None,
                    help="BWArea's code-space dimension D (default: min(256, hidden size)).")
    hf.add_argument("--max_position_embeddings", type=int | None, default=None,
                    help="Context length to build the model for (default: the checkpoint's, capped to its sliding window).")
    hf.add_argument("--corpus", type=str | None, default=None,
                    help="BWArea only: text (a .txt/.jsonl file or a directory of them) whose first --kmeans_tokens tokens "
                         "place the codebook on k-means centres of the inverse dynamics' features. Without it the "
                         "codebook stays random, and stage 1 (bwarea pretrain) initialises it from its training data.")
    hf.add_argument("--kmeans_tokens", type=int, default=16384, help="Tokens of --corpus used for the k-means codebook.")
    hf.add_argument("--dtype", type=Literal["float32", "bfloat16", "float16"], default="float32",
                    help="dtype of the saved weights.")
    hf.add_argument("--seed", type=int, default=0, help="Seed of the new networks' initialisation and of the k-means.")
    hf.add_argument("--overwrite", type=bool, nargs="?", const=True, default=False,
                    help="Replace an existing non-empty --out.")
    subcommands.add_subcommand("hf", hf, help="BWArea / CoLA / AR baseline from a Hugging Face causal LM")

    released = ArgumentParser(description="The released BWArea-2.7B checkpoint (LAMDA-RL/Pretrained_BWArea_2.7B_30G).")
    released.add_argument("--source", type=str, required=True, help="Directory of the release (config, weights, tokenizer).")
    released.add_argument("--out", type=str, required=True, help="Output directory (save_pretrained layout).")
    released.add_argument("--overwrite", type=bool, nargs="?", const=True, default=False,
                          help="Replace an existing non-empty --out.")
    subcommands.add_subcommand("released", released, help="the released BWArea-2.7B checkpoint")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    options = args[args.kind]
    try:
        if args.kind == "hf":
            out, model = convert_hf(options)
        else:
            from bwarea.released import convert_released
            out = convert_released(Path(options.source), Path(options.out), overwrite=options.overwrite)
            model = bwarea.load_shapes(out)
    except (UserError, ValueError, FileNotFoundError, FileExistsError) as error:
        print(f"bwarea convert: {error}", file=sys.stderr)
        return 2
    sizes = ", ".join(f"{part} {_millions(count)}" for part, count in _part_sizes(model).items())
    label = VARIANTS[options.variant] if args.kind == "hf" else "released BWArea"
    print(f"wrote the {label} model to {out}: {sizes} ({_millions(model.num_parameters())} parameters in all)")
    return 0


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


def _part_sizes(model: nn.Module) -> dict[str, int]:
    """Parameters of each top-level part of `model` (world, inverse, policy, codebook; trunk, lm_head, ...);
    a tensor shared with an earlier part (a tied head) counts there only, and parts left empty are omitted."""
    seen: set[int] = set()
    sizes = {}
    for name, child in model.named_children():
        fresh = [p for p in child.parameters() if id(p) not in seen]
        seen.update(id(p) for p in fresh)
        if fresh:
            sizes[name] = sum(p.numel() for p in fresh)
    return sizes


def _check_output(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a directory.")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(f"--out {out} already exists and is not empty; pass --overwrite to replace it, "
                        "or choose another directory.")


def _millions(count: int) -> str:
    return f"{count / 1e9:.2f}B" if count >= 1e9 else f"{count / 1e6:.1f}M" if count >= 1e5 else f"{count:,}"


if __name__ == "__main__":
    sys.exit(main())
