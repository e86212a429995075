"""The steps of `bwarea quickstart` (cli/quickstart.py parses its options; this module runs them)."""

from __future__ import annotations

import json
import math
import platform
import shutil
import time
from collections import Counter
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from bwarea import load_tokenizer
from cli.quickstart import MODELS, QuickstartConfig
from common.files import atomic_write_text
from common.jsonable import jsonable
from common.stats import Estimate
from training.experiment import (PolicyEvaluation, build_corpus, ensure_games, evaluate_policy, finetune, model_costs,
                                 pretrain_pair, random_agent_evaluation)
from training.hardware import configure_threads, probe
from training.rollout import Episode
from training.runs import read_training_info


def _step(number: int, total: int, text: str) -> None:
    print(f"\n[{number}/{total}] {text}", flush=True)


def _evaluate(export: Path, config: QuickstartConfig, path: Path) -> tuple[PolicyEvaluation, list[Episode]]:
    """Held-out evaluation; the result and its episodes (transcripts, latent actions) are saved as JSON to inspect."""
    env = f"textworld/{config.textworld_preset}"
    options = {"split": "test", "cache_dir": config.textworld_cache}
    evaluation, episodes = evaluate_policy(export, env, range(config.test_games), options, config.evaluation,
                                           progress=config.pretrain.progress)
    atomic_write_text(path, json.dumps({"evaluation": evaluation.to_dict(),
                                        "episodes": [_episode_record(e) for e in episodes]}, indent=1) + "\n")
    return evaluation, episodes


def _episode_record(episode: Episode) -> dict[str, Any]:
    return {"seed": episode.seed, "won": episode.won, "score": episode.score, "max_score": episode.max_score,
            "turns": len(episode.turns), "error": episode.error, "transcript": episode.transcript,
            "actions": [turn.actions for turn in episode.turns], "tokens": [turn.tokens for turn in episode.turns]}


def _machine() -> str:
    hardware = probe()
    return (f"{hardware.cpu_name} ({'native bf16' if hardware.cpu_bf16 else 'no native bf16'}), {hardware.cores} usable "
            f"CPU cores, {'GPU ' + hardware.cuda_device if hardware.cuda_device else 'no GPU'}, torch {torch.__version__} "
            f"with {torch.get_num_threads()} threads, Python {platform.python_version()}, {platform.system()}")


def _report(config: QuickstartConfig, results: dict[str, dict[str, PolicyEvaluation]], random: PolicyEvaluation,
            infos: dict[str, dict], seconds: float) -> str:
    budget = config.pretrain
    lines = [
        "# bwarea quickstart report", "",
        f"Machine: {_machine()}. Wall time of this invocation: {seconds / 60:.1f} min "
        "(steps an earlier run finished are reused).", "",
        f"TextWorld `{config.textworld_preset}`: {config.train_games} training games (corpus + RL task pool), "
        f"{config.test_games} held-out test games, greedy evaluation, at most {config.evaluation.max_turns} turns.",
        f"Pretraining: preset `{budget.preset}`{f' with {budget.architecture}' if budget.architecture else ''}, {budget.tokens:,} tokens per model "
        f"({budget.steps} steps x {budget.batch_size} x {budget.block_size}); BWArea stage 2: {budget.policy_steps} steps.",
        f"RL: {config.finetune.objective}, {config.finetune.updates} updates x {config.finetune.episodes_per_update} "
        f"episodes, lr {config.finetune.learning_rate}; BWArea trains its cognitive policy only, AR all weights.", "",
        "| model | parameters | trained by RL | success % before RL | success % after RL | score % before RL | score % after RL "
        "| generation MFLOP/token |",
        "|---|---:|---:|---|---|---|---|---:|",
    ]
    for key, label in MODELS.items():
        before, after = results[key]["before"], results[key]["after"]
        info = infos[key]
        lines.append(f"| {label} | {info['parameters']:,} | {info['trained_parameters']:,} | {before.success_rate.format()} | "
                     f"{after.success_rate.format()} | {before.normalised_score.format()} | {after.normalised_score.format()} "
                     f"| {info['costs']['generate'] / 1e6:.3g} |")
    lines.append(f"| Random agent (uniform over the admissible commands; 16 plays per game) | – | – | {random.success_rate.format()} | "
                 f"{random.success_rate.format()} | {random.normalised_score.format()} | {random.normalised_score.format()} | – |")
    lines += ["", "Against the random agent, held-out success after RL: " + "; ".join(
        f"{label} {_versus(results[key]['after'].success_rate, random.success_rate)}" for key, label in MODELS.items())
        + " (more than two combined standard errors apart counts as above or below)."]
    lines += ["", "Parameters: BWArea counts all its parts (world model, inverse dynamics, codebook, cognitive policy), of which "
              "RL trains the policy; the AR baseline is one network shaped like the world model, all of it trained by RL. "
              f"FLOPs per token at a {budget.block_size}-token context: a BWArea token costs a policy and a world-model "
              "forward pass; pretraining costs "
              + ", ".join(f"{name.replace('train_', '')} {value / 1e6:.3g}" for name, value in infos["bwarea"]["costs"].items()
                          if name.startswith("train")) + f" MFLOP/token for BWArea and {infos['ar']['costs']['train'] / 1e6:.3g} "
              "for the AR baseline.",
              "", "Means ± standard errors over held-out games. Pretraining validation: "
              + "; ".join(f"{MODELS[key]}: " + ", ".join(f"{name} {value:.3g}" for name, value in infos[key]["validation"].items())
                          for key in MODELS) + ".", ""]
    return "\n".join(lines)


