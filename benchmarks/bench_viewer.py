"""`bwarea view` with long runs: how long a 10,000-step Crafter episode and a 1,000-episode evaluation take to open,
and whether watching a running evaluation slows it down.

    python benchmarks/bench_viewer.py                 # all three (about 2 minutes on the 2-core CPU box)
    python benchmarks/bench_viewer.py --skip-watch    # only the opening times

Runs written to a temporary directory:
- crafter-long: one Crafter episode of 10,000 steps, recorded as `bwarea evaluate` records it (observation per
  step from the real descriptor of the world, random actions, a random agent's trace per step). The player
  dies on the way, crafter's world goes on; that changes nothing for the viewer.
- textworld-1000: 1,000 TextWorld-format episodes of 30 steps, each step with an own-model trace of 16
  generated tokens (latent action, log-probability and top-5 per token), as `--traces compact` writes them.

"Open" is what the page asks for, timed in a fresh viewer (nothing indexed or cached yet), through the
ASGI app in-process (starlette's TestClient; no sockets): the runs list, the run's settings and summary, the
episode index, and for the replay page the episode outline, the first page of 50 steps and frame 0. Then
a jump straight to the end (frame 9,999, asked for at once: it waits for the background replay that the
first frame started to get there) and jumps back and forth (frames 5,000 and 7,777: from snapshots).

Live watch: a random-agent Crafter evaluation (`bwarea evaluate`, its own process; 16 episodes of up to
1,000 steps) is run three times alone and three times while a viewer in this process polls the runs list
and its episode index every 0.5 s (4x what the pages do), interleaved; the median wall times are compared,
and the viewer's own CPU time per second of watching is reported (what it takes from the run at most).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from starlette.testclient import TestClient

SETTINGS = {"format": "bwarea-evaluation/1", "agent": {"source": "random", "type": "random", "config_sha256": "0" * 64},
            "seeds": [0], "split": "test", "versions": {"bwarea": "0.1.0"}}


def write_run(directory: Path, suite: list[str], episodes: int, max_steps: int, records) -> None:
    directory.mkdir(parents=True)
    settings = {**SETTINGS, "suite": suite, "environments": {name: {"family": name.partition("/")[0],
                                                                    "episodes": episodes, "options": {"max_steps": max_steps}}
                                                             for name in suite}}
    (directory / "evaluation.json").write_text(json.dumps(settings))
    with (directory / "episodes.jsonl").open("w") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")


def long_crafter_record(steps: int) -> dict:
    from envs.crafter import ACTIONS, CrafterEnv, describe, parse_action

    rng = random.Random(0)
    env = CrafterEnv(max_steps=steps)
    env.reset(seed=2_000_000)
    trajectory, traces, last = [], [], None
    for k in range(steps):
        action = rng.choice(ACTIONS)
        entry = {"observation": describe(env.engine, last), "action": action, "reward": 0.0, "invalid_action": False}
        traces.append({"agent": "random", "env_index": 0, "step": k, "action": action, "answer": "",
                       "parse_method": "random", "nodes": []})
        before = set(env.engine._unlocked)
        env.engine.step(parse_action(action)[0])
        if env.engine._unlocked - before:    # recorded as evaluate records it, so the replay's check agrees
            entry["new_achievements"] = sorted(env.engine._unlocked - before)
        trajectory.append(entry)
        last = action
    return {"env": "crafter", "family": "crafter", "seed": 0, "episode": 0, "env_seed": 2_000_000, "batch": 0,
            "task": "Survive.", "steps": steps, "return": 0.0, "terminated": False, "truncated": True, "score": 0,
            "max_score": 22, "achievements": [], "final_observation": describe(env.engine, last),
            "trajectory": trajectory, "agent_stats": {"steps": steps}, "faults": [], "latent_actions": {},
            "traces": traces, "error": None}


def textworld_record(episode: int, rng: random.Random) -> dict:
    def node() -> dict:
        tokens = 16
        return {"node": "answer", "question": "", "answer": "go north", "round": 0, "tokens_in": 300,
                "tokens_out": tokens, "metadata": {
                    "token_ids": [rng.randrange(50000) for _ in range(tokens)], "tokens": [" word"] * tokens,
                    "actions": [rng.randrange(64) for _ in range(tokens)],
                    "action_log_probs": [round(-rng.random(), 5) for _ in range(tokens)],
                    "action_top": [[rng.randrange(64) for _ in range(5)] for _ in range(tokens)],
                    "action_top_probs": [[round(rng.random() / 2, 4) for _ in range(5)] for _ in range(tokens)]}}
    steps = 30
    trajectory = [{"observation": "-= Kitchen =-\nYou are in a kitchen. An open door leads north. " * 3,
                   "action": "go north", "reward": 0.0, "invalid_action": False} for _ in range(steps)]
    traces = [{"agent": "direct", "env_index": 0, "step": k, "action": "go north", "answer": "go north",
               "parse_method": "final", "nodes": [node()]} for k in range(steps)]
    return {"env": "textworld/coin-easy", "family": "textworld", "seed": 0, "episode": episode, "env_seed": episode,
            "batch": episode // 8, "task": "Find the coin.", "steps": steps, "return": 0.0, "terminated": False,
            "truncated": True, "score": 0, "max_score": 1, "won": False, "final_observation": "...",
            "trajectory": trajectory, "agent_stats": {"steps": steps}, "faults": [], "latent_actions": {},
            "traces": traces, "error": None}


def timed(client: TestClient, urls: list[str]) -> float:
    started = time.perf_counter()
    for url in urls:
        response = client.get(url)
        assert response.status_code == 200, (url, response.status_code, response.text[:200])
    return time.perf_counter() - started


def opening(root: Path) -> None:
    from viewer import create_app

    long_run, many = "runs/crafter-long", "runs/textworld-1000"
    run_urls = ["/api/runs", f"/api/run?run={many}", f"/api/episodes?run={many}"]
    replay_urls = [f"/api/run?run={long_run}", f"/api/episode?run={long_run}&episode=0",
                   f"/api/steps?run={long_run}&episode=0&start=0&count=50", f"/api/frame?run={long_run}&episode=0&step=0"]
    # crafter's import (first frame of the session) is paid once per viewer process, not per episode: load it first
    import envs.crafter  # noqa: F401
    results = []
    for attempt in range(3):
        client = TestClient(create_app([root], play_out=root / "play"))
        results.append((timed(client, run_urls), timed(client, replay_urls),
                        timed(client, [f"/api/frame?run={long_run}&episode=0&step=9999"]),
                        timed(client, [f"/api/frame?run={long_run}&episode=0&step=5000"]),
                        timed(client, [f"/api/frame?run={long_run}&episode=0&step=7777"]),
                        timed(client, [f"/api/steps?run={long_run}&episode=0&start=9950&count=50"])))
    names = ["open a 1,000-episode evaluation (runs list, run, episode index)",
             "open a 10,000-step Crafter episode (outline, 50 steps, frame 0)",
             "then at once frame 9,999 (waits for the background replay to get there)",
             "then frame 5,000 (from a snapshot)", "then frame 7,777 (from a snapshot)",
             "steps 9,950..9,999 (record cached)"]
    for index, name in enumerate(names):
        times = sorted(result[index] for result in results)
        print(f"{name}: median {times[1]:.3f} s (of {', '.join(f'{t:.3f}' for t in times)})")


def live_watch(root: Path) -> None:
    from viewer import create_app

    def run(out: Path) -> float:
        command = [sys.executable, "-m", "cli.main", "evaluate", "--agent", "random", "--suite", "crafter",
                   "--episodes", "16", "--max_steps", "1000", "--batch_size", "4", "--out", str(out),
                   "--plots", "false", "--progress", "false"]
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        return time.perf_counter() - started

    alone, watched, viewer_cpu = [], [], []
    for attempt in range(3):
        alone.append(run(root / f"alone-{attempt}"))
        out = root / f"watched-{attempt}"
        client = TestClient(create_app([root], play_out=root / "play"))
        stop = threading.Event()

        def poll() -> None:
            while not stop.wait(0.5):
                client.get("/api/runs")
                if (out / "episodes.jsonl").exists():
                    client.get(f"/api/episodes?run={root.name}/{out.name}")

        watcher = threading.Thread(target=poll)
        cpu = time.process_time()
        watcher.start()
        try:
            watched.append(run(out))
        finally:
            stop.set()
            watcher.join()
        viewer_cpu.append((time.process_time() - cpu) / watched[-1])
    a, w = statistics.median(alone), statistics.median(watched)
    print(f"evaluation wall time, alone: {', '.join(f'{t:.2f}' for t in alone)} s (median {a:.2f})")
    print(f"evaluation wall time, watched: {', '.join(f'{t:.2f}' for t in watched)} s (median {w:.2f}); "
          f"watched / alone = {w / a:.3f}")
    print(f"the watching viewer's own CPU time per second of watching: "
          f"{', '.join(f'{c * 100:.1f}' for c in viewer_cpu)} % of one core")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skip-watch", action="store_true", help="Only time opening the long runs.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temp:
        root = Path(temp) / "runs"
        started = time.perf_counter()
        write_run(root / "crafter-long", ["crafter"], 1, 10_000, [long_crafter_record(10_000)])
        rng = random.Random(0)
        write_run(root / "textworld-1000", ["textworld/coin-easy"], 1000, 30,
                  (textworld_record(episode, rng) for episode in range(1000)))
        sizes = {p.parent.name: p.stat().st_size / 2**20 for p in root.glob("*/episodes.jsonl")}
        print(f"wrote the runs in {time.perf_counter() - started:.1f} s: " +
              ", ".join(f"{name} {size:.1f} MiB" for name, size in sorted(sizes.items())))
        opening(root)
        if not args.skip_watch:
            live_watch(Path(temp) / "watch")


if __name__ == "__main__":
    main()
