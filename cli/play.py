"""`bwarea play`: play an environment yourself in the terminal, or watch an agent play it step by step.

    bwarea play --env textworld/coin-easy --seed 3                 # type commands, or the number of one
    bwarea play --env crafter --frames runs/play/frames            # action names; a PNG of the world per step
    bwarea play --env bbh/navigate --bbh_data_dir ../shared/data/bbh
    bwarea play --env crafter --agent random                       # the agent suggests; Enter accepts
    bwarea play --env crafter --agent spring --watch true          # watch SPRING: each DAG question and answer
    bwarea play --env textworld/coin-easy --agent own_model --watch true \\
        --agent_overrides '{"backend": {"model": "runs/quickstart/finetune/bwarea/export"}}'   # latent action per token

How a session runs and what it saves: evaluation/play.py.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence

from cli.options import command, dataclass_parser, parse_dataclass
from evaluation.play import PlayConfig, Session

PROG = "bwarea play"


def build_parser():
    return dataclass_parser(PROG, PlayConfig)


@command(PROG)
def main(argv: Sequence[str] | None = None) -> int:
    config = parse_dataclass(build_parser(), PlayConfig, argv)
    # a process started in the background of a non-interactive shell inherits SIGINT ignored; an interactive
    # game must still end cleanly (episode saved) on Ctrl-C
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        import readline  # noqa: F401  (line editing and history for input() on a terminal)
    except ImportError:
        pass
    return Session(config).run()


if __name__ == "__main__":
    sys.exit(main())
