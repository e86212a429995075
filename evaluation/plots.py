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
evaluation's summary.json. Bad input raises PlotError (a ValueError) naming what is wrong.

The `bwarea plot` command (cli/plot.py) draws the same from files: `bwarea plot curves|evaluation|compare|strip --help`.
Figures are built with matplotlib's object API (no pyplot), so plotting never changes a process's backend.
"""

from __future__ import annotations

import colorsys
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

import envs
from common.errors import UserError
from common.files import atomic_write

NUM_ACTIONS = 64


class PlotError(UserError, ValueError):
    """Data or a path that cannot be plotted."""


# ----------------------------------------------------------------------------------------------
# Shared helpers

def save_png(figure: Figure, out: str | os.PathLike) -> Path:
    """Write `figure` to `out` as PNG, atomically (a temporary sibling, then a rename)."""
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise PlotError(f"plots are PNG files; give an output path ending in .png, got {out}.")
    atomic_write(out, lambda temp: figure.savefig(temp, format="png", dpi=110, bbox_inches="tight"))
    return out


def _value(value: Any, where: str) -> tuple[float, float | None]:
    """(mean, stderr) from a number or a {"mean", "stderr"} mapping."""
    if isinstance(value, Mapping):
        if "mean" not in value:
            raise PlotError(f"{where}: a value is a number or a mapping with 'mean' (and 'stderr'), got keys "
                            f"{sorted(value)}.")
        mean, stderr = value["mean"], value.get("stderr")
    else:
        mean, stderr = value, None
    try:
        mean = float(mean)
        stderr = None if stderr is None else float(stderr)
    except (TypeError, ValueError):
        raise PlotError(f"{where}: expected a number, got {value!r}.") from None
    if not math.isfinite(mean) or (stderr is not None and not math.isfinite(stderr)):
        raise PlotError(f"{where}: values must be finite, got {value!r}.")
    return mean, stderr


def _is_leaf(value: Any) -> bool:
    return not isinstance(value, Mapping) or "mean" in value or "stderr" in value


def _series(data: Mapping[str, Any], what: str) -> dict[str, dict[str, tuple[float, float | None]]]:
    """{label: {category: value}} from either {category: value} (one series) or {label: {category: value}}."""
    if not isinstance(data, Mapping) or not data:
        raise PlotError(f"{what}: give a non-empty mapping of {{name: value}} or {{label: {{name: value}}}}.")
    nested = {key: value for key, value in data.items()} if not all(_is_leaf(v) for v in data.values()) else {"": data}
    series = {}
    for label, values in nested.items():
        if not isinstance(values, Mapping) or not values or not all(_is_leaf(v) for v in values.values()):
            raise PlotError(f"{what}: series {label!r} must be a non-empty mapping of names to values.")
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
    from common.logs import read_metrics

    if isinstance(runs, (str, os.PathLike)):
        runs = [runs]
    labelled = dict(runs) if isinstance(runs, Mapping) else {Path(run).name: run for run in runs}
    if not labelled:
        raise PlotError("plot_training_curves needs at least one run directory.")
    rows_by_run = {}
    for label, run in labelled.items():
        rows = read_metrics(run)
        if not rows:
            raise PlotError(f"run {run} has no CSV logs under logs/csv/version_*/metrics.csv; give a run directory "
                            "written by `bwarea pretrain` or `bwarea finetune`.")
        rows_by_run[label] = rows
    available = sorted({key for rows in rows_by_run.values() for row in rows for key in row} - {x, "epoch"})
    if not metrics:
        metrics = [key for key in available if any(word in key for word in ("loss", "reward", "accuracy"))][:6]
        if not metrics:
            raise PlotError(f"no loss, reward or accuracy columns in the logs; choose metrics from: {', '.join(available)}.")
    unknown = [metric for metric in metrics if metric not in available]
    if unknown:
        raise PlotError(f"metric(s) {', '.join(unknown)} are not in the logs; available: {', '.join(available)}.")
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

def plot_breakdown(values: Mapping[str, Any], out: str | os.PathLike, title: str, xlabel: str,
                   categories: Sequence[str] | None = None, limit: float | None = 100.0) -> Path:
    """Horizontal bars, one per category (in `categories` order, default the data's); {label: values} draws several
    agents side by side."""
    series = _series(values, "plot_breakdown")
    categories = list(categories or dict.fromkeys(c for v in series.values() for c in v))
    figure = Figure(figsize=(7.5, max(3.0, 0.27 * len(categories) + 0.6)))
    axes = figure.add_subplot()
    _grouped_bars(axes, categories, series, horizontal=True)
    if limit is not None:
        axes.set_xlim(0, limit)
    axes.set_xlabel(xlabel)
    axes.set_title(title)
    axes.grid(axis="x", alpha=0.3)
    return save_png(figure, out)


def plot_per_environment(values: Mapping[str, Any], out: str | os.PathLike, title: str, ylabel: str,
                         aggregate: Any = None, aggregate_label: str = "macro average") -> Path:
    """Vertical bars, one per environment (task), with an aggregate over them as a dashed line when given."""
    series = _series(values, "plot_per_environment")
    names = sorted({name for v in series.values() for name in v})
    figure = Figure(figsize=(max(5.0, 0.45 * len(names) * max(1, len(series)) + 2), 4.5))
    axes = figure.add_subplot()
    _grouped_bars(axes, names, series)
    if aggregate is not None:
        mean, _ = _value(aggregate, f"{title}: {aggregate_label}")
        axes.axhline(mean, linestyle="--", color="black", linewidth=1, label=f"{aggregate_label} {mean:.1f}%")
        axes.legend()
    axes.set_ylim(0, 100)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(axis="y", alpha=0.3)
    return save_png(figure, out)


def _check_percentages(values: Mapping[str, Any], what: str, valid: Sequence[str] | None = None, kind: str = "") -> None:
    for series in _series(values, what).values():
        unknown = sorted(set(series) - set(valid)) if valid is not None else []
        if unknown:
            raise PlotError(f"unknown {kind}(s) {', '.join(unknown)}; valid: {', '.join(valid)}.")
        if any(not 0.0 <= mean <= 100.0 for mean, _ in series.values()):
            raise PlotError(f"{what}: values are percentages between 0 and 100.")


def plot_crafter_achievements(success_rates: Mapping[str, Any], out: str | os.PathLike, title: str | None = None) -> Path:
    """Bars of the 22 achievements' success rates (% of episodes); {label: rates} draws several agents side by side."""
    from envs.crafter import ACHIEVEMENTS

    _check_percentages(success_rates, "Crafter success rates", ACHIEVEMENTS, "Crafter achievement")
    return plot_breakdown(success_rates, out, title or "Crafter: success rate per achievement",
                          "success rate (% of episodes)", categories=ACHIEVEMENTS)


def plot_bbh_tasks(accuracy: Mapping[str, Any], out: str | os.PathLike, macro: Any = None,
                   title: str | None = None) -> Path:
    """Bars of BIG-Bench Hard accuracy (%) per task, with the macro average as a dashed line when given."""
    _check_percentages(accuracy, "BIG-Bench Hard accuracies")
    return plot_per_environment(accuracy, out, title or "BIG-Bench Hard: accuracy per task", "accuracy (%)", macro)


def plot_rl_comparison(table: Mapping[str, Mapping[str, Any]], out: str | os.PathLike, metric: str = "score",
                       title: str | None = None) -> Path:
    """Grouped bars: for each model (e.g. BWArea, AR), one bar per phase (e.g. before / after RL fine-tuning)."""
    if not isinstance(table, Mapping) or not table:
        raise PlotError("plot_rl_comparison needs {model: {phase: value}}, e.g. "
                        "{'BWArea': {'before': 20.0, 'after': 45.0}, 'AR': {'before': 22.0, 'after': 30.0}}.")
    phases: list[str] = []
    for model, row in table.items():
        if not isinstance(row, Mapping) or not row or not all(_is_leaf(v) for v in row.values()):
            raise PlotError(f"plot_rl_comparison: the row of {model!r} must map phases (before, after, ...) to values.")
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
            raise PlotError(f"{what}: actions are integers 0..{num_actions - 1}, got {action!r}.")
        if not 0 <= int(action) < num_actions:
            raise PlotError(f"{what}: action {int(action)} is outside 0..{num_actions - 1} (num_actions={num_actions}).")
        checked.append(int(action))
    return checked


def plot_action_usage(actions: Sequence[int] | Mapping[int | str, int], out: str | os.PathLike,
                      num_actions: int = NUM_ACTIONS, title: str | None = None) -> Path:
    """Histogram of how often each latent action was chosen: a list of action ids, or {action: count}."""
    if num_actions < 1:
        raise PlotError(f"num_actions must be at least 1, got {num_actions}.")
    counts = [0] * num_actions
    if isinstance(actions, Mapping):
        for action, count in actions.items():
            (index,) = _check_actions([int(action)], num_actions, "plot_action_usage")
            if int(count) < 0:
                raise PlotError(f"plot_action_usage: count of action {index} is negative ({count}).")
            counts[index] += int(count)
    else:
        for index in _check_actions(list(actions), num_actions, "plot_action_usage"):
            counts[index] += 1
    total = sum(counts)
    if total == 0:
        raise PlotError("plot_action_usage: no actions to count; give the latent actions of generated tokens.")
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
        raise PlotError(f"plot_action_strip needs one action per token; got {len(tokens)} tokens and {len(actions)} actions.")
    if not tokens:
        raise PlotError("plot_action_strip: no tokens to draw.")
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
    """The plots of an evaluation summary (evaluation.run), as each environment family declares them: its
    breakdown per environment (Crafter: success rate per achievement), its metric per environment with the
    family's aggregate (BIG-Bench Hard: accuracy per task and the macro average); and latent-action usage.
    Returns the files written."""
    directory = Path(directory)
    written = []
    environments = summary.get("environments")
    if not isinstance(environments, Mapping):
        raise PlotError("plot_evaluation needs an evaluation summary (summary.json of `bwarea evaluate`).")
    agent = summary.get("settings", {}).get("agent", {}).get("source", "agent")
    by_family: dict[str, list[str]] = {}
    for name, entry in environments.items():
        family = envs.family(name)
        by_family.setdefault(family.name, []).append(name)
        breakdown = family.breakdown
        if breakdown is not None and entry.get(breakdown.key):
            file = directory / f"{name.replace('/', '_')}_{breakdown.row}s.png"
            written.append(plot_breakdown(entry[breakdown.key], file, f"{name}: {breakdown.title.lower()} ({agent})",
                                          breakdown.value))
    for family_name, names in by_family.items():
        family = envs.family(family_name)
        if family.aggregate is None:
            continue
        metric = family.aggregate.metric
        values = {family.label(name): environments[name]["metrics"][metric] for name in names
                  if environments[name].get("metrics", {}).get(metric)}
        if values:
            written.append(plot_per_environment(
                values, directory / f"{family.name}_{family.row_label}s.png",
                f"{family.title}: {metric} per {family.row_label} ({agent})", metric,
                summary.get("aggregates", {}).get(family.aggregate.name), family.aggregate.name))
    latent = summary.get("latent_actions") or {}
    if latent:
        num_actions = max(NUM_ACTIONS, max(int(a) for a in latent) + 1)
        written.append(plot_action_usage({int(a): c for a, c in latent.items()}, directory / "latent_actions.png",
                                         num_actions=num_actions))
    return written
