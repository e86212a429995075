"""`bwarea finetune`: fine-tune the cognitive policy (or the AR baseline) against game rewards, through LightningCLI (FinetuneCLI in training/finetune.py declares every option; run
`bwarea finetune --help`). Usage and configs: the docstring of training/finetune.py and configs/finetune/.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from cli.help_cache import with_cached_help
    from cli.options import with_bundled_configs

    def run(args: list[str]) -> int:
        from training.finetune import FinetuneCLI      # imports Lightning (~4 s): only when the help is not cached
        from training.runs import cli_main

        return cli_main(FinetuneCLI, args)

    return with_cached_help("bwarea finetune", with_bundled_configs(argv, "finetune"), run)


if __name__ == "__main__":
    sys.exit(main())