def _versus(model: Estimate, baseline: Estimate) -> str:
    """'above it' / 'below it' / 'within noise of it' (the baseline): the gap against two combined standard errors."""
    spread = 2 * math.hypot(model.stderr or 0.0, baseline.stderr or 0.0)
    gap = model.mean - baseline.mean
    return "above it" if gap > spread else "below it" if gap < -spread else "within noise of it"


def _plots(out: Path, results: dict[str, dict[str, PolicyEvaluation]], episodes: list[Episode], tokenizer: Any) -> list[Path]:
    from evaluation.plots import plot_action_strip, plot_action_usage, plot_rl_comparison, plot_training_curves

    plots = out / "plots"
    runs = {"BWArea stage 1": out / "pretrain" / "world", "BWArea stage 2": out / "pretrain" / "policy",
            "AR baseline": out / "pretrain" / "ar"}
    finetune_runs = {MODELS[key]: out / "finetune" / key for key in MODELS}
    table = {MODELS[key]: {f"{phase} RL": r.normalised_score.to_dict() for phase, r in phases.items()}
             for key, phases in results.items()}
    written = [plot_rl_comparison(table, plots / "rl_comparison.png", metric="held-out normalised score (%)"),
               plot_training_curves(runs, plots / "pretraining_curves.png"),
               plot_training_curves(finetune_runs, plots / "finetune_curves.png",
                                    metrics=["finetune/reward/sampled", "finetune/reward/greedy", "finetune/entropy"])]
    actions = [a for episode in episodes for turn in episode.turns for a in turn.actions]
    if actions:
        written.append(plot_action_usage(actions, plots / "action_usage.png"))
        turn = next(turn for episode in episodes for turn in episode.turns if turn.tokens)
        written.append(plot_action_strip([tokenizer.decode([t]) for t in turn.tokens], turn.actions,
                                         plots / "action_strip.png", title=f"'{turn.command}': latent action per token"))
    return written


def _spring_demo(export: Path, steps: int) -> None:
    """A few Crafter steps of SPRING with the tiny model as the LLM: the DAG trace, node by node."""
    import agents
    import envs

    agent = agents.make_agent("spring", overrides={
        "backend": {"type": "bwarea", "model": str(export), "token_temperature": 0.0},
        "agent": {"max_tokens": 16, "temperature": 1.0, "context": {"read": False, "max_chars": 600}},
    })
    env = envs.make("crafter")
    observation, info = env.reset(seed=0)
    agent.reset(info)
    for step in range(steps):
        action = agent.act(observation, info)
        trace = agent.last_traces[0]
        print(f"--- Crafter step {step + 1}: SPRING chose {action!r} (read as: {trace.provenance}; "
              f"{len(trace.nodes)} DAG nodes, {trace.rounds} "
              f"batched rounds, {trace.latency_s:.2f} s)")
        for node in trace.nodes:
            answer = " ".join(node.answer.split())[:100]
            print(f"  {node.node:<13} Q: {node.question[:70]}{'...' if len(node.question) > 70 else ''}\n"
                  f"  {'':<13} A: {answer!r}")
        observation, _, terminated, truncated, info = env.step(action)
        if terminated or truncated:
            break
    env.close()
    print(f"(a {sum(p.numel() for p in agent.backend.model.parameters()) / 1e6:.2g}M-parameter model trained on TextWorld "
          "transcripts is no Crafter expert; swap in any LLM backend, see docs/agents.md)")


