"""The `bwarea` command: one entry point that dispatches to a subcommand module.

Each subcommand lives in its own module and exposes ``main(argv: list[str] | None)``; modules are
imported lazily so `bwarea --help` stays fast.
"""

from __future__ import annotations

import importlib
import sys

# name -> (module, one-line description)
COMMANDS: dict[str, tuple[str, str]] = {
    "convert": ("training.convert", "start from a pretrained model: BWArea / CoLA / AR baseline from a Hugging Face LM, or the released BWArea-2.7B"),
    "data": ("training.data_cli", "build pretraining corpora from TextWorld, Crafter and BIG-Bench Hard"),
    "evaluate": ("training.evaluate", "evaluate an agent on TextWorld / Crafter / BIG-Bench Hard: resumable, with a report"),
    "finetune": ("training.finetune", "fine-tune the cognitive policy (or the AR baseline) against game rewards: ReMax, PM-RLHF, PPO"),
    "generate": ("training.generate", "sample text from a saved model, showing the cognitive action behind each token"),
    "quickstart": ("training.quickstart", "the whole story on a CPU in ~10 min: games, pretraining, ReMax, before/after table with a random agent, SPRING demo"),
    "play": ("training.play", "play an environment in the terminal, with an agent's suggestions, or watch an agent play"),
    "plot": ("training.plots", "PNG plots: training curves, evaluation bars, before/after-RL comparison, latent actions"),
    "pretrain": ("training.pretrain", "pretrain BWArea (stage 1: world model + inverse dynamics; stage 2: policy) or the AR baseline"),
    "view": ("viewer.cli", "a local web app: replay episodes (frames, DAG, latent action per token), compare runs, watch live, play, curves"),
}


def _usage() -> str:
    width = max((len(name) for name in COMMANDS), default=0)
    lines = ["usage: bwarea <command> [options]   (bwarea <command> --help for its options)", "", "commands:"]
    lines += [f"  {name:<{width}}  {description}" for name, (_, description) in sorted(COMMANDS.items())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"bwarea: unknown command {name!r}; choose one of: {', '.join(sorted(COMMANDS))}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    result = module.main(rest)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
