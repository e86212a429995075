"""ReMax vs PPO: peak memory and seconds per update, same model, same batch, same rollout engine.

Each contender runs in its own fresh process (so peak resident memory is its own), alternating
over several rounds; the table reports medians and the ReMax/PPO ratios (targets: <= 0.6x each).

- ReMax: per update, B sampled episodes + B greedy episodes (the baseline), one backward pass over
  the sampled episodes, one optimizer step; no value model.
- PPO: per update, B sampled episodes, a value model (a copy of the policy's trunk + scalar head) and
  GAE, then 4 epochs x `--ppo_minibatches` backward passes and optimizer steps. With
  `--ppo_minibatches 1` each PPO backward pass sees the same B episodes as ReMax's one pass;
  `--micro_batch_size B/2` splits ReMax's pass into two as PPO's default 2 minibatches split its own
  (the gradient stays the full batch's).

Memory, from the process's resident set size (RSS):
- fine-tuning memory = peak RSS − RSS of the bare runtime (torch, Lightning, the environment) before any
  model is loaded: models, reference policy, value model, optimizer state and activations;
- update memory = peak RSS − RSS once every model is built: what the updates add;
- peak RSS, the whole process.

The policy is freshly initialised (speed and memory do not depend on the weights; with random weights
every turn runs to max_new_tokens, so both contenders generate the same number of tokens): a BWArea
model of the chosen preset, of which RL trains the cognitive policy, or (`--model ar`) the equal-size AR
baseline, of which RL trains all weights. Its export is marked as such in training_info.json.

    python benchmarks/bench_rl.py [--model bwarea] [--preset tiny] [--batch 8] [--updates 3] [--rounds 3]
                                  [--ppo_minibatches 2] [--micro_batch_size 4] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def build_export(directory: Path, model: str, preset: str, cache_dir: Path) -> None:
    """A randomly initialised BWArea (or AR) model with a tokenizer trained on real coin-collector transcripts."""
    import envs
    from bwarea import ARConfig, ARLanguageModel, BWAreaConfig, BWAreaModel, train_tokenizer
    from envs.corpus import textworld_walkthrough
    from training.runs import write_training_info

    env = envs.make("textworld/coin-easy", split="train", cache_dir=str(cache_dir))
    texts = [textworld_walkthrough(env, index)[0].render() for index in range(4)]
    env.close()
    tokenizer = train_tokenizer(texts * 20, vocab_size=1024)
    config = BWAreaConfig.preset(preset, vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id,
                                 pad_token_id=tokenizer.pad_token_id)
    network = BWAreaModel(config) if model == "bwarea" else ARLanguageModel(ARConfig.matching(config))
    network.save_pretrained(directory, tokenizer=tokenizer)
    write_training_info(directory, {"stage": "policy" if model == "bwarea" else "ar",
                                    "note": "randomly initialised by benchmarks/bench_rl.py"})


def memory_mb(field: str) -> float:
    """VmRSS (resident now) or VmHWM (peak resident) of this process in MiB, from /proc/self/status. Not
    ru_maxrss: Linux carries it across exec, so a child would inherit the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}; this benchmark measures memory on Linux only.")


