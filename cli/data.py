"""`bwarea data`: build pretraining corpora (JSONL shards + manifest.json) from the text environments.

    bwarea data textworld --games 200 --out data/textworld --workers 2
    bwarea data crafter --episodes 100 --out data/crafter --max_steps 300
    bwarea data bbh --out data/bbh --data_dir ../shared/data/bbh        # train split only
    bwarea data textworld --config configs/data/textworld.yaml --dirty_ratio 0.2 --corruption foreign_text

Format, document kinds and dirty-data options: docs/envs.md ("Corpora") and envs/corpus.py.
"""

from __future__ import annotations

import sys

from jsonargparse import ArgumentParser

from cli.options import command, new_parser, parse_options
from envs.corpus import (BBHCorpusConfig, CrafterCorpusConfig, DirtyConfig, OutputConfig, TextWorldCorpusConfig,
                         build_bbh_corpus, build_crafter_corpus, build_textworld_corpus)
from envs.corruption import CORRUPTIONS

PROG = "bwarea data"


def _common(parser: ArgumentParser) -> None:
    parser.add_argument("--out", type=str, required=True, help="Output directory for shard-*.jsonl and manifest.json.")
    parser.add_argument("--workers", type=int, default=1, help="Processes generating documents in parallel.")
    parser.add_argument("--shard_mb", type=float, default=64.0, help="Start a new shard after about this many MiB.")
    parser.add_argument("--overwrite", type=bool, default=False,
                        help="Replace the shards and manifest of an existing corpus in --out.")
    parser.add_argument("--progress", type=bool, default=True, help="Show a progress bar.")
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

    textworld = new_parser(f"{PROG} textworld", "Transcripts of TextWorld train-split games: walkthroughs and "
                                           "exploratory episodes with detours and failed commands.")
    _common(textworld)
    defaults = TextWorldCorpusConfig()
    textworld.add_argument("--games", type=int, default=defaults.games,
                           help="Number of games in all, taken from the presets in turn.")
    textworld.add_argument("--presets", type=list[str], default=defaults.presets,
                           help="TextWorld presets (see envs.textworld.PRESETS).")
    textworld.add_argument("--first_game", type=int, default=defaults.first_game,
                           help="Index (in the train split) of each preset's first game.")
    textworld.add_argument("--exploratory_per_game", type=int, default=defaults.exploratory_per_game,
                           help="Exploratory episodes per game, besides the walkthrough episode.")
    textworld.add_argument("--detour_prob", type=float, default=defaults.detour_prob,
                           help="Per step of an exploratory episode, probability of a harmless admissible detour.")
    textworld.add_argument("--failure_prob", type=float, default=defaults.failure_prob,
                           help="Per step of an exploratory episode, probability of a command the game refuses.")
    textworld.add_argument("--cache_dir", type=str | None, default=None,
                           help="Game cache directory (default: $BWAREA_CACHE_DIR/textworld or ~/.cache/bwarea/textworld).")
    textworld.add_argument("--seed", type=int, default=defaults.seed, help="Seed of the exploratory choices.")
    subcommands.add_subcommand("textworld", textworld, help="corpus from TextWorld games")

    crafter = new_parser(f"{PROG} crafter", "Transcripts of the scripted Crafter explorer, one episode per world seed.")
    _common(crafter)
    defaults = CrafterCorpusConfig()
    crafter.add_argument("--episodes", type=int, default=defaults.episodes, help="Number of episodes (world seeds).")
    crafter.add_argument("--first_seed", type=int, default=defaults.first_seed, help="World seed of the first episode.")
    crafter.add_argument("--max_steps", type=int, default=defaults.max_steps, help="Step limit of an episode.")
    crafter.add_argument("--epsilon", type=float, default=defaults.epsilon,
                         help="Probability that the explorer takes a random action instead of its scripted one.")
    crafter.add_argument("--extras", type=bool, default=defaults.extras,
                         help="Include night, stations in reach and achievements in the observations.")
    crafter.add_argument("--seed", type=int, default=defaults.seed, help="Seed of the explorer's random choices.")
    subcommands.add_subcommand("crafter", crafter, help="corpus from Crafter")

    bbh = new_parser(f"{PROG} bbh", "BIG-Bench Hard train-split items as zero-shot question + answer documents.")
    _common(bbh)
    bbh.add_argument("--tasks", type=list[str] | None, default=None, help="Tasks to include (default: all 27).")
    bbh.add_argument("--data_dir", type=str | None, default=None,
                     help="BIG-Bench Hard directory (tasks/, cot-prompts/); default: $BWAREA_BBH_DIR.")
    bbh.add_argument("--split_seed", type=int, default=0, help="Seed of the train/test split (must match evaluation's).")
    subcommands.add_subcommand("bbh", bbh, help="corpus from BIG-Bench Hard (train split only)")
    return parser


@command(PROG)
def main(argv: list[str] | None = None) -> int:
    args = parse_options(build_parser(), argv, configs_kind="data")
    source = args.source
    options = args[source]
    output = OutputConfig(out=options.out, shard_mb=options.shard_mb, workers=options.workers,
                          overwrite=options.overwrite, progress=options.progress)
    dirty = DirtyConfig(ratio=options.dirty_ratio, corruption=options.corruption, rate=options.corruption_rate,
                        seed=options.dirty_seed)
    if source == "textworld":
        config = TextWorldCorpusConfig(presets=options.presets, games=options.games, first_game=options.first_game,
                                       exploratory_per_game=options.exploratory_per_game,
                                       detour_prob=options.detour_prob, failure_prob=options.failure_prob,
                                       cache_dir=options.cache_dir, seed=options.seed)
        manifest = build_textworld_corpus(config, output, dirty)
    elif source == "crafter":
        config = CrafterCorpusConfig(episodes=options.episodes, first_seed=options.first_seed,
                                     max_steps=options.max_steps, epsilon=options.epsilon, extras=options.extras,
                                     seed=options.seed)
        manifest = build_crafter_corpus(config, output, dirty)
    else:
        config = BBHCorpusConfig(tasks=options.tasks, data_dir=options.data_dir, split_seed=options.split_seed)
        manifest = build_bbh_corpus(config, output, dirty)
    print(f"wrote {manifest['documents']} documents ({manifest['characters']:,} characters, "
          f"{manifest['dirty_documents']} dirty) in {len(manifest['shards'])} shard(s) to {options.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
