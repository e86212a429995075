"""PNG plots of training runs, evaluations and BWArea's latent actions (matplotlib, no display needed).

Each function takes data and an output path, writes the PNG (atomically) and returns its path:

    plot_training_curves({"BWArea": "runs/tiny", "AR": "runs/tiny-ar"}, "curves.png", metrics=["train/loss"])
    plot_crafter_achievements({"collect_wood": 80.0, ...}, "crafter.png")          # or {agent: {...}} side by side
    plot_bbh_tasks({"navigate": 55.0, "boolean_expressions": {"mean": 60.0, "stderr": 4.0}}, "bbh.png")
    plot_action_usage([3, 3, 17, 5, ...], "actions.png")                          # or {action: count}
    plot_action_strip(["You", " see", " a", " tree"], [3, 17, 17, 5], "strip.png")
    plot_rl_comparison({"BWArea": {"before": 20.0, "after": 45.0}, "AR": {"before": 22.0, "after": 30.0}},
                       "rl.png", metric="textworld_normalised_score (%)")
    plot_evaluation(summary, "runs/eval/x/plots")                                 # what `bwarea evaluate` writes

A value is a number or a mapping with "mean" and optionally "stderr" (drawn as an error bar), as in an
evaluation's summary.json. Bad input raises ValueError naming what is wrong.

The `bwarea plot` command draws the same from files: `bwarea plot curves|evaluation|compare|strip --help`.
Figures are built with matplotlib's object API (no pyplot), so plotting never changes a process's backend.
"""

from __future__ import annotations

import colorsys
import json
import math
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from envs.crafter import ACHIEVEMENTS

NUM_ACTIONS = 64


# ----------------------------------------------------------------------------------------------
# Shared helpers

def save_png(figure: Figure, out: str | os.PathLike) -> Path:
    """Write `figure` to `out` as PNG through a temporary file in the same directory, then rename.

    (bwarea.checkpoint.atomic_write does the same, but importing it loads torch, which `bwarea plot` avoids.)"""
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise ValueError(f"plots are PNG files; give an output path ending in .png, got {out}.")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        figure.savefig(temp, format="png", dpi=110, bbox_inches="tight")
        os.replace(temp, out)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)
    return out


def _value(value: Any, where: str) -> tuple[float, float | None]:
    """(mean, stderr) from a number or a {"mean", "stderr"} mapping."""
    if isinstance(value, Mapping):
        if "mean" not in value:
            raise ValueError(f"{where}: a value is a number or a mapping with 'mean' (and 'stderr'), got keys "
                             f"{sorted(value)}.")
        mean, stderr = value["mean"], value.get("stderr")
    else:
        mean, stderr = value, None
    try:
        mean = float(mean)
        stderr = None if stderr is None else float(stderr)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: expected a number, got {value!r}.") from None
    if not math.isfinite(mean) or (stderr is not None and not math.isfinite(stderr)):
        raise ValueError(f"{where}: values must be finite, got {value!r}.")
    return mean, stderr


def _is_leaf(value: Any) -> bool:
    return not isinstance(value, Mapping) or "mean" in value or "stderr" in value


def _series(data: Mapping[str, Any], what: str) -> dict[str, dict[str, tuple[float, float | None]]]:
    """{label: {category: value}} from either {category: value} (one series) or {label: {category: value}}."""
    if not isinstance(data, Mapping) or not data:
        raise ValueError(f"{what}: give a non-empty mapping of {{name: value}} or {{label: {{name: value}}}}.")
    nested = {key: value for key, value in data.items()} if not all(_is_leaf(v) for v in data.values()) else {"": data}
    series = {}
    for label, values in nested.items():
        if not isinstance(values, Mapping) or not values or not all(_is_leaf(v) for v in values.values()):
            raise ValueError(f"{what}: series {label!r} must be a non-empty mapping of names to values.")
        series[str(label)] = {str(name): _value(value, f"{what}, {label or 'value'} {name!r}") for name, value in values.items()}
    return series