def run_quickstart(config: QuickstartConfig) -> dict[str, Any]:
    """Run every step; returns the summary written to out/summary.json."""
    started = time.perf_counter()
    configure_threads(config.threads)
    out = Path(config.out).expanduser()
    if config.fresh:
        for part in ("pretrain", "finetune", "evaluation", "plots"):
            shutil.rmtree(out / part, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    env = f"textworld/{config.textworld_preset}"
    total = 6 if config.spring_steps else 5

    _step(1, total, f"TextWorld games ({config.train_games} training, {config.test_games} held-out) and the corpus")
    corpus = build_corpus([config.textworld_preset], config.train_games, out / "corpus", config.textworld_cache,
                          config.exploratory_per_game, progress=config.pretrain.progress)
    ensure_games(config.textworld_preset, "test", config.test_games, config.textworld_cache, config.pretrain.progress)

    _step(2, total, f"Pretraining BWArea (stage 1, stage 2) and the AR baseline on {config.pretrain.tokens:,} tokens each")
    exports = pretrain_pair(corpus, out / "pretrain", config.pretrain)

    _step(3, total, "Held-out evaluation before RL, ReMax fine-tuning on the training games, evaluation after RL")
    rl = replace(config.finetune, env=env, task_pool=min(config.finetune.task_pool, config.train_games),
                 env_options={**config.finetune.env_options, "cache_dir": config.textworld_cache})
    results: dict[str, dict[str, PolicyEvaluation]] = {}
    after_episodes: dict[str, list[Episode]] = {}
    infos: dict[str, dict] = {}
    for key in MODELS:
        print(f"{MODELS[key]}: evaluating the pretrained model", flush=True)
        before, _ = _evaluate(exports[key], config, out / "evaluation" / f"{key}-before.json")
        print(f"{MODELS[key]}: ReMax fine-tuning", flush=True)
        tuned = finetune(exports[key], out / "finetune", key, rl)
        print(f"{MODELS[key]}: evaluating the fine-tuned model", flush=True)
        after, after_episodes[key] = _evaluate(tuned, config, out / "evaluation" / f"{key}-after.json")
        results[key] = {"before": before, "after": after}
        pretrained_info = read_training_info(exports[key])
        infos[key] = {"parameters": pretrained_info["parameters"],
                      "trained_parameters": read_training_info(tuned)["trained_parameters"],
                      "validation": _validation(key, exports),
                      "costs": model_costs(exports[key], config.pretrain.block_size)}

    print("Random agent on the same held-out games (16 plays per game)", flush=True)
    random = random_agent_evaluation(env, range(config.test_games), {"split": "test", "cache_dir": config.textworld_cache},
                                     config.evaluation.max_turns)

    _step(4, total, "Report and plots")
    plots = _plots(out, results, after_episodes["bwarea"], load_tokenizer(exports["bwarea"]))
    seconds = time.perf_counter() - started
    report = _report(config, results, random, infos, seconds)
    summary = {"config": jsonable(asdict(config)), "machine": _machine(), "wall_seconds": seconds,
               "results": {key: {phase: r.to_dict() for phase, r in phases.items()} for key, phases in results.items()},
               "random_agent": random.to_dict(),
               "models": infos, "exports": {key: str(path) for key, path in exports.items()},
               "action_usage_after_rl": dict(Counter(a for e in after_episodes["bwarea"] for t in e.turns for a in t.actions)),
               "plots": [str(p) for p in plots]}
    atomic_write_text(out / "report.md", report + "\nPlots: " + ", ".join(p.name for p in plots) + "\n")
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    print(report)
    print(f"Report: {out / 'report.md'}; plots: {out / 'plots'}")

    if config.spring_steps:
        _step(5, total, f"SPRING on Crafter for {config.spring_steps} steps with the tiny BWArea model as its LLM")
        _spring_demo(exports["bwarea"], config.spring_steps)
    _step(total, total, f"Done in {(time.perf_counter() - started) / 60:.1f} min; everything is under {out}")
    return summary


def _validation(key: str, exports: dict[str, Path]) -> dict[str, float]:
    """The pretraining validation numbers worth comparing: perplexities on the same held-out blocks."""
    if key == "ar":
        return {"perplexity": read_training_info(exports["ar"])["val_metrics"]["val/perplexity"]}
    world, policy = read_training_info(exports["world"])["val_metrics"], read_training_info(exports["bwarea"])["val_metrics"]
    result = {"perplexity under ID actions": world["val/perplexity"],
              "simulated-LLM perplexity (greedy actions, two streams)": policy["val/sim_greedy_perplexity"],
              "policy BC top-1 accuracy": policy["val/bc_top1"]}
    if "val/action_information" in policy:
        result["next-token information carried by the action (nats)"] = policy["val/action_information"]
    if "val/largest_code_share" in world:
        result.update({"alive codes": world["val/alive_codes"], "largest code share": world["val/largest_code_share"]})
    return result
