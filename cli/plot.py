"""`bwarea plot`: PNG plots of training runs, evaluations and latent actions, drawn from files.

    bwarea plot curves --runs runs/tiny-world runs/tiny-ar --metrics train/loss val/loss --out curves.png
    bwarea plot evaluation --dir runs/evaluate/random-1a2b3c4d
    bwarea plot compare --table table.yaml --metric textworld_normalised_score --out rl.png
    bwarea plot strip --generation generation.jsonl --model runs/tiny-policy/export --out strip.png

The plotting functions themselves: evaluation/plots.py.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cli.options import command, new_parser, parse_options
from common.stats import Estimate, macro_average
from evaluation.plots import (NUM_ACTIONS, PlotError, plot_action_strip, plot_evaluation, plot_rl_comparison,
                              plot_training_curves)

PROG = "bwarea plot"


def _load_structured(source: str | Mapping[str, Any]) -> Any:
    """A mapping given inline, or read from a JSON / YAML file."""
    if isinstance(source, Mapping):
        return source
    import yaml

    path = Path(source)
    if not path.is_file():
        raise PlotError(f"{source} is not a file; give a JSON or YAML file (or a mapping inside --config).")
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _summary_metric(directory: str, metric: str) -> dict[str, Any]:
    """metric (e.g. textworld_normalised_score, bbh_macro_accuracy) from an evaluation directory or summary.json,
    averaged over its environments when several report it."""
    path = Path(directory)
    path = path / "summary.json" if path.is_dir() else path
    if not path.is_file():
        raise PlotError(f"{directory} is neither an evaluation directory nor a summary.json.")
    summary = json.loads(path.read_text())
    if metric in summary.get("aggregates", {}):
        return summary["aggregates"][metric]
    found = [Estimate.from_dict(entry["metrics"][metric]) for entry in summary.get("environments", {}).values()
             if metric in entry.get("metrics", {})]
    if not found:
        names = sorted({m for e in summary.get("environments", {}).values() for m in e.get("metrics", {})}
                       | set(summary.get("aggregates", {})))
        raise PlotError(f"{path} has no metric {metric!r}; it has: {', '.join(names)}.")
    return (found[0] if len(found) == 1 else macro_average(found)).to_dict()


def build_parser():
    parser = new_parser(PROG, "Draw PNG plots of training runs, evaluations and latent actions.", config=False)
    commands = parser.add_subcommands(required=True, dest="kind")

    curves = new_parser(f"{PROG} curves", "Training curves from run directories' CSV logs.")
    curves.add_argument("--runs", type=list[str], required=True, help="Run directories (bwarea pretrain/finetune).")
    curves.add_argument("--labels", type=list[str] | None, default=None, help="Legend labels, one per run (default: names).")
    curves.add_argument("--metrics", type=list[str] | None, default=None,
                        help="CSV columns to draw (default: the loss, reward and accuracy columns, at most 6).")
    curves.add_argument("--x", type=str, default="step", help="Column on the horizontal axis.")
    curves.add_argument("--out", type=str, default="curves.png", help="Output PNG.")
    commands.add_subcommand("curves", curves, help="training curves from run logs")

    evaluation = new_parser(f"{PROG} evaluation", "The plots of an evaluation directory (as `bwarea evaluate` writes them).")
    evaluation.add_argument("--dir", type=str, required=True, help="Evaluation directory holding summary.json.")
    evaluation.add_argument("--out", type=str | None, default=None, help="Output directory (default: <dir>/plots).")
    commands.add_subcommand("evaluation", evaluation, help="Crafter / BBH bars and latent-action usage of an evaluation")

    compare = new_parser(f"{PROG} compare", "Before/after-RL bars per model, e.g. BWArea vs the AR baseline.")
    compare.add_argument("--table", type=str | dict, required=True,
                         help="{model: {phase: value}} inline in --config, or a JSON/YAML file; a value is a number, "
                              "{mean, stderr}, or an evaluation directory (then --metric picks the number).")
    compare.add_argument("--metric", type=str, default="textworld_normalised_score",
                         help="Summary metric to read from evaluation directories, and the axis label.")
    compare.add_argument("--out", type=str, default="rl_comparison.png", help="Output PNG.")
    commands.add_subcommand("compare", compare, help="before/after-RL comparison bars")

    strip = new_parser(f"{PROG} strip", "A generation's tokens coloured by latent action, from `bwarea generate --json` "
                                       "output (one JSON object per line with tokens and actions).")
    strip.add_argument("--generation", type=str, required=True, help="File with `bwarea generate --json` lines.")
    strip.add_argument("--model", type=str, required=True, help="Model directory (its tokenizer decodes the tokens).")
    strip.add_argument("--line", type=int, default=0, help="Which line (generation) of the file to draw.")
    strip.add_argument("--out", type=str, default="action_strip.png", help="Output PNG.")
    commands.add_subcommand("strip", strip, help="per-token latent-action strip of a generated text")
    return parser


def _run(kind: str, options: Any) -> list[Path]:
    if kind == "curves":
        runs = options.runs
        if options.labels is not None:
            if len(options.labels) != len(runs):
                raise PlotError(f"--labels has {len(options.labels)} entries for {len(runs)} runs.")
            runs = dict(zip(options.labels, runs))
        return [plot_training_curves(runs, options.out, options.metrics, options.x)]
    if kind == "evaluation":
        path = Path(options.dir) / "summary.json"
        if not path.is_file():
            raise PlotError(f"{options.dir} has no summary.json; give a directory written by `bwarea evaluate`.")
        return plot_evaluation(json.loads(path.read_text()), options.out or Path(options.dir) / "plots")
    if kind == "compare":
        table = _load_structured(options.table)
        if not isinstance(table, Mapping):
            raise PlotError("--table must hold a mapping {model: {phase: value}}.")
        resolved = {model: {phase: _summary_metric(value, options.metric) if isinstance(value, str) else value
                            for phase, value in (row.items() if isinstance(row, Mapping) else [])}
                    for model, row in table.items()}
        return [plot_rl_comparison(resolved, options.out, metric=options.metric)]
    import bwarea

    lines = [line for line in Path(options.generation).read_text().splitlines() if line.strip()]
    if not 0 <= options.line < len(lines):
        raise PlotError(f"{options.generation} has {len(lines)} generation(s); --line {options.line} is out of range.")
    record = json.loads(lines[options.line])
    if "actions" not in record:
        raise PlotError(f"line {options.line} of {options.generation} has no 'actions': generate with a BWArea model "
                         "and --json true.")
    tokenizer = bwarea.load_tokenizer(options.model)
    tokens = [tokenizer.decode([token]) for token in record["tokens"]]
    num_actions = json.loads((Path(options.model) / "config.json").read_text()).get("num_actions", NUM_ACTIONS)
    return [plot_action_strip(tokens, record["actions"], options.out, num_actions=num_actions,
                              title=f"{record.get('prompt', '')!r} -> latent action per token")]


@command(PROG)
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_options(build_parser(), argv)
    written = _run(args.kind, args[args.kind])
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
