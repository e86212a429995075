"""Learning curves of the RL objectives at equal numbers of sampled episodes (issue 14 §6).

Every objective fine-tunes the quickstart's two models (`bwarea quickstart`, default runs/qs-avx2): BWArea
(stage 2; RL trains the cognitive policy only) and the equal-size AR baseline (RL trains all weights), on
TextWorld (the quickstart's preset and games) and BIG-Bench Hard boolean_expressions, for several RL seeds.
All objectives get the same number of sampled episodes per update and the same updates, so a point on a
curve is an equal number of sampled episodes for every line; ReMax and PM-RLHF also play one greedy episode
per task as their baseline, which the table reports beside the sampled ones (those are not samples: the
policy's argmax, used only to centre the reward).

One curve point = held-out success (test split, greedy play) of the model fine-tuned for u updates, for u in
`--eval_points`. Each point is its own fine-tune from the pretrained model, named by its update count
(finetune/<task>/<model>-<objective>-seed<s>/updates-<u>): the tasks and sampling of update u are pure
functions of (seed, u) and the optimizer has no schedule, so a u-update run is exactly the first u updates of
any longer run with the same seed (a finished run cannot be extended: `bwarea finetune --ckpt_path last` on a
finished run stops at once). Hence the default points halve from `--updates` down (3, 6, 12, 24: 45 updates
per curve instead of 24, where evenly spaced points would cost 60).

Processes. Each (task, model, objective, seed) runs in a fresh process, which trains its longest run first:
the peak memory that run logs (`finetune/peak_memory_mb`, the process's peak resident set) is then its own,
not inherited from earlier runs; this script's own process imports no torch before the reports. Seconds per
update (`finetune/seconds_per_update`: rollouts, the update and its metrics) and peak memory come from the
longest runs' CSV logs. A failed job is reported and the others go on.

Resumable: fine-tune runs are reused (training.experiment.finetune; a run with other settings stops its job
with an error naming them), and every evaluation is a JSON file written atomically with the settings it was
made with, reused while they match. Finished runs' checkpoints are deleted once they are evaluated (a
finished run never needs them: it is reused through its export). Output under --out: results.json,
results.md (printed too), curves_<task>.png, evaluation/, reference/, finetune/, logs/ (one per job).

    python benchmarks/bench_objectives.py                                   # the full measurement (hours)
    python benchmarks/bench_objectives.py --smoke                           # every step end to end: ~40 min for
                                                                            # all 28 curves on a busy 2-core box
    python benchmarks/bench_objectives.py --smoke --objectives remax rloo --tasks textworld --models ar  # minutes
    python benchmarks/bench_objectives.py --objectives remax ppo --tasks textworld --seeds 0 1 2
    python benchmarks/bench_objectives.py --report_only                     # tables and plots from what exists
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


@dataclass
class ObjectiveSetting:
    """How one objective plays and learns; everything else is the shared budget.

    group_size: sampled episodes per task (RolloutConfig.group_size; the group baselines need >= 2).
    options: objective_options of training.objectives (empty: the objective's defaults)."""

    group_size: int = 1
    options: dict[str, Any] = field(default_factory=dict)


OBJECTIVES: dict[str, ObjectiveSetting] = {
    "remax": ObjectiveSetting(group_size=1),          # + one greedy episode per task (its baseline)
    "rloo": ObjectiveSetting(group_size=4),
    "grpo": ObjectiveSetting(group_size=4),
    "dr_grpo": ObjectiveSetting(group_size=4),
    "reinforce_pp": ObjectiveSetting(group_size=1),
    "ppo": ObjectiveSetting(group_size=1),
    "pm_rlhf": ObjectiveSetting(group_size=1),        # greedy baseline by default, as ReMax
}
# model -> (label, stage directory of the quickstart's pretraining)
MODELS = {"bwarea": ("BWArea (RL: policy only)", "policy"), "ar": ("AR baseline (RL: all weights)", "ar")}
TASKS = ("textworld", "bbh")
BBH_TASK = "bbh/boolean_expressions"
BBH_NOTE = ("The quickstart's models were pretrained on TextWorld transcripts only: the BIG-Bench Hard curves start "
            "from models that never saw BIG-Bench Hard text (or its answer format).")
# the budget of the full measurement, and of --smoke (every step end to end in minutes); explicit options win
FULL = {"updates": 24, "eval_points": None, "episodes_per_update": 16, "seeds": [0, 1, 2], "test_games": None,
        "bbh_test_items": 100, "bbh_train_items": 100, "out": "runs/bench-objectives"}
SMOKE = {"updates": 2, "eval_points": [1, 2], "episodes_per_update": 4, "seeds": [0], "test_games": 4,
         "bbh_test_items": 8, "bbh_train_items": 8, "out": "runs/bench-objectives-smoke"}
RANDOM_PLAYS = 16  # random-agent plays per held-out episode (training.experiment.random_agent_evaluation)


@dataclass
class Task:
    """One environment of the benchmark: training pool, held-out episodes and how episodes are played
    (`rollout`: RolloutConfig fields, kept as a dict so that this process need not import torch)."""

    env: str
    task_pool: int
    test_episodes: int
    rollout: dict[str, Any]
    options: dict[str, Any]

    @property
    def slug(self) -> str:
        return self.env.replace("/", "-")

    def test_options(self) -> dict[str, Any]:
        return {**self.options, "split": "test"}


@dataclass
class Settings:
    """Everything a job depends on, resolved from the command line and the quickstart's summary.json."""

    out: Path
    quickstart: Path
    tasks: dict[str, Task]
    models: list[str]
    objectives: list[str]
    seeds: list[int]
    updates: int
    eval_points: list[int]
    episodes_per_update: int
    learning_rate: float
    precision: str

    def export(self, model: str) -> Path:
        return export_of(self.quickstart, model)

    def run_root(self, task: Task, model: str, objective: str, seed: int) -> Path:
        return self.out / "finetune" / task.slug / f"{model}-{objective}-seed{seed}"

    def evaluation_file(self, task: Task, model: str, objective: str | None = None, seed: int = 0, updates: int = 0) -> Path:
        name = f"{model}-pretrained" if objective is None else f"{model}-{objective}-seed{seed}-{run_name(updates)}"
        return self.out / "evaluation" / task.slug / f"{name}.json"

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self), default=str))