def _grouped_bars(axes: Any, categories: Sequence[str], series: Mapping[str, Mapping[str, tuple[float, float | None]]],
                  horizontal: bool = False) -> None:
    width = 0.8 / len(series)
    for k, (label, values) in enumerate(series.items()):
        positions = [i - 0.4 + width * (k + 0.5) for i in range(len(categories))]
        means = [values.get(c, (0.0, None))[0] for c in categories]
        errors = [values.get(c, (0.0, None))[1] for c in categories]
        errors = [math.nan if e is None else e for e in errors]    # no error bar where none is known
        has_errors = any(values.get(c, (0.0, None))[1] is not None for c in categories)
        draw = axes.barh if horizontal else axes.bar
        keyword = "xerr" if horizontal else "yerr"
        draw(positions, means, width, label=label or None, capsize=2, **({keyword: errors} if has_errors else {}))
    ticks = list(range(len(categories)))
    if horizontal:
        axes.set_yticks(ticks, categories)
        axes.invert_yaxis()
    else:
        axes.set_xticks(ticks, categories, rotation=60, ha="right")
    if len(series) > 1 or next(iter(series)):
        axes.legend()


# ----------------------------------------------------------------------------------------------
# Training curves

def plot_training_curves(runs: str | os.PathLike | Sequence[str | os.PathLike] | Mapping[str, str | os.PathLike],
                         out: str | os.PathLike, metrics: Sequence[str] | None = None, x: str = "step") -> Path:
    """One panel per metric, one line per run, from the runs' CSV logs (training.runs.read_metrics).

    runs: a run directory, a list of them, or {label: run directory}. metrics: CSV columns to draw
    (default: every column whose name contains "loss", "reward" or "accuracy", at most 6).
    """
    from training.runs import read_metrics

    if isinstance(runs, (str, os.PathLike)):
        runs = [runs]
    labelled = dict(runs) if isinstance(runs, Mapping) else {Path(run).name: run for run in runs}
    if not labelled:
        raise ValueError("plot_training_curves needs at least one run directory.")
    rows_by_run = {}
    for label, run in labelled.items():
        rows = read_metrics(run)
        if not rows:
            raise ValueError(f"run {run} has no CSV logs under logs/csv/version_*/metrics.csv; give a run directory "
                             "written by `bwarea pretrain` or `bwarea finetune`.")
        rows_by_run[label] = rows
    available = sorted({key for rows in rows_by_run.values() for row in rows for key in row} - {x, "epoch"})
    if not metrics:
        metrics = [key for key in available if any(word in key for word in ("loss", "reward", "accuracy"))][:6]
        if not metrics:
            raise ValueError(f"no loss, reward or accuracy columns in the logs; choose metrics from: {', '.join(available)}.")
    unknown = [metric for metric in metrics if metric not in available]
    if unknown:
        raise ValueError(f"metric(s) {', '.join(unknown)} are not in the logs; available: {', '.join(available)}.")
    figure = Figure(figsize=(6.0, 2.6 * len(metrics)))
    for index, metric in enumerate(metrics):
        axes = figure.add_subplot(len(metrics), 1, index + 1)
        for label, rows in rows_by_run.items():
            points = sorted((row[x], row[metric]) for row in rows if x in row and metric in row)
            if points:
                axes.plot([p[0] for p in points], [p[1] for p in points], label=label, linewidth=1.2)
        axes.set_ylabel(metric)
        axes.grid(alpha=0.3)
        if len(rows_by_run) > 1:
            axes.legend()
    axes.set_xlabel(x)
    return save_png(figure, out)


# ----------------------------------------------------------------------------------------------
# Evaluation results

