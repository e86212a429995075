"""Run directories for the viewer's tests, written in the formats of `bwarea evaluate`, `bwarea play` and the
training runs' CSV logs (small and synthetic, so the tests need no model and no game generation)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

CRAFTER_ACTIONS = ["noop", "move_left", "move_right", "move_up", "move_down", "do", "sleep", "place_stone",
                   "place_table", "place_furnace", "place_plant", "make_wood_pickaxe"]
# the own model's trace of one step: per generated token its latent action, log-probability and top-5
TOKENS = ["go", " north", "\n"]
ACTIONS = [17, 3, 42]
LOG_PROBS = [-0.5, -1.25, -0.1]
TOP = [[17, 2, 9, 40, 1], [5, 3, 11, 0, 63], [42, 7, 8, 9, 10]]
TOP_PROBS = [[0.6065, 0.1, 0.08, 0.05, 0.04], [0.4, 0.2865, 0.1, 0.05, 0.03], [0.9048, 0.03, 0.02, 0.01, 0.01]]


def settings(suite: list[str], episodes: int, seeds: list[int], agent: str = "random", max_steps: int = 500) -> dict:
    return {"format": "bwarea-evaluation/1",
            "agent": {"source": agent, "type": agent, "config": {"agent": {"type": agent}}, "config_sha256": "0" * 64},
            "suite": suite, "episodes_per_seed": episodes, "first_episode": 0, "seeds": seeds, "split": "test",
            "max_steps": max_steps, "batch_size": 8, "traces": "full",
            "environments": {name: {"family": name.partition("/")[0], "episodes": episodes,
                                    "options": {"max_steps": max_steps}} for name in suite},
            "versions": {"python": "3.11", "bwarea": "0.1.0", "torch": "2.13.0+cpu", "crafter": "1.8.3"}}


def crafter_record(seed: int, episode: int, steps: int, rng: random.Random) -> dict[str, Any]:
    """A Crafter episode really played (world 2,000,000 + episode, random actions), recorded as evaluate does."""
    from envs.crafter import CrafterEnv

    env = CrafterEnv(max_steps=500)
    observation, info = env.reset(seed=2_000_000 + episode)
    trajectory, total = [], 0.0
    for _ in range(steps):
        action = rng.choice(CRAFTER_ACTIONS)
        following, reward, terminated, truncated, info = env.step(action)
        entry = {"observation": observation, "action": action, "reward": reward, "invalid_action": info["invalid_action"]}
        if info["new_achievements"]:
            entry["new_achievements"] = info["new_achievements"]
        trajectory.append(entry)
        observation, total = following, total + reward
        assert not (terminated or truncated), "the test episode ended early; pick another world or fewer steps"
    return {"env": "crafter", "family": "crafter", "seed": seed, "episode": episode, "env_seed": 2_000_000 + episode,
            "batch": 0, "task": "Survive.", "steps": steps, "return": total, "terminated": False, "truncated": False,
            "score": info["score"], "max_score": 22, "won": False, "lost": False, "achievements": info["achievements"],
            "final_observation": observation, "trajectory": trajectory, "agent_stats": {"steps": steps}, "faults": [],
            "latent_actions": {}, "traces": [{"agent": "random", "env_index": 0, "step": k, "action": s["action"],
                                              "nodes": []} for k, s in enumerate(trajectory)], "error": None}


def with_made_up_achievements(record: dict[str, Any]) -> dict[str, Any]:
    """The record with collect_wood unlocked by action 2 and place_table by action 5 (+1 reward each), whatever
    the world did: known numbers for the step tests, and a record its replay disagrees with."""
    record = json.loads(json.dumps(record))
    for index, name in ((2, "collect_wood"), (5, "place_table")):
        record["trajectory"][index].update(reward=1.0, new_achievements=[name])
    for index, step in enumerate(record["trajectory"]):
        if index not in (2, 5):
            step.update(reward=0.0)
            step.pop("new_achievements", None)
    record.update(achievements=["collect_wood", "place_table"], score=2, **{"return": 2.0})
    return record


def textworld_record(seed: int, episode: int, score: int, dag: bool = False) -> dict[str, Any]:
    trajectory = [{"observation": "You are in a kitchen.", "action": "go north", "reward": 0.0, "invalid_action": False},
                  {"observation": "You are in a pantry.", "action": "take coin", "reward": float(score),
                   "invalid_action": False}]
    answer_node = {"node": "answer", "question": "", "answer": "go north", "round": 1 if dag else 0, "request": {},
                   "metadata": {"token_ids": [11, 12, 13], "tokens": TOKENS, "actions": ACTIONS,
                                "action_log_probs": LOG_PROBS, "action_top": TOP, "action_top_probs": TOP_PROBS}}
    nodes = [answer_node]
    if dag:
        nodes = [{"node": "where", "question": "Where am I?", "answer": "the kitchen", "round": 0, "metadata": {}},
                 {"node": "goal", "question": "What is the goal?", "answer": "the coin", "round": 0, "metadata": {}},
                 answer_node]
    traces = [{"agent": "direct", "env_index": 0, "step": 0, "action": "go north", "answer": "go north",
               "parse_method": "final", "parse_failed": False, "fallback": False, "faults": [], "nodes": nodes}]
    return {"env": "textworld/coin-easy", "family": "textworld", "seed": seed, "episode": episode, "env_seed": episode,
            "batch": 0, "task": "Find the coin.", "steps": 2, "return": float(score), "terminated": bool(score),
            "truncated": not score, "score": score, "max_score": 1, "won": bool(score), "lost": False,
            "final_observation": "The End" if score else "Nothing happens.", "trajectory": trajectory,
            "agent_stats": {"steps": 2}, "faults": [], "latent_actions": {"17": 1, "3": 1, "42": 1}, "traces": traces,
            "error": None}


def write_evaluation(directory: Path, config: dict, records: list[dict], summary: dict | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "evaluation.json").write_text(json.dumps(config))
    (directory / "episodes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if summary is not None:
        (directory / "summary.json").write_text(json.dumps(summary))
    return directory


@pytest.fixture(scope="session")
def runs_root(tmp_path_factory) -> Path:
    """runs/evaluate/{model_a, model_b, crafter_long, damaged, future}, runs/train/finetune (CSV logs)."""
    root = tmp_path_factory.mktemp("viewer") / "runs"
    rng = random.Random(0)
    config_a = settings(["textworld/coin-easy", "crafter"], 2, [0], "own_model")
    config_a["agent"]["config"]["agent"]["dag"] = {"nodes": [{"id": "where", "question": "Where am I?"},
                                                             {"id": "goal", "question": "What is the goal?"},
                                                             {"id": "answer", "question": "Act.", "parents": ["where", "goal"]}]}
    write_evaluation(root / "evaluate" / "model_a", config_a,
                     [textworld_record(0, 0, 1), textworld_record(0, 1, 0, dag=True),
                      crafter_record(0, 0, 120, rng), crafter_record(0, 1, 30, rng)],
                     {"format": "bwarea-evaluation/1", "complete": True, "environments": {
                         "textworld/coin-easy": {"metrics": {"textworld_success_rate": {"mean": 50.0, "stderr": 50.0, "n": 2, "unit": "%"}}}},
                      "aggregates": {}})
    (root / "evaluate" / "model_a" / "plots").mkdir()
    Image.new("RGB", (48, 32), "white").save(root / "evaluate" / "model_a" / "plots" / "crafter_achievements.png")
    write_evaluation(root / "evaluate" / "model_b", settings(["textworld/coin-easy"], 2, [0], "random"),
                     [textworld_record(0, 0, 0), textworld_record(0, 1, 1)])
    damaged = write_evaluation(root / "evaluate" / "damaged", settings(["textworld/coin-easy"], 3, [0]),
                               [textworld_record(0, 0, 1)])
    with (damaged / "episodes.jsonl").open("a") as handle:
        handle.write("{not json}\n" + json.dumps(textworld_record(0, 2, 1))[:40])   # a bad line, then a torn one
    future = settings(["crafter"], 1, [0])
    future["format"] = "bwarea-evaluation/9"
    write_evaluation(root / "evaluate" / "future", future, [crafter_record(0, 0, 8, rng)])
    logs = root / "train" / "finetune" / "logs" / "csv" / "version_0"
    logs.mkdir(parents=True)
    (logs / "metrics.csv").write_text("epoch,step,finetune/reward/sampled,finetune/kl\n" +
                                      "".join(f"0,{s},{s / 10},{0.01 * s}\n" for s in range(1, 11)))
    return root
