"""`bwarea data`: build pretraining corpora (JSONL shards + manifest.json) from the text environments.

    bwarea data textworld --games 200 --out data/textworld --workers 2
    bwarea data crafter --episodes 100 --out data/crafter --max_steps 300
    bwarea data bbh --out data/bbh --data_dir ../shared/data/bbh        # train split only
    bwarea data textworld --config configs/data/textworld.yaml --dirty_ratio 0.2 --corruption foreign_text

Each source's options are the fields of its config (envs/corpus.py: TextWorldCorpusConfig, CrafterCorpusConfig,
BBHCorpusConfig) and of OutputConfig; the dirty-data options are DirtyConfig's, prefixed so that they do not clash
with the source's own `seed`. Format, document kinds and dirty-data options: docs/envs.md ("Corpora").
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from typing import Any

from jsonargparse import ArgumentParser

from cli.options import command, new_parser, parse_options
from envs.corpus import (BBHCorpusConfig, CrafterCorpusConfig, DirtyConfig, OutputConfig, TextWorldCorpusConfig,
                         build_bbh_corpus, build_crafter_corpus, build_textworld_corpus)
from envs.corruption import CORRUPTIONS

PROG = "bwarea data"
# source -> (its config, the builder, one line of help)
SOURCES: dict[str, tuple[type, Callable[..., dict[str, Any]], str]] = {
    "textworld": (TextWorldCorpusConfig, build_textworld_corpus, "corpus from TextWorld games"),
    "crafter": (CrafterCorpusConfig, build_crafter_corpus, "corpus from Crafter"),
    "bbh": (BBHCorpusConfig, build_bbh_corpus, "corpus from BIG-Bench Hard (train split only)"),
}


def _dirty_options(parser: ArgumentParser) -> None:
    parser.add_argument("--dirty_ratio", type=float, default=0.0,
                        help="Fraction of documents to corrupt, for the dirty-data robustness experiment (0 = clean).")
    parser.add_argument("--corruption", type=str | list[str], default="random_tokens",
                        help=f"Corruption type, or a list drawn from per dirty document: {', '.join(CORRUPTIONS)}.")
    parser.add_argument("--corruption_rate", type=float, default=0.5,
                        help="Within a dirty document, the probability that each word (random_tokens) or line "
                             "(shuffled_words, foreign_text) is damaged.")
    parser.add_argument("--dirty_seed", type=int, default=0, help="Seed of the choice and content of corruptions.")


def build_parser() -> ArgumentParser:
    parser = new_parser(PROG, __doc__.split("\n\n")[0], config=False)
    subcommands = parser.add_subcommands(required=True, dest="source")
    for source, (config_class, _, help_text) in SOURCES.items():
        sub = new_parser(f"{PROG} {source}", config_class.__doc__.strip().split("\n\n")[0])
        sub.add_class_arguments(OutputConfig, as_group=False)
        sub.add_class_arguments(config_class, as_group=False)
        _dirty_options(sub)
        subcommands.add_subcommand(source, sub, help=help_text)
    return parser


def _fields(config_class: type, options: Any) -> dict[str, Any]:
    return {field.name: options[field.name] for field in dataclasses.fields(config_class)}


@command(PROG)
def main(argv: list[str] | None = None) -> int:
    args = parse_options(build_parser(), argv, configs_kind="data")
    config_class, build, _ = SOURCES[args.source]
    options = args[args.source]
    dirty = DirtyConfig(ratio=options.dirty_ratio, corruption=options.corruption, rate=options.corruption_rate,
                        seed=options.dirty_seed)
    manifest = build(config_class(**_fields(config_class, options)), OutputConfig(**_fields(OutputConfig, options)), dirty)
    print(f"wrote {manifest['documents']} documents ({manifest['characters']:,} characters, "
          f"{manifest['dirty_documents']} dirty) in {len(manifest['shards'])} shard(s) to {options.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
