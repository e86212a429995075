"""`bwarea pretrain`: pretrain BWArea (stage 1: world model + inverse dynamics; stage 2: policy) or the AR baseline, through LightningCLI (PretrainCLI in training/pretrain.py declares every option; run
`bwarea pretrain --help`). Usage and configs: the docstring of training/pretrain.py and configs/pretrain/.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from cli.help_cache import with_cached_help
    from cli.options import with_bundled_configs

    def run(args: list[str]) -> int:
        from training.pretrain import PretrainCLI      # imports Lightning (~4 s): only when the help is not cached
        from training.runs import cli_main

        return cli_main(PretrainCLI, args)

    return with_cached_help("bwarea pretrain", with_bundled_configs(argv, "pretrain"), run)


if __name__ == "__main__":
    sys.exit(main())