def measure(objective: str, export: str, cache_dir: str, batch: int, updates: int, max_turns: int, tokens: int,
            ppo_minibatches: int, micro_batch_size: int | None) -> dict:
    """Child process: `updates` updates of FinetuneModule; per-update seconds and memory."""
    import lightning as L

    from training.finetune import FinetuneModule
    from training.settings import RolloutConfig

    runtime = memory_mb("VmRSS")
    module = FinetuneModule(export, env="textworld/coin-easy", env_options={"cache_dir": cache_dir}, task_pool=batch,
                            episodes_per_update=batch, updates=updates + 1, objective=objective,
                            rollout=RolloutConfig(max_turns=max_turns, max_new_tokens=tokens), learning_rate=1e-5,
                            ratio_minibatches=ppo_minibatches, micro_batch_size=micro_batch_size)
    times: list[float] = []

    class Clock(L.Callback):
        def on_train_batch_start(self, *args):
            self.started = time.perf_counter()

        def on_train_batch_end(self, *args):
            times.append(time.perf_counter() - self.started)

    built = memory_mb("VmRSS")
    L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, callbacks=[Clock()]).fit(module)
    peak = memory_mb("VmHWM")
    return {"seconds_per_update": statistics.median(times[1:]), "finetuning_memory_mb": peak - runtime,
            "update_memory_mb": peak - built, "peak_rss_mb": peak,
            "generated_tokens": module.engine.generated_tokens}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="bwarea", choices=["bwarea", "ar"],
                        help="bwarea: RL trains the cognitive policy; ar: the equal-size AR baseline, all weights")
    parser.add_argument("--preset", default="tiny", choices=["tiny", "small"])
    parser.add_argument("--batch", type=int, default=8, help="sampled episodes per update")
    parser.add_argument("--updates", type=int, default=3, help="timed updates per process (after one warm-up update)")
    parser.add_argument("--rounds", type=int, default=3, help="fresh processes per contender, alternating")
    parser.add_argument("--max_turns", type=int, default=4)
    parser.add_argument("--max_new_tokens", type=int, default=12)
    parser.add_argument("--ppo_minibatches", type=int, default=2, help="PPO minibatches per epoch (1: ReMax's batch per pass)")
    parser.add_argument("--micro_batch_size", type=int, default=None,
                        help="ReMax episodes per backward pass (default: the whole batch in one pass)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", nargs=2, metavar=("OBJECTIVE", "EXPORT"), help=argparse.SUPPRESS)
    parser.add_argument("--cache_dir", default=None, help="TextWorld game cache (default: a temporary directory)")
    args = parser.parse_args()

    import torch
    torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(measure(args.child[0], args.child[1], args.cache_dir, args.batch, args.updates,
                                 args.max_turns, args.max_new_tokens, args.ppo_minibatches, args.micro_batch_size)))
        return

    with tempfile.TemporaryDirectory() as scratch:
        cache_dir = Path(args.cache_dir or Path(scratch) / "games")
        export = Path(scratch) / "export"
        build_export(export, args.model, args.preset, cache_dir)
        results: dict[str, list[dict]] = {"remax": [], "ppo": []}
        for round_index in range(args.rounds):
            for objective in results:
                command = [sys.executable, __file__, "--child", objective, str(export), "--cache_dir", str(cache_dir),
                           "--batch", str(args.batch), "--updates", str(args.updates), "--max_turns", str(args.max_turns),
                           "--max_new_tokens", str(args.max_new_tokens), "--ppo_minibatches", str(args.ppo_minibatches),
                           "--threads", str(args.threads)]
                if args.micro_batch_size:
                    command += ["--micro_batch_size", str(args.micro_batch_size)]
                output = subprocess.run(command, check=True, capture_output=True, text=True,
                                        env={**os.environ, "WANDB_MODE": "disabled"}).stdout
                results[objective].append(json.loads(output.strip().splitlines()[-1]))
                print(f"round {round_index + 1}/{args.rounds} {objective}: {results[objective][-1]}", file=sys.stderr)

    def median(objective: str, key: str) -> float:
        return statistics.median(result[key] for result in results[objective])

    print(f"ReMax vs PPO, {args.model} preset {args.preset}, {args.batch} episodes per update, {args.max_turns} turns x "
          f"{args.max_new_tokens} tokens, PPO {args.ppo_minibatches} minibatches, ReMax micro-batch "
          f"{args.micro_batch_size or args.batch}, {args.threads} threads, median of "
          f"{args.rounds} processes x {args.updates} updates")
    print(f"{'metric':<24}{'ReMax':>10}{'PPO':>10}{'ReMax/PPO':>12}{'target':>10}")
    for key, target in (("seconds_per_update", "<= 0.6"), ("finetuning_memory_mb", "<= 0.6"), ("update_memory_mb", ""),
                        ("peak_rss_mb", "")):
        remax, ppo = median("remax", key), median("ppo", key)
        print(f"{key:<24}{remax:>10.2f}{ppo:>10.2f}{remax / ppo:>12.2f}{target:>10}")


if __name__ == "__main__":
    main()
