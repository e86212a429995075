"""`bwarea pretrain`: pretrain BWArea (stage 1: world model + inverse dynamics; stage 2: policy) or the AR baseline, through LightningCLI (PretrainCLI in training/pretrain.py declares every option; run
`bwarea pretrain --help`). Usage and configs: the docstring of training/pretrain.py and configs/pretrain/.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from cli.help_cache import lightning_command

    return lightning_command("pretrain", "training.pretrain:PretrainCLI", argv)


if __name__ == "__main__":
    sys.exit(main())