def plot_crafter_achievements(success_rates: Mapping[str, Any], out: str | os.PathLike, title: str | None = None) -> Path:
    """Bars of the 22 achievements' success rates (% of episodes); {label: rates} draws several agents side by side."""
    series = _series(success_rates, "plot_crafter_achievements")
    for label, values in series.items():
        unknown = sorted(set(values) - set(ACHIEVEMENTS))
        if unknown:
            raise ValueError(f"unknown Crafter achievement(s) {', '.join(unknown)}; valid: {', '.join(ACHIEVEMENTS)}.")
        if any(not 0.0 <= mean <= 100.0 for mean, _ in values.values()):
            raise ValueError("Crafter success rates are percentages between 0 and 100.")
    figure = Figure(figsize=(7.5, 6.5))
    axes = figure.add_subplot()
    _grouped_bars(axes, list(ACHIEVEMENTS), series, horizontal=True)
    axes.set_xlim(0, 100)
    axes.set_xlabel("success rate (% of episodes)")
    axes.set_title(title or "Crafter: success rate per achievement")
    axes.grid(axis="x", alpha=0.3)
    return save_png(figure, out)


def plot_bbh_tasks(accuracy: Mapping[str, Any], out: str | os.PathLike, macro: Any = None,
                   title: str | None = None) -> Path:
    """Bars of BIG-Bench Hard accuracy (%) per task, with the macro average as a dashed line when given."""
    series = _series(accuracy, "plot_bbh_tasks")
    tasks = sorted({task for values in series.values() for task in values})
    if any(not 0.0 <= mean <= 100.0 for values in series.values() for mean, _ in values.values()):
        raise ValueError("BIG-Bench Hard accuracies are percentages between 0 and 100.")
    figure = Figure(figsize=(max(5.0, 0.45 * len(tasks) * max(1, len(series)) + 2), 4.5))
    axes = figure.add_subplot()
    _grouped_bars(axes, tasks, series)
    if macro is not None:
        mean, _ = _value(macro, "plot_bbh_tasks macro")
        axes.axhline(mean, linestyle="--", color="black", linewidth=1, label=f"macro average {mean:.1f}%")
        axes.legend()
    axes.set_ylim(0, 100)
    axes.set_ylabel("accuracy (%)")
    axes.set_title(title or "BIG-Bench Hard: accuracy per task")
    axes.grid(axis="y", alpha=0.3)
    return save_png(figure, out)


def plot_rl_comparison(table: Mapping[str, Mapping[str, Any]], out: str | os.PathLike, metric: str = "score",
                       title: str | None = None) -> Path:
    """Grouped bars: for each model (e.g. BWArea, AR), one bar per phase (e.g. before / after RL fine-tuning)."""
    if not isinstance(table, Mapping) or not table:
        raise ValueError("plot_rl_comparison needs {model: {phase: value}}, e.g. "
                         "{'BWArea': {'before': 20.0, 'after': 45.0}, 'AR': {'before': 22.0, 'after': 30.0}}.")
    phases: list[str] = []
    for model, row in table.items():
        if not isinstance(row, Mapping) or not row or not all(_is_leaf(v) for v in row.values()):
            raise ValueError(f"plot_rl_comparison: the row of {model!r} must map phases (before, after, ...) to values.")
        phases += [phase for phase in row if phase not in phases]
    by_phase = {phase: {model: _value(row[phase], f"plot_rl_comparison, {model} {phase}")
                        for model, row in table.items() if phase in row} for phase in phases}
    figure = Figure(figsize=(1.6 + 1.3 * len(table) * max(1, len(phases)) / 2, 4.0))
    axes = figure.add_subplot()
    _grouped_bars(axes, [str(model) for model in table], by_phase)
    axes.tick_params(axis="x", rotation=0)
    for label in axes.get_xticklabels():
        label.set_horizontalalignment("center")
    axes.set_ylabel(metric)
    axes.set_title(title or f"{metric}: before and after RL fine-tuning")
    axes.grid(axis="y", alpha=0.3)
    return save_png(figure, out)


# ----------------------------------------------------------------------------------------------
# Latent actions

def action_colour(action: int) -> tuple[float, float, float]:
    """A light colour per action; hues spread by the golden ratio so neighbouring ids look different."""
    hue = (action * 0.6180339887) % 1.0
    return colorsys.hsv_to_rgb(hue, 0.35 + 0.2 * (action % 3) / 2, 0.97)