def export_of(quickstart: Path, model: str) -> Path:
    return quickstart / "pretrain" / MODELS[model][1] / "export"


def run_name(updates: int) -> str:
    return f"updates-{updates:04d}"


def evaluation_points(updates: int, points: Sequence[int] | None = None) -> list[int]:
    """The update counts a curve is evaluated at, ascending and ending at `updates`. Default: halving from
    `updates` (24 -> 3, 6, 12, 24), which costs under twice the longest run because each point is its own run."""
    if updates < 1:
        raise ValueError(f"--updates must be at least 1, got {updates}.")
    if points is None:
        points = {updates // 2 ** k for k in range(4)} - {0}
    chosen = sorted(set(points))
    if chosen[0] < 1 or chosen[-1] != updates:
        raise ValueError(f"--eval_points {list(points)} must lie in 1..{updates} and include --updates ({updates}).")
    return chosen


def check_objectives(objectives: Sequence[str], episodes_per_update: int) -> None:
    """Known objectives whose groups divide the batch, so every objective samples the same episodes per update."""
    unknown = [name for name in objectives if name not in OBJECTIVES]
    if unknown:
        raise ValueError(f"--objectives {unknown} are not in this benchmark's table; choose from {', '.join(OBJECTIVES)}.")
    for name in objectives:
        if episodes_per_update % OBJECTIVES[name].group_size:
            raise ValueError(f"--episodes_per_update {episodes_per_update} is not a multiple of {name}'s group size "
                             f"{OBJECTIVES[name].group_size}; choose a multiple of every group size in the table.")


def resolve(args: argparse.Namespace) -> Settings:
    """Settings from the options (unset budget options from --smoke or the full preset) and the quickstart run."""
    preset = SMOKE if args.smoke else FULL
    budget = {key: preset[key] if getattr(args, key) is None else getattr(args, key) for key in preset}
    quickstart = Path(args.quickstart)
    summary_file = quickstart / "summary.json"
    if not summary_file.is_file():
        raise ValueError(f"--quickstart {quickstart} holds no summary.json; run `bwarea quickstart --out {quickstart}` "
                         "first, or point --quickstart at a finished quickstart run.")
    config = json.loads(summary_file.read_text())["config"]
    rl = config["finetune"]
    check_objectives(args.objectives, budget["episodes_per_update"])
    tasks = {}
    if "textworld" in args.tasks:
        test = min(budget["test_games"] or config["test_games"], config["test_games"])  # the games the quickstart made
        tasks["textworld"] = Task(f"textworld/{config['textworld_preset']}", min(rl["task_pool"], config["train_games"]),
                                  test, config["evaluation"], {"cache_dir": config["textworld_cache"]})
    if "bbh" in args.tasks:
        tasks["bbh"] = Task(BBH_TASK, budget["bbh_train_items"], budget["bbh_test_items"],
                            {"max_turns": 1, "max_new_tokens": args.bbh_max_new_tokens, "prompt_format": "observation"},
                            {"data_dir": args.bbh_dir})
    for model in args.models:
        export = export_of(quickstart, model)
        if not (export / "training_info.json").is_file():
            raise ValueError(f"--quickstart {quickstart} has no finished {model} model at {export}; finish that quickstart "
                             "run (bwarea quickstart resumes it) or choose another.")
    return Settings(out=Path(budget["out"] if args.out is None else args.out), quickstart=quickstart, tasks=tasks,
                    models=list(args.models), objectives=list(args.objectives), seeds=list(budget["seeds"]),
                    updates=budget["updates"], eval_points=evaluation_points(budget["updates"], budget["eval_points"]),
                    episodes_per_update=budget["episodes_per_update"],
                    learning_rate=rl["learning_rate"] if args.learning_rate is None else args.learning_rate,
                    precision=rl["precision"] if args.precision is None else args.precision)


# ----------------------------------------------------------------------------------------------
# Records: JSON files written whole, reused while their plan matches

def write_json(path: Path, data: Any) -> None:
    from common.files import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=1) + "\n")


