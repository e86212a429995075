"""`bwarea quickstart`: the whole BWArea story on one CPU machine in about a quarter of an hour.

    bwarea quickstart                                           # configs/quickstart/default.yaml
    bwarea quickstart --config configs/quickstart/micro.yaml    # a one-minute smoke run
    bwarea quickstart --pretrain.steps 800 --out runs/qs-long   # any option overridable

Steps, all under one run directory (`out`):
 1. TextWorld games for the training and held-out splits (generated once into the game cache) and a
    pretraining corpus of their transcripts (walkthroughs + exploratory episodes);
 2. tokenizer (trained on the corpus, cached), BWArea stage 1 (world model + inverse dynamics), stage 2
    (cognitive policy) and the equal-size autoregressive baseline with the same data and token budget;
 3. held-out evaluation of both (greedy), ReMax fine-tuning of both on the training games (BWArea: the
    policy only), held-out evaluation again;
 4. the comparison table (report.md, summary.json) and plots (plots/*.png);
 5. a few steps of the SPRING agent on Crafter with the tiny BWArea model as its LLM, showing the DAG trace.

Re-running with the same `out` reuses every finished step (games, corpus, tokenizer, trained models);
`--fresh true` retrains and re-evaluates but still reuses the game and tokenizer caches. A run made
with other settings is never reused: the corpus is rebuilt when its games change, and a pretraining or
fine-tuning run whose budget changed stops the command with the names of the differing settings.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from cli.options import command, new_parser, parse_options
from training.settings import FinetuneBudget, PretrainBudget, RolloutConfig

PROG = "bwarea quickstart"
MODELS = {"bwarea": "BWArea", "ar": "AR baseline"}


@dataclass
class QuickstartConfig:
    """The quickstart's settings.

    Args:
        out: Run directory holding every output (models, evaluations, report, plots).
        textworld_preset: TextWorld difficulty preset of the training and held-out games (envs.names()).
        train_games: Training-split games: the corpus and the RL task pool.
        test_games: Held-out (test-split) games for the before/after evaluation.
        exploratory_per_game: Exploratory episodes (detours, failed commands) per training game in the corpus.
        textworld_cache: Game cache directory (default: the envs package's cache, shared between runs).
        pretrain: Pretraining settings shared by BWArea and the AR baseline.
        finetune: ReMax settings shared by both (env, task pool and cache are filled in from the options above).
        evaluation: How held-out episodes are played (greedy choices).
        spring_steps: Crafter steps of the SPRING demo with the tiny BWArea model as its LLM (0 skips it).
        fresh: Retrain and re-evaluate everything (the game and tokenizer caches are still reused).
        threads: torch CPU threads (default: all the cores this process may use).
    """

    out: str = "runs/quickstart"
    textworld_preset: str = "coin-easy"
    train_games: int = 64
    test_games: int = 24
    exploratory_per_game: int = 3
    textworld_cache: str | None = None
    pretrain: PretrainBudget = field(default_factory=PretrainBudget)
    finetune: FinetuneBudget = field(default_factory=FinetuneBudget)
    evaluation: RolloutConfig = field(default_factory=lambda: RolloutConfig(max_turns=8, max_new_tokens=12))
    spring_steps: int = 3
    fresh: bool = False
    threads: int | None = None


def build_parser():
    parser = new_parser(PROG, __doc__.split("\n\n")[0])
    parser.add_class_arguments(QuickstartConfig, None, fail_untyped=True)
    return parser


@command(PROG)
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    arguments = parse_options(parser, argv, configs_kind="quickstart")
    arguments.pop("config", None)
    config = parser.instantiate(arguments)
    from cli.quickstart_pipeline import run_quickstart

    run_quickstart(QuickstartConfig(**{k: v for k, v in vars(config).items() if not k.startswith("_")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