def _check_actions(actions: Sequence[int], num_actions: int, what: str) -> list[int]:
    checked = []
    for action in actions:
        if isinstance(action, bool) or not isinstance(action, int) and not (hasattr(action, "__index__")):
            raise ValueError(f"{what}: actions are integers 0..{num_actions - 1}, got {action!r}.")
        if not 0 <= int(action) < num_actions:
            raise ValueError(f"{what}: action {int(action)} is outside 0..{num_actions - 1} (num_actions={num_actions}).")
        checked.append(int(action))
    return checked


def plot_action_usage(actions: Sequence[int] | Mapping[int | str, int], out: str | os.PathLike,
                      num_actions: int = NUM_ACTIONS, title: str | None = None) -> Path:
    """Histogram of how often each latent action was chosen: a list of action ids, or {action: count}."""
    if num_actions < 1:
        raise ValueError(f"num_actions must be at least 1, got {num_actions}.")
    counts = [0] * num_actions
    if isinstance(actions, Mapping):
        for action, count in actions.items():
            (index,) = _check_actions([int(action)], num_actions, "plot_action_usage")
            if int(count) < 0:
                raise ValueError(f"plot_action_usage: count of action {index} is negative ({count}).")
            counts[index] += int(count)
    else:
        for index in _check_actions(list(actions), num_actions, "plot_action_usage"):
            counts[index] += 1
    total = sum(counts)
    if total == 0:
        raise ValueError("plot_action_usage: no actions to count; give the latent actions of generated tokens.")
    probabilities = [c / total for c in counts if c]
    entropy = -sum(p * math.log(p) for p in probabilities)
    figure = Figure(figsize=(9.0, 3.2))
    axes = figure.add_subplot()
    axes.bar(range(num_actions), counts, color=[action_colour(a) for a in range(num_actions)],
             edgecolor="0.4", linewidth=0.4)
    axes.set_xlim(-0.8, num_actions - 0.2)
    axes.set_xlabel("latent action")
    axes.set_ylabel("tokens")
    used = sum(1 for c in counts if c)
    axes.set_title(title or f"Latent-action usage: {total} tokens, {used}/{num_actions} actions used, "
                            f"perplexity {math.exp(entropy):.1f}")
    axes.grid(axis="y", alpha=0.3)
    return save_png(figure, out)


def _visible(token: str) -> str:
    """Newlines and tabs as arrows, other control characters as \\xNN, the empty token as an empty-set sign."""
    token = token.replace("\n", "\u21b5").replace("\t", "\u2192")
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in token) or "\u2205"


def plot_action_strip(tokens: Sequence[str], actions: Sequence[int], out: str | os.PathLike,
                      num_actions: int = NUM_ACTIONS, title: str | None = None, line_chars: int = 72) -> Path:
    """A generated text with each token on a box coloured by the latent action that produced it (id below).

    tokens: the decoded text of each generated token; actions: the action behind each token (same length).
    """
    tokens = [str(token) for token in tokens]
    actions = _check_actions(list(actions), num_actions, "plot_action_strip")
    if len(tokens) != len(actions):
        raise ValueError(f"plot_action_strip needs one action per token; got {len(tokens)} tokens and {len(actions)} actions.")
    if not tokens:
        raise ValueError("plot_action_strip: no tokens to draw.")
    lines: list[list[tuple[int, str, int]]] = [[]]
    column = 0
    for token, action in zip(tokens, actions):
        shown = _visible(token)
        if column and column + len(shown) > line_chars:
            lines.append([])
            column = 0
        lines[-1].append((column, shown, action))
        column += len(shown) + 1
    char_width = 1.0 / line_chars
    figure = Figure(figsize=(11.0, 0.75 * len(lines) + 0.6))
    axes = figure.add_subplot()
    axes.set_xlim(0, 1)
    axes.set_ylim(len(lines), -0.2)
    axes.axis("off")
    for row, entries in enumerate(lines):
        for column, shown, action in entries:
            x = column * char_width
            axes.text(x, row + 0.35, shown, family="monospace", fontsize=10, va="center", ha="left",
                      bbox={"boxstyle": "square,pad=0.15", "facecolor": action_colour(action),
                            "edgecolor": "0.5", "linewidth": 0.4})
            axes.text(x, row + 0.78, str(action), family="monospace", fontsize=6.5, va="center", ha="left", color="0.25")
    axes.set_title(title or "Generated tokens coloured by their latent action (id below each token)", fontsize=10)
    return save_png(figure, out)


