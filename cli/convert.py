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
from typing import TYPE_CHECKING, Literal

from cli.options import command, new_parser, parse_options

if TYPE_CHECKING:
    import torch.nn as nn

PROG = "bwarea convert"
VARIANTS = {"bwarea": "BWArea", "cola": "CoLA", "ar": "AR baseline"}


def build_parser():
    parser = new_parser(PROG, __doc__.split("\n\n")[0], config=False)
    subcommands = parser.add_subcommands(required=True, dest="kind")

    hf = new_parser(f"{PROG} hf", "A Hugging Face causal LM (LlamaForCausalLM, Qwen2ForCausalLM, MistralForCausalLM) "
                                    "as the start of BWArea, CoLA or the AR baseline.")
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

    released = new_parser(f"{PROG} released", "The released BWArea-2.7B checkpoint (LAMDA-RL/Pretrained_BWArea_2.7B_30G).")
    released.add_argument("--source", type=str, required=True, help="Directory of the release (config, weights, tokenizer).")
    released.add_argument("--out", type=str, required=True, help="Output directory (save_pretrained layout).")
    released.add_argument("--overwrite", type=bool, nargs="?", const=True, default=False,
                          help="Replace an existing non-empty --out.")
    subcommands.add_subcommand("released", released, help="the released BWArea-2.7B checkpoint")
    return parser


@command(PROG)
def main(argv: list[str] | None = None) -> int:
    args = parse_options(build_parser(), argv)
    import bwarea

    options = args[args.kind]
    if args.kind == "hf":
        from training.convert import convert_hf

        out, model = convert_hf(options)
    else:
        from bwarea.released import convert_released

        out = convert_released(Path(options.source), Path(options.out), overwrite=options.overwrite)
        model = bwarea.load_shapes(out)
    sizes = ", ".join(f"{part} {_millions(count)}" for part, count in _part_sizes(model).items())
    label = VARIANTS[options.variant] if args.kind == "hf" else "released BWArea"
    print(f"wrote the {label} model to {out}: {sizes} ({_millions(model.num_parameters())} parameters in all)")
    return 0


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


def _millions(count: int) -> str:
    return f"{count / 1e9:.2f}B" if count >= 1e9 else f"{count / 1e6:.1f}M" if count >= 1e5 else f"{count:,}"


if __name__ == "__main__":
    sys.exit(main())


if __name__ == "__main__":
    sys.exit(main())
