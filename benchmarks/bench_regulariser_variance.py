"""Gradient variance of the PM / KL regulariser estimators on one real rollout batch: "sampled" (each step's sampled
term summed into the reward-to-go, the first generation's estimator) vs "exact" (each step's own term as the
expectation over the whole action distribution, differentiated directly; later steps' expected terms in the weight
minus a per-position baseline). Both are unbiased (tests/training/test_objectives.py, by enumeration); this
measures how much noise each puts into the gradient of a real policy on real TextWorld episodes.

One batch of sampled episodes (and their greedy twins) is played once; for each estimator the loss of the same
batch is taken and its gradient split into per-episode contributions g_b (the batch gradient is their sum), via the
chain rule through the recorded log-probabilities, entropies and distributions. Reported per estimator:
tr Cov of the per-episode estimates B g_b (the variance of a one-episode gradient estimate; a batch of B divides it
by B), the squared norm of the batch gradient, and the mean weight on the first action (its shift from R - b is
the regulariser's summed samples). The KL needs a reference that differs from the policy: the policy is the
fine-tuned export and the reference its starting (stage-2 / AR) export.

    python benchmarks/bench_regulariser_variance.py --policy runs/qs-avx2/finetune/bwarea/export \
        --reference runs/qs-avx2/pretrain/policy/export [--episodes 16] [--beta 0.05] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def cpu_name() -> str:
    lines = subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("Model name")), platform.processor())


def per_episode_estimates(engine, objective, options, episodes, twins, parameters) -> tuple[torch.Tensor, dict]:
    """(B, P) per-episode estimates B g_b of the batch gradient of -loss, and the loss's metrics."""
    from training.rollout import build_rollout_batch

    needs = objective.needs(options)
    with torch.no_grad():
        scores = engine.policy_log_probs(episodes, full=needs.full_distributions)
    leaves = [score.clone().requires_grad_(True) for score in scores]
    batch = build_rollout_batch(episodes, leaves[0], leaves[1], [t.total_reward for t in twins], None,
                                leaves[2] if needs.full_distributions else None,
                                engine.reference_log_distributions(episodes) if needs.full_distributions else None)
    loss, metrics = objective.compute_loss(batch, options)
    coefficients = torch.autograd.grad(loss, leaves, allow_unused=True)
    rows = []
    for b in range(len(episodes)):
        recomputed = engine.policy_log_probs(episodes[b:b + 1], full=needs.full_distributions)
        width = recomputed[0].shape[1]
        total = sum((c[b:b + 1, :width] * v).sum() for c, v in zip(coefficients, recomputed) if c is not None)
        grads = torch.autograd.grad(total, parameters, allow_unused=True)
        rows.append(-len(episodes) * torch.cat([(g if g is not None else torch.zeros_like(p)).flatten()
                                                for g, p in zip(grads, parameters)]))
    return torch.stack(rows), metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--policy", default="runs/qs-avx2/finetune/bwarea/export")
    parser.add_argument("--reference", default="runs/qs-avx2/pretrain/policy/export")
    parser.add_argument("--cache_dir", default=None, help="TextWorld game cache (default: the envs default)")
    parser.add_argument("--episodes", type=int, default=16)
    parser.add_argument("--beta", type=float, default=0.05, help="PM beta and KL coefficient")
    parser.add_argument("--max_turns", type=int, default=8)
    parser.add_argument("--max_new_tokens", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write the results as JSON here too")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import bwarea
    import envs
    from training.objectives import get_objective
    from training.rollout import ReferencePolicy, RolloutConfig, RolloutEngine

    model = bwarea.load_pretrained(args.policy)
    tokenizer = bwarea.load_tokenizer(args.policy)
    parameters = list(model.policy_parameters())
    reference = ReferencePolicy(model, parameters)
    reference.snapshot = [p.detach().clone() for p in bwarea.load_pretrained(args.reference).policy_parameters()]
    engine = RolloutEngine(model, tokenizer, RolloutConfig(max_turns=args.max_turns, max_new_tokens=args.max_new_tokens,
                                                           history_turns=3), reference)
    options = {} if args.cache_dir is None else {"cache_dir": args.cache_dir}
    make_env = lambda: envs.make("textworld/coin-easy", split="train", **options)  # noqa: E731
    tasks = list(range(args.episodes))
    episodes = engine.run(make_env, tasks, sampling_seeds=[args.seed * 1000 + t for t in tasks])
    twins = engine.run(make_env, tasks, greedy=True)
    kept = [i for i in range(len(tasks)) if not episodes[i].dropped and not twins[i].dropped]
    episodes, twins = [episodes[i] for i in kept], [twins[i] for i in kept]

    results = {"cpu": cpu_name(), "policy": args.policy, "reference": args.reference, "episodes": len(episodes),
               "tokens_per_episode": sum(e.num_tokens for e in episodes) / len(episodes),
               "sampled_success": sum(e.won for e in episodes) / len(episodes), "beta": args.beta, "rows": []}
    for name, coef in (("pm_rlhf", "beta"), ("kl_rlhf", "beta")):
        objective = get_objective(name)
        by_estimator = {}
        for estimator in ("sampled", "exact"):
            estimates, metrics = per_episode_estimates(engine, objective, {coef: args.beta, "estimator": estimator},
                                                       episodes, twins, parameters)
            mean = estimates.mean(0)
            variance = float((estimates - mean).square().sum(-1).mean())
            by_estimator[estimator] = mean
            row = {"objective": name, "estimator": estimator, "per_episode_variance": variance,
                   "batch_gradient_sq_norm": float(mean.square().sum()), "first_weight_mean": metrics["weight_mean"],
                   "advantage_mean": metrics["advantage_mean"], "kl_to_reference": metrics.get("kl_to_reference")}
            results["rows"].append(row)
        cosine = torch.nn.functional.cosine_similarity(by_estimator["sampled"], by_estimator["exact"], dim=0)
        results["rows"][-1]["cosine_to_sampled_batch_gradient"] = float(cosine)

    print(f"CPU: {results['cpu']}; {results['episodes']} episodes, {results['tokens_per_episode']:.1f} actions each, "
          f"sampled success {100 * results['sampled_success']:.0f}%, beta {args.beta}")
    print("| objective | estimator | tr Cov per episode | |batch grad|^2 | mean weight of a_1 | mean R - b | ratio sampled/exact |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for index, row in enumerate(results["rows"]):
        ratio = ""
        if row["estimator"] == "exact":
            ratio = f"{results['rows'][index - 1]['per_episode_variance'] / row['per_episode_variance']:.1f}x"
        print(f"| {row['objective']} | {row['estimator']} | {row['per_episode_variance']:.4g} | "
              f"{row['batch_gradient_sq_norm']:.4g} | {row['first_weight_mean']:+.3f} | {row['advantage_mean']:+.3f} | {ratio} |")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