def read_record(path: Path, plan: Any = None) -> dict[str, Any] | None:
    """The record at `path` if it exists and (when `plan` is given) was made with that plan."""
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    return record if plan is None or record.get("plan") == plan else None


# ----------------------------------------------------------------------------------------------
# Jobs (each in its own process)

def evaluate_into(path: Path, export: Path, task: Task, plan: dict[str, Any], extra: dict[str, Any]) -> None:
    """Held-out greedy evaluation of `export` on `task`, recorded at `path`."""
    from training.experiment import evaluate_policy
    from training.settings import RolloutConfig

    evaluation, _ = evaluate_policy(export, task.env, range(task.test_episodes), task.test_options(),
                                    RolloutConfig(**task.rollout))
    write_json(path, {"plan": plan, "evaluation": evaluation.to_dict(), **extra})


def evaluation_plan(task: Task) -> dict[str, Any]:
    options = {key: value for key, value in task.test_options().items() if key != "cache_dir"}
    return {"env": task.env, "episodes": task.test_episodes, "rollout": task.rollout, "options": options}


def reference_job(settings: Settings, task: Task) -> None:
    """The frame of a task's plot: the random agent, the walkthrough ceiling (TextWorld) and each pretrained model."""
    from evaluation.run import evaluate
    from training.experiment import random_agent_evaluation

    for model in settings.models:
        export = settings.export(model)
        info = json.loads((export / "training_info.json").read_text())
        plan = {"export": str(export.resolve()), "training_info": info, "evaluation": evaluation_plan(task)}
        path = settings.evaluation_file(task, model)
        if read_record(path, plan) is None:
            evaluate_into(path, export, task, plan, {"updates": 0, "sampled_episodes": 0})
    path = settings.out / "reference" / f"{task.slug}.json"
    plan = {**evaluation_plan(task), "random_plays": RANDOM_PLAYS}
    if read_record(path, plan) is not None:
        return
    random = random_agent_evaluation(task.env, range(task.test_episodes), task.test_options(), task.rollout["max_turns"],
                                     samples=RANDOM_PLAYS)
    walkthrough = None
    if task.env.startswith("textworld/"):
        summary = evaluate("walkthrough", [task.env], episodes=task.test_episodes, seeds=[0],
                           out_dir=settings.out / "reference" / f"walkthrough-{task.slug}",
                           max_steps=task.rollout["max_turns"], textworld_cache_dir=task.options.get("cache_dir"),
                           traces="none", plots=False, progress=False, overwrite=True)
        walkthrough = summary["environments"][task.env]["metrics"]["textworld_success_rate"]
    write_json(path, {"plan": plan, "random": random.success_rate.to_dict(), "walkthrough": walkthrough})