# ----------------------------------------------------------------------------------------------
# All plots of one evaluation

def plot_evaluation(summary: Mapping[str, Any], directory: str | os.PathLike) -> list[Path]:
    """The plots of an evaluation summary (training.evaluate): Crafter achievements per Crafter environment,
    BIG-Bench Hard accuracy per task, latent-action usage. Returns the files written."""
    directory = Path(directory)
    written = []
    environments = summary.get("environments")
    if not isinstance(environments, Mapping):
        raise ValueError("plot_evaluation needs an evaluation summary (summary.json of `bwarea evaluate`).")
    agent = summary.get("settings", {}).get("agent", {}).get("source", "agent")
    for name, entry in environments.items():
        if entry.get("achievement_success_rates"):
            file = directory / f"{name.replace('/', '_')}_achievements.png"
            written.append(plot_crafter_achievements(entry["achievement_success_rates"], file,
                                                     title=f"{name}: success rate per achievement ({agent})"))
    accuracy = {name.partition("/")[2]: entry["metrics"]["bbh_accuracy"] for name, entry in environments.items()
                if entry.get("metrics", {}).get("bbh_accuracy")}
    if accuracy:
        written.append(plot_bbh_tasks(accuracy, directory / "bbh_tasks.png",
                                      macro=summary.get("aggregates", {}).get("bbh_macro_accuracy"),
                                      title=f"BIG-Bench Hard accuracy per task ({agent})"))
    latent = summary.get("latent_actions") or {}
    if latent:
        num_actions = max(NUM_ACTIONS, max(int(a) for a in latent) + 1)
        written.append(plot_action_usage({int(a): c for a, c in latent.items()}, directory / "latent_actions.png",
                                         num_actions=num_actions))
    return written


# ----------------------------------------------------------------------------------------------
# Command line: bwarea plot curves | evaluation | compare | strip

def _load_structured(source: str | Mapping[str, Any]) -> Any:
    """A mapping given inline, or read from a JSON / YAML file."""
    if isinstance(source, Mapping):
        return source
    import yaml

    path = Path(source)
    if not path.is_file():
        raise ValueError(f"{source} is not a file; give a JSON or YAML file (or a mapping inside --config).")
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _summary_metric(directory: str, metric: str) -> dict[str, Any]:
    """metric (e.g. textworld_normalised_score, bbh_macro_accuracy) from an evaluation directory or summary.json,
    averaged over its environments when several report it."""
    from training.metrics import Estimate, macro_average

    path = Path(directory)
    path = path / "summary.json" if path.is_dir() else path
    if not path.is_file():
        raise ValueError(f"{directory} is neither an evaluation directory nor a summary.json.")
    summary = json.loads(path.read_text())
    if metric in summary.get("aggregates", {}):
        return summary["aggregates"][metric]
    found = [Estimate.from_dict(entry["metrics"][metric]) for entry in summary.get("environments", {}).values()
             if metric in entry.get("metrics", {})]
    if not found:
        names = sorted({m for e in summary.get("environments", {}).values() for m in e.get("metrics", {})}
                       | set(summary.get("aggregates", {})))
        raise ValueError(f"{path} has no metric {metric!r}; it has: {', '.join(names)}.")
    return (found[0] if len(found) == 1 else macro_average(found)).to_dict()


