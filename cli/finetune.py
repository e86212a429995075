"""`bwarea finetune`: fine-tune the cognitive policy (or the AR baseline) against game rewards, through LightningCLI (FinetuneCLI in training/finetune.py declares every option; run
`bwarea finetune --help`). Usage and configs: the docstring of training/finetune.py and configs/finetune/.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from cli.help_cache import lightning_command

    return lightning_command("finetune", "training.finetune:FinetuneCLI", argv)


if __name__ == "__main__":
    sys.exit(main())