def run_job(settings: Settings, task: Task, model: str, objective: str, seed: int) -> None:
    """The fine-tunes of one curve, longest first (its memory log is this fresh process's), each evaluated once."""
    from training.experiment import FinetuneBudget, finetune
    from training.settings import RolloutConfig
    from training.runs import RunDirectory

    setting = OBJECTIVES[objective]
    # group_size enters only where it differs from 1, so these runs do not depend on when RolloutConfig gained it
    group = {"group_size": setting.group_size} if setting.group_size != 1 else {}
    root = settings.run_root(task, model, objective, seed)
    for updates in sorted(settings.eval_points, reverse=True):
        budget = FinetuneBudget(env=task.env, env_options=task.options, task_pool=task.task_pool,
                                episodes_per_update=settings.episodes_per_update, updates=updates, objective=objective,
                                objective_options=setting.options, rollout=RolloutConfig(**task.rollout, **group),
                                learning_rate=settings.learning_rate, precision=settings.precision, progress=False,
                                seed=seed)
        tuned = finetune(settings.export(model), root, run_name(updates), budget)  # reused when finished
        run = RunDirectory(root / run_name(updates))
        plan = {"run": json.loads((run.path / "plan.json").read_text()), "evaluation": evaluation_plan(task)}
        path = settings.evaluation_file(task, model, objective, seed, updates)
        if read_record(path, plan) is None:
            evaluate_into(path, tuned, task, plan, {"updates": updates, "run": str(run.path),
                                                    "sampled_episodes": updates * settings.episodes_per_update})
        shutil.rmtree(run.checkpoints, ignore_errors=True)  # finished and evaluated: reused through its export


def run_in_process(settings: Settings, job: list) -> None:
    kind, key, *rest = job
    task = settings.tasks[key]
    if kind == "reference":
        reference_job(settings, task)
    else:
        model, objective, seed = rest
        run_job(settings, task, model, objective, int(seed))


def jobs(settings: Settings) -> list[list]:
    """The references of every task first (quick, and a bad setting shows early), then one job per curve."""
    listed: list[list] = [["reference", key] for key in settings.tasks]
    listed += [["run", key, model, objective, seed] for key in settings.tasks for model in settings.models
               for objective in settings.objectives for seed in settings.seeds]
    return listed


def job_label(job: list) -> str:
    return " ".join(str(part) for part in job)


def run_jobs(settings: Settings, argv: list[str]) -> list[dict[str, str]]:
    """Each job in a fresh process of this script (output in logs/); returns the failures."""
    failures = []
    listed = jobs(settings)
    for index, job in enumerate(listed, 1):
        log = settings.out / "logs" / f"{job_label(job).replace(' ', '_').replace('/', '-')}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        with log.open("a") as handle:
            handle.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {job_label(job)}\n")
            handle.flush()
            code = subprocess.call([sys.executable, str(Path(__file__).resolve()), *argv, "--job", json.dumps(job)],
                                   stdout=handle, stderr=subprocess.STDOUT, cwd=REPO)
        seconds = time.perf_counter() - started
        if code == 0:
            print(f"[{index}/{len(listed)}] {job_label(job)}: done in {seconds:.0f} s", flush=True)
        else:
            lines = [line for line in log.read_text().splitlines() if line.strip()]
            failures.append({"job": job_label(job), "log": str(log), "error": lines[-1] if lines else f"exit code {code}"})
            print(f"[{index}/{len(listed)}] {job_label(job)}: FAILED after {seconds:.0f} s: {failures[-1]['error']} "
                  f"(log: {log})", flush=True)
    return failures


# ----------------------------------------------------------------------------------------------
# Results: curves, costs, table, plots (pure functions of the records and logs)

