"""The `bwarea` command: one entry point that dispatches to a subcommand module.

Each subcommand lives in its own module and exposes ``main(argv: list[str] | None)``; modules are
imported lazily so `bwarea --help` stays fast.
"""

from __future__ import annotations

import difflib
import importlib
import sys
from importlib import metadata

# name -> (module, one-line description)
COMMANDS: dict[str, tuple[str, str]] = {
    "convert": ("cli.convert", "start from a pretrained model: BWArea / CoLA / AR baseline from a Hugging Face LM, or the released BWArea-2.7B"),
    "data": ("cli.data", "build pretraining corpora from TextWorld, Crafter and BIG-Bench Hard"),
    "evaluate": ("cli.evaluate", "evaluate an agent on TextWorld / Crafter / BIG-Bench Hard: resumable, with a report"),
    "finetune": ("cli.finetune", "fine-tune the cognitive policy (or the AR baseline) against game rewards: ReMax, PM-RLHF, PPO"),
    "generate": ("cli.generate", "sample text from a saved model, showing the cognitive action behind each token"),
    "quickstart": ("cli.quickstart", "the whole story on a CPU in ~10 min: games, pretraining, ReMax, before/after table with a random agent, SPRING demo"),
    "play": ("cli.play", "play an environment in the terminal, with an agent's suggestions, or watch an agent play"),
    "plot": ("cli.plot", "PNG plots: training curves, evaluation bars, before/after-RL comparison, latent actions"),
    "pretrain": ("cli.pretrain", "pretrain BWArea (stage 1: world model + inverse dynamics; stage 2: policy) or the AR baseline"),
    "view": ("cli.view", "a local web app: replay episodes (frames, DAG, latent action per token), compare runs, watch live, play, curves"),
}


def _usage() -> str:
    width = max((len(name) for name in COMMANDS), default=0)
    lines = ["usage: bwarea <command> [options]   (bwarea <command> --help for its options; bwarea --version)", "",
             "commands:"]
    lines += [f"  {name:<{width}}  {description}" for name, (_, description) in sorted(COMMANDS.items())]
    return "\n".join(lines)


def version() -> str:
    try:
        return metadata.version("bwarea")
    except metadata.PackageNotFoundError:   # a checkout used without installing it
        return "unknown (not installed)"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version", "version"):
        print(f"bwarea {version()}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        print(f"bwarea: unknown command {name!r}; {hint}choose one of: {', '.join(sorted(COMMANDS))}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    result = module.main(rest)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
