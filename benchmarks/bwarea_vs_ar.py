"""The BWArea claim, measured: does RL on the cognitive policy alone (world model frozen) do as well as RL
on a whole autoregressive model of the same size, from the same pretraining data and the same RL budget?

Pipeline (training/experiment.py, the same code as `bwarea quickstart`):
 1. one pretraining corpus: transcripts of the training-split games of every TextWorld preset plus the
    training split of the BIG-Bench Hard tasks (zero-shot prompt + "The answer is X.");
 2. BWArea (stage 1, stage 2) and the equal-size AR baseline pretrained on it with the same budget;
 3. per task group (each TextWorld preset; the BBH tasks together) and per RL seed: ReMax fine-tuning of
    BWArea (policy only) and of the AR baseline (all weights) with the same budget;
 4. held-out evaluation (test split, greedy) before RL and after each seed's RL.

The table reports held-out success (%) before RL (mean ± standard error over held-out episodes) and after
RL (mean ± standard error over RL seeds of each seed's held-out mean). Everything lands in --out
(results.md, results.json); finished steps (corpus, pretraining, RL runs, held-out evaluations under
evaluation/) are reused when the script is run again, and a changed budget with the same --out stops with
an error naming what differs instead of reusing runs made for the old one. Task groups can run in
parallel on one --out with --only, once a first invocation has finished the corpus and pretraining (two
started together on a fresh --out would both build them); a last invocation without --only assembles
the full table.

    python benchmarks/bwarea_vs_ar.py --out runs/bwarea-vs-ar                       # defaults: ~1 h on 2 cores
    python benchmarks/bwarea_vs_ar.py --out runs/claim-small --pretrain_steps 200 --updates 8 --seeds 0 1
    python benchmarks/bwarea_vs_ar.py --out runs/bwarea-vs-ar --only bbh            # pretrains, then one group
    python benchmarks/bwarea_vs_ar.py --out runs/bwarea-vs-ar --only textworld/coin-easy &   # then in parallel
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bwarea.checkpoint import atomic_write_text  # noqa: E402
from envs.corpus import BBHCorpusConfig, DirtyConfig, OutputConfig, build_bbh_corpus  # noqa: E402
from training.experiment import FinetuneBudget, PretrainBudget, build_corpus, evaluate_policy, finetune, pretrain_pair  # noqa: E402
from training.metrics import Estimate, estimate, macro_average  # noqa: E402
from training.rollout import RolloutConfig  # noqa: E402

MODELS = {"bwarea": "BWArea (policy-only RL)", "ar": "AR baseline (full RL)"}
BBH_TASKS = ["boolean_expressions", "web_of_lies", "navigate", "sports_understanding"]


def groups(args: argparse.Namespace) -> dict[str, dict]:
    """Task groups: name -> environments, rollout settings and held-out seeds."""
    textworld = RolloutConfig(max_turns=args.max_turns, max_new_tokens=12, history_turns=3)
    bbh = RolloutConfig(max_turns=1, max_new_tokens=10, prompt_format="observation")
    result = {f"textworld/{preset}": {"envs": [f"textworld/{preset}"], "rollout": textworld, "options": {"cache_dir": args.textworld_cache},
                                      "test": args.test_games, "pool": args.train_games} for preset in args.textworld_presets}
    if args.bbh_tasks:
        result["bbh"] = {"envs": [f"bbh/{task}" for task in args.bbh_tasks], "rollout": bbh,
                         "options": {"data_dir": args.bbh_dir}, "test": args.bbh_test_items, "pool": args.bbh_train_items}
    return result


def held_out(export: Path, group: dict, record: Path) -> Estimate:
    """Held-out success (%): per environment, then the macro average over a group's environments. Kept in
    `record` (JSON), so a re-run, or another invocation sharing --out, reuses it."""
    plan = {"envs": group["envs"], "test_episodes": group["test"], "rollout": asdict(group["rollout"])}
    recorded = json.loads(record.read_text()) if record.is_file() else {}
    if recorded.get("plan") == plan:
        return Estimate.from_dict(recorded["success"])
    per_env = [evaluate_policy(export, env, range(group["test"]), {**group["options"], "split": "test"}, group["rollout"])[0].success_rate
               for env in group["envs"]]
    result = per_env[0] if len(per_env) == 1 else macro_average(per_env, "%")
    atomic_write_text(record, json.dumps({"plan": plan, "success": result.to_dict()}, indent=2) + "\n")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/bwarea-vs-ar")
    parser.add_argument("--textworld_presets", nargs="*", default=["coin-easy", "treasure-easy"])
    parser.add_argument("--train_games", type=int, default=48, help="training games per preset (corpus + RL pool)")
    parser.add_argument("--test_games", type=int, default=20, help="held-out games per preset")
    parser.add_argument("--textworld_cache", default=None)
    parser.add_argument("--max_turns", type=int, default=8)
    parser.add_argument("--bbh_tasks", nargs="*", default=BBH_TASKS)
    parser.add_argument("--bbh_dir", default=str(REPO.parent / "shared" / "data" / "bbh"))
    parser.add_argument("--bbh_train_items", type=int, default=100, help="RL pool per BBH task (training split)")
    parser.add_argument("--bbh_test_items", type=int, default=50, help="held-out items per BBH task")
    parser.add_argument("--pretrain_steps", type=int, default=400, help="stage-1 and AR steps (16 x 128 tokens each)")
    parser.add_argument("--policy_steps", type=int, default=200)
    parser.add_argument("--updates", type=int, default=12, help="ReMax updates per run")
    parser.add_argument("--episodes_per_update", type=int, default=16)
    parser.add_argument("--learning_rate", type=float, default=3e-5)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--only", nargs="+", default=None, metavar="GROUP",
                        help="run only these task groups (e.g. textworld/coin-easy bbh); the corpus and pretraining "
                             "still cover every preset and task, so invocations with different --only share --out")
    args = parser.parse_args()
    chosen = groups(args)
    unknown = sorted(set(args.only or []) - set(chosen))
    if unknown:   # before an hour of pretraining, not after
        parser.error(f"--only names unknown task groups {unknown}; choose from {sorted(chosen)}.")

    started = time.perf_counter()
    out = Path(args.out)
    corpus = out / "corpus"
    build_corpus(args.textworld_presets, args.train_games, corpus / "textworld", args.textworld_cache)
    bbh_manifest = corpus / "bbh" / "manifest.json"
    if args.bbh_tasks and (not bbh_manifest.is_file()
                           or json.loads(bbh_manifest.read_text())["settings"]["tasks"] != args.bbh_tasks):
        build_bbh_corpus(BBHCorpusConfig(tasks=args.bbh_tasks, data_dir=args.bbh_dir), OutputConfig(out=str(corpus / "bbh"), overwrite=True),
                         DirtyConfig())
    budget = PretrainBudget(steps=args.pretrain_steps, policy_steps=args.policy_steps)
    exports = pretrain_pair(corpus, out / "pretrain", budget)

    evaluations = out / "evaluation"
    evaluations.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, dict]] = {}
    for name, group in chosen.items():
        if args.only and name not in args.only:
            continue
        for key in MODELS:
            run = f"{key}-{name.replace('/', '-')}"
            before = held_out(exports[key], group, evaluations / f"{run}-pretrained.json")
            after_by_seed = []
            for seed in args.seeds:
                rl = FinetuneBudget(env=group["envs"], env_options=group["options"], task_pool=group["pool"],
                                    episodes_per_update=args.episodes_per_update, updates=args.updates,
                                    rollout=group["rollout"], learning_rate=args.learning_rate, seed=seed)
                tuned = finetune(exports[key], out / "finetune", f"{run}-seed{seed}", rl)
                after_by_seed.append(held_out(tuned, group, evaluations / f"{run}-seed{seed}.json").mean)
            results.setdefault(name, {})[key] = {"before": before.to_dict(), "after": estimate(after_by_seed, "%").to_dict(),
                                                 "after_by_seed": after_by_seed}
            print(f"{name} {MODELS[key]}: before {before.format()}, after {estimate(after_by_seed).format()}", flush=True)

    lines = [f"Held-out success (%), before RL (± s.e. over held-out episodes) and after ReMax (± s.e. over RL seeds "
             f"{args.seeds}). Pretraining: {budget.tokens:,} tokens per model (tiny preset); RL: {args.updates} updates x "
             f"{args.episodes_per_update} episodes per run. This invocation: {(time.perf_counter() - started) / 60:.0f} min (finished steps reused).", "",
             "| task | " + " | ".join(f"{label} before | {label} after" for label in MODELS.values()) + " |",
             "|---|" + "---|---|" * len(MODELS)]
    for name, by_model in results.items():
        cells = [f"{Estimate.from_dict(by_model[key][phase]).format()}" for key in MODELS for phase in ("before", "after")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    (out / "results.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps({"settings": vars(args), "pretrain_tokens": budget.tokens, "results": results},
                                                 indent=2) + "\n")
    print(table)


if __name__ == "__main__":
    main()