def seed_estimate(values: Sequence[float]) -> dict[str, Any]:
    """Mean and standard error over RL seeds (None for one seed)."""
    from common.stats import estimate

    return estimate(values, "%").to_dict()


def curve(success_by_seed: Mapping[int, Mapping[int, float]], episodes_per_update: int) -> list[dict[str, Any]]:
    """Curve points from {seed: {updates: held-out success %}}: per update count the mean ± SE over the seeds
    that reached it (n says how many)."""
    counts = sorted({updates for points in success_by_seed.values() for updates in points})
    return [{"updates": updates, "sampled_episodes": updates * episodes_per_update,
             "success": seed_estimate([points[updates] for points in success_by_seed.values() if updates in points]),
             "per_seed": {str(seed): points[updates] for seed, points in success_by_seed.items() if updates in points}}
            for updates in counts]


def run_costs(runs: Sequence[Sequence[Mapping[str, float]]], episodes_per_update: int, group_size: int) -> dict[str, Any]:
    """Costs from the CSV rows of a curve's longest runs (one list per seed): median seconds per update, peak
    resident memory of the fine-tuning process, sampled and greedy episodes per run (a greedy baseline plays
    one greedy episode per group, seen as the `finetune/reward/greedy` column)."""
    rows = [row for run in runs for row in run if "finetune/seconds_per_update" in row]
    if not rows:
        return {}
    greedy = [sum("finetune/reward/greedy" in row for row in run) * (episodes_per_update // group_size) for run in runs]
    return {"seconds_per_update": statistics.median(row["finetune/seconds_per_update"] for row in rows),
            "peak_memory_mb": max(row["finetune/peak_memory_mb"] for row in rows),
            "updates_per_run": max(sum("finetune/seconds_per_update" in row for row in run) for run in runs),
            "greedy_episodes_per_run": max(greedy)}


def table_row(*cells: Any) -> str:
    return "| " + " | ".join(str(value) for value in cells) + " |"


def cell(value: Mapping[str, Any] | None) -> str:
    if value is None:
        return "–"
    error = "n/a" if value.get("stderr") is None else f"{value['stderr']:.1f}"
    return f"{value['mean']:.1f} ± {error}"


def curve_entry(settings: Settings, task: Task, model: str, objective: str) -> dict[str, Any] | None:
    """One line of a plot: its points over the seeds evaluated so far, and the costs logged by each seed's longest run."""
    from common.logs import read_metrics

    success_by_seed, longest = {}, []
    for seed in settings.seeds:
        records = {updates: read_record(settings.evaluation_file(task, model, objective, seed, updates))
                   for updates in settings.eval_points}
        points = {updates: record["evaluation"]["success_rate"]["mean"] for updates, record in records.items() if record}
        if points:
            success_by_seed[seed] = points
            longest.append(read_metrics(settings.run_root(task, model, objective, seed) / run_name(max(points))))
    if not success_by_seed:
        return None
    return {"points": curve(success_by_seed, settings.episodes_per_update),
            "costs": run_costs(longest, settings.episodes_per_update, OBJECTIVES[objective].group_size)}


def collect(settings: Settings, failures: Sequence[Mapping[str, str]]) -> dict[str, Any]:
    """results.json: per task the references, the pretrained models and a curve with costs per (model, objective)."""
    tasks = {}
    for key, task in settings.tasks.items():
        reference = read_record(settings.out / "reference" / f"{task.slug}.json") or {}
        pretrained = {model: (read_record(settings.evaluation_file(task, model)) or {}).get("evaluation", {}).get("success_rate")
                      for model in settings.models}
        curves: dict[str, dict[str, Any]] = {}
        for model in settings.models:
            for objective in settings.objectives:
                entry = curve_entry(settings, task, model, objective)
                if entry is not None:
                    curves.setdefault(model, {})[objective] = entry
        tasks[key] = {"env": task.env, "random": reference.get("random"), "walkthrough": reference.get("walkthrough"),
                      "pretrained": pretrained, "curves": curves}
    return {"settings": settings.to_dict(), "machine": machine(), "tasks": tasks, "failures": list(failures)}


def machine() -> str:
    from training.hardware import probe, usable_cores

    return (f"{probe().cpu_name}, {usable_cores()} usable cores, shared with other jobs (timings are indicative); "
            "fine-tunes one at a time")


def markdown(results: Mapping[str, Any]) -> str:
    """The tables of results.md: per task, final held-out success per objective and model with the costs."""
    settings = results["settings"]
    seeds = len(settings["seeds"])
    lines = ["# RL objectives at equal sampled episodes", "",
             f"Machine: {results['machine']}. Models: {settings['quickstart']} (BWArea: RL trains the cognitive policy; "
             f"AR baseline: all weights). Budget per run: {settings['updates']} updates x {settings['episodes_per_update']} "
             f"sampled episodes, learning rate {settings['learning_rate']}, precision {settings['precision']}; curves "
             f"evaluated at {settings['eval_points']} updates; {seeds} RL seed(s) {settings['seeds']}.", "",
             "Held-out success % (test split, greedy): after RL the mean ± standard error over RL seeds of each seed's "
             "success (n/a for one seed); before RL, the pretrained model ± its standard error over held-out episodes. "
             "Seconds per update: median over the longest runs' updates (rollouts + update); peak memory: the fine-tuning "
             "process's peak resident set (MiB, whole process: runtime, models, reference, optimizer, activations). "
             "Greedy episodes are the baseline's argmax plays, not samples.", ""]
    for key, task in results["tasks"].items():
        lines += [f"## {task['env']}", ""]
        if key == "bbh":
            lines += [BBH_NOTE, ""]
        lines += [table_row("model", "objective", "group size", "success % before RL", "success % after RL", "seeds",
                            "sampled episodes", "greedy episodes", "s / update", "peak memory MiB"),
                  "|---|---|---:|---|---|---:|---:|---:|---:|---:|"]
        for model, by_objective in task["curves"].items():
            for objective, entry in by_objective.items():
                final, costs = entry["points"][-1], entry["costs"]
                lines.append(table_row(
                    MODELS[model][0], objective, OBJECTIVES[objective].group_size, cell(task["pretrained"].get(model)),
                    cell(final["success"]), final["success"]["n"], final["sampled_episodes"],
                    costs.get("greedy_episodes_per_run", "–"),
                    f"{costs['seconds_per_update']:.2f}" if costs else "–", f"{costs['peak_memory_mb']:.0f}" if costs else "–"))
        answers = "answers" if key == "bbh" else "commands"
        references = [(f"Random agent (uniform over the admissible {answers}; {RANDOM_PLAYS} plays per episode)", task["random"]),
                      ("Walkthrough (ceiling)", task["walkthrough"])]
        lines += [table_row(label, "–", "–", cell(value), cell(value), *["–"] * 5)
                  for label, value in references if value is not None]
        lines.append("")
    if results["failures"]:
        lines += ["Failed jobs (their points are missing above):", ""]
        lines += [f"- {failure['job']}: {failure['error']} (log: {failure['log']})" for failure in results["failures"]]
        lines.append("")
    return "\n".join(lines)


def plot_curves(task: Mapping[str, Any], out: Path) -> Path:
    """Held-out success against sampled episodes: one line per (objective, model) from the pretrained model at 0,
    a band of ± one standard error over seeds, the random agent and the walkthrough ceiling as horizontal lines."""
    from matplotlib.figure import Figure

    from evaluation.plots import save_png

    figure = Figure(figsize=(8.0, 5.0))
    axes = figure.add_subplot(1, 1, 1)
    colours = {objective: f"C{index}" for index, objective in enumerate(OBJECTIVES)}
    styles = {"bwarea": ("-", "o"), "ar": ("--", "s")}  # (line, marker)
    for model, by_objective in task["curves"].items():
        start = task["pretrained"].get(model)
        for objective, entry in by_objective.items():
            points = entry["points"]
            x = ([0] if start else []) + [point["sampled_episodes"] for point in points]
            mean = ([start["mean"]] if start else []) + [point["success"]["mean"] for point in points]
            error = ([0.0] if start else []) + [point["success"]["stderr"] or 0.0 for point in points]
            line, marker = styles[model]
            axes.plot(x, mean, line, color=colours[objective], marker=marker, markersize=3, linewidth=1.3,
                      label=f"{objective}, {MODELS[model][0].split(' (')[0]}")
            axes.fill_between(x, [m - e for m, e in zip(mean, error)], [m + e for m, e in zip(mean, error)],
                              color=colours[objective], alpha=0.12, linewidth=0)
    for name, reference, style in (("random agent", task["random"], ":"), ("walkthrough", task["walkthrough"], "-.")):
        if reference is not None:
            colour = "grey" if name == "random agent" else "black"
            axes.axhline(reference["mean"], color=colour, linestyle=style, linewidth=1.0, label=name)
            spread = reference.get("stderr") or 0.0
            axes.axhspan(reference["mean"] - spread, reference["mean"] + spread, color=colour, alpha=0.08, linewidth=0)
    axes.set_xlabel("sampled episodes (0: the pretrained model)")
    axes.set_ylabel("held-out success % (greedy)")
    title = f"{task['env']}: solid BWArea (RL on the policy), dashed AR baseline (all weights); bands ± 1 SE over seeds"
    if task["env"].startswith("bbh/"):
        title += "\n(both models were pretrained on TextWorld text only: they never saw BIG-Bench Hard before RL)"
    axes.set_title(title, fontsize=9)
    axes.set_ylim(-2, 102)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, ncol=2, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return save_png(figure, out)


def report(settings: Settings, failures: Sequence[Mapping[str, str]]) -> str:
    results = collect(settings, failures)
    write_json(settings.out / "results.json", results)
    text = markdown(results)
    plots = [plot_curves(task, settings.out / f"curves_{settings.tasks[key].slug}.png")
             for key, task in results["tasks"].items() if task["curves"] or task["random"]]
    text += "\nPlots: " + ", ".join(path.name for path in plots) + "\n"
    from common.files import atomic_write_text

    atomic_write_text(settings.out / "results.md", text)
    return text


# ----------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help=f"a tiny budget, every step end to end: {SMOKE}")
    parser.add_argument("--out", default=None, help=f"output directory (default {FULL['out']}; --smoke: {SMOKE['out']})")
    parser.add_argument("--quickstart", default="runs/qs-avx2",
                        help="a finished `bwarea quickstart` run: the models, games and RL settings")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--objectives", nargs="+", default=list(OBJECTIVES), help=f"from: {', '.join(OBJECTIVES)}")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help=f"RL seeds (default {FULL['seeds']})")
    parser.add_argument("--updates", type=int, default=None, help=f"updates of the longest run (default {FULL['updates']})")
    parser.add_argument("--eval_points", type=int, nargs="+", default=None,
                        help="update counts evaluated (default: halving from --updates, e.g. 3 6 12 24)")
    parser.add_argument("--episodes_per_update", type=int, default=None,
                        help="sampled episodes per update, a multiple of every group size "
                             f"(default {FULL['episodes_per_update']})")
    parser.add_argument("--learning_rate", type=float, default=None, help="default: the quickstart's RL learning rate")
    parser.add_argument("--precision", default=None, help="RL precision (Lightning); default: the quickstart's")
    parser.add_argument("--test_games", type=int, default=None,
                        help="held-out TextWorld games (default and most: the quickstart's test games)")
    parser.add_argument("--bbh_dir", default=str(REPO.parent / "shared" / "data" / "bbh"))
    parser.add_argument("--bbh_train_items", type=int, default=None, help=f"BBH RL pool (default {FULL['bbh_train_items']})")
    parser.add_argument("--bbh_test_items", type=int, default=None, help=f"BBH held-out items (default {FULL['bbh_test_items']})")
    parser.add_argument("--bbh_max_new_tokens", type=int, default=10)
    parser.add_argument("--report_only", action="store_true", help="only assemble results.md, results.json and plots")
    parser.add_argument("--job", default=None, help=argparse.SUPPRESS)  # one job, in the process this script starts
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    try:
        settings = resolve(args)
    except ValueError as error:
        print(f"bench_objectives: {error}", file=sys.stderr)
        return 2
    if args.job is not None:
        run_in_process(settings, json.loads(args.job))
        return 0
    failures = []
    if not args.report_only:
        started = time.perf_counter()
        failures = run_jobs(settings, argv)
        print(f"jobs finished in {(time.perf_counter() - started) / 60:.1f} min", flush=True)
    print(report(settings, failures))
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