def build_parser():
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(prog="bwarea plot", description="Draw PNG plots of training runs, evaluations and "
                            "latent actions.", default_env=False)
    commands = parser.add_subcommands(required=True, dest="kind")

    curves = ArgumentParser(description="Training curves from run directories' CSV logs.")
    curves.add_argument("--config", action=ActionConfigFile, help="YAML file with any of the options below.")
    curves.add_argument("--runs", type=str, nargs="+", required=True, help="Run directories (bwarea pretrain/finetune).")
    curves.add_argument("--labels", type=list[str] | None, default=None, help="Legend labels, one per run (default: names).")
    curves.add_argument("--metrics", type=list[str] | None, default=None,
                        help="CSV columns to draw (default: the loss, reward and accuracy columns, at most 6).")
    curves.add_argument("--x", type=str, default="step", help="Column on the horizontal axis.")
    curves.add_argument("--out", type=str, default="curves.png", help="Output PNG.")
    commands.add_subcommand("curves", curves, help="training curves from run logs")

    evaluation = ArgumentParser(description="The plots of an evaluation directory (as `bwarea evaluate` writes them).")
    evaluation.add_argument("--config", action=ActionConfigFile, help="YAML file with any of the options below.")
    evaluation.add_argument("--dir", type=str, required=True, help="Evaluation directory holding summary.json.")
    evaluation.add_argument("--out", type=str | None, default=None, help="Output directory (default: <dir>/plots).")
    commands.add_subcommand("evaluation", evaluation, help="Crafter / BBH bars and latent-action usage of an evaluation")

    compare = ArgumentParser(description="Before/after-RL bars per model, e.g. BWArea vs the AR baseline.")
    compare.add_argument("--config", action=ActionConfigFile, help="YAML file with any of the options below.")
    compare.add_argument("--table", type=str | dict, required=True,
                         help="{model: {phase: value}} inline in --config, or a JSON/YAML file; a value is a number, "
                              "{mean, stderr}, or an evaluation directory (then --metric picks the number).")
    compare.add_argument("--metric", type=str, default="textworld_normalised_score",
                         help="Summary metric to read from evaluation directories, and the axis label.")
    compare.add_argument("--out", type=str, default="rl_comparison.png", help="Output PNG.")
    commands.add_subcommand("compare", compare, help="before/after-RL comparison bars")

    strip = ArgumentParser(description="A generation's tokens coloured by latent action, from `bwarea generate --json` "
                                       "output (one JSON object per line with tokens and actions).")
    strip.add_argument("--config", action=ActionConfigFile, help="YAML file with any of the options below.")
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
                raise ValueError(f"--labels has {len(options.labels)} entries for {len(runs)} runs.")
            runs = dict(zip(options.labels, runs))
        return [plot_training_curves(runs, options.out, options.metrics, options.x)]
    if kind == "evaluation":
        path = Path(options.dir) / "summary.json"
        if not path.is_file():
            raise ValueError(f"{options.dir} has no summary.json; give a directory written by `bwarea evaluate`.")
        return plot_evaluation(json.loads(path.read_text()), options.out or Path(options.dir) / "plots")
    if kind == "compare":
        table = _load_structured(options.table)
        if not isinstance(table, Mapping):
            raise ValueError("--table must hold a mapping {model: {phase: value}}.")
        resolved = {model: {phase: _summary_metric(value, options.metric) if isinstance(value, str) else value
                            for phase, value in (row.items() if isinstance(row, Mapping) else [])}
                    for model, row in table.items()}
        return [plot_rl_comparison(resolved, options.out, metric=options.metric)]
    import bwarea

    lines = [line for line in Path(options.generation).read_text().splitlines() if line.strip()]
    if not 0 <= options.line < len(lines):
        raise ValueError(f"{options.generation} has {len(lines)} generation(s); --line {options.line} is out of range.")
    record = json.loads(lines[options.line])
    if "actions" not in record:
        raise ValueError(f"line {options.line} of {options.generation} has no 'actions': generate with a BWArea model "
                         "and --json true.")
    tokenizer = bwarea.load_tokenizer(options.model)
    tokens = [tokenizer.decode([token]) for token in record["tokens"]]
    num_actions = json.loads((Path(options.model) / "config.json").read_text()).get("num_actions", NUM_ACTIONS)
    return [plot_action_strip(tokens, record["actions"], options.out, num_actions=num_actions,
                              title=f"{record.get('prompt', '')!r} -> latent action per token")]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        written = _run(args.kind, args[args.kind])
    except (ValueError, FileNotFoundError, json.JSONDecodeError) as error:
        print(f"bwarea plot {args.kind}: {error}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
