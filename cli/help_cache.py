"""The Lightning commands' entry point (`bwarea pretrain`, `bwarea finetune`: `lightning_command`), with their
`--help` from a cache.

LightningCLI builds these texts from the Lightning and model classes, and importing Lightning alone takes ~4 s
(benchmarks/RESULTS.md, "Command-line start-up"). The text is the same until something it is made from changes, so a
bare `--help` (or `-h`) is answered from <cache root>/help/ when a text made from the same inputs is there: the
bwarea source files (paths, sizes, modification times), the versions of Python, torch, Lightning, jsonargparse and
transformers, and the terminal width the text was wrapped to. Anything else, `--config x --help` included, runs the
command.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.metadata
import io
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from cli.options import with_bundled_configs
from common.files import atomic_write_text, cache_root

# what the help text is made from: our packages' source and these distributions
PACKAGES = ("bwarea", "envs", "agents", "training", "evaluation", "common", "configs", "cli")
DISTRIBUTIONS = ("torch", "lightning", "jsonargparse", "transformers")
HELP_FLAGS = (["--help"], ["-h"])


def help_key(root: Path | None = None) -> str:
    """A digest of everything a Lightning command's help text is made from (see the module docstring)."""
    root = root or Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            stat = path.stat()
            digest.update(f"{path.relative_to(root)} {stat.st_size} {stat.st_mtime_ns}\n".encode())
    for distribution in DISTRIBUTIONS:
        try:
            digest.update(f"{distribution} {importlib.metadata.version(distribution)}\n".encode())
        except importlib.metadata.PackageNotFoundError:
            digest.update(f"{distribution} absent\n".encode())
    digest.update(f"{sys.version} {shutil.get_terminal_size().columns}".encode())
    return digest.hexdigest()[:20]


def with_cached_help(prog: str, argv: list[str], run: Callable[[list[str]], int]) -> int:
    """`run(argv)`, except that a bare --help prints the cached text when there is one (and caches it otherwise)."""
    if argv not in HELP_FLAGS:
        return run(argv)
    path = cache_root() / "help" / f"{prog.replace(' ', '-')}-{help_key()}.txt"
    if path.is_file():
        sys.stdout.write(path.read_text())
        return 0
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured):
        code = run(argv)
    text = captured.getvalue()
    sys.stdout.write(text)
    if code == 0 and text.startswith("usage:"):
        with contextlib.suppress(OSError):       # an unwritable cache costs only speed
            atomic_write_text(path, text)
    return code


def lightning_command(name: str, cli_class: str, argv: Sequence[str] | None) -> int:
    """`bwarea <name>` through its LightningCLI class, given as "module:Class" and imported only when the help is not
    cached (it imports Lightning); `--config NAME` may name a bundled config of configs/<name>/."""

    def run(args: list[str]) -> int:
        from training.runs import cli_main

        module, _, class_name = cli_class.partition(":")
        return cli_main(getattr(importlib.import_module(module), class_name), args)

    return with_cached_help(f"bwarea {name}", with_bundled_configs(argv, name), run)
