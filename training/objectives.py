"""RL objectives for fine-tuning a policy on rollout tensors: ReMax, PM-RLHF (plain and conditional),
KL-regularised RLHF and PPO, side by side behind one registry.

Every objective is a pure function `objective(batch, **hyperparameters) -> (loss, metrics)`.

Conventions. A rollout is a trajectory of actions a_1..a_T (cognitive actions for BWArea, tokens for
the AR baseline) over all generated positions of an episode (all turns concatenated). Tensors are
(B, T) with `mask` marking real positions. `log_probs` carry gradients (current policy);
`old_log_probs` are the sampling-time values and `ref_log_probs` the frozen reference policy's —
both without gradients. `token_rewards` (B, T) places the environment's rewards on the positions
where they were earned (the last token of a turn); their row sum is the episode return R.

The REINFORCE-family objectives share one estimator: with a per-token shaping term s_t (detached)
and a baseline b that does not depend on the sampled trajectory,
    G_t = sum_{t' >= t} (token_reward_{t'} + s_{t'}) - b
    loss = -(1/B) sum_b sum_t mask_t * G_t * log pi(a_t | s_t)
whose expectation is the exact gradient of E[R + sum_t s_t] (reward-to-go is unbiased because a
term earned before step t does not depend on a_t).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Callable

import torch

Metrics = dict[str, float]


@dataclass
class RolloutBatch:
    log_probs: torch.Tensor                      # (B, T) log pi_theta(a_t | s_t), with gradients
    mask: torch.Tensor                           # (B, T) bool, real action positions
    token_rewards: torch.Tensor                  # (B, T) environment rewards placed where earned
    old_log_probs: torch.Tensor | None = None    # (B, T) log-probs at sampling time (no gradient)
    ref_log_probs: torch.Tensor | None = None    # (B, T) frozen reference policy
    baseline_returns: torch.Tensor | None = None  # (B,) return of the greedy rollout on the same task/seed
    entropy: torch.Tensor | None = None          # (B, T) entropy of the policy's action distribution
    values: torch.Tensor | None = None           # (B, T) value model, with gradients (PPO)
    old_values: torch.Tensor | None = None       # (B, T) values at sampling time (PPO)
    advantages: torch.Tensor | None = None       # (B, T) precomputed advantages (PPO; see `gae`)
    returns: torch.Tensor | None = None          # (B, T) value targets (PPO; see `gae`)

    @property
    def episode_returns(self) -> torch.Tensor:
        return (self.token_rewards * self.mask).sum(-1)

    def select(self, rows: torch.Tensor) -> "RolloutBatch":
        """The sub-batch of the given rows (for PPO minibatches)."""
        return replace(self, **{f.name: getattr(self, f.name)[rows] for f in fields(self) if getattr(self, f.name) is not None})


def _require(batch: RolloutBatch, objective: str, *names: str) -> None:
    missing = [name for name in names if getattr(batch, name) is None]
    if missing:
        raise ValueError(f"objective {objective!r} needs rollout field(s) {missing}; the rollout engine must record them.")


def _sampling_log_probs(batch: RolloutBatch) -> torch.Tensor:
    return (batch.old_log_probs if batch.old_log_probs is not None else batch.log_probs).detach()


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.to(values.dtype)
    return (values * weights).sum() / weights.sum().clamp(min=1)


def reward_to_go(token_rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """G_t = sum_{t' >= t} r_{t'} over real positions (B, T)."""
    rewards = token_rewards * mask
    return rewards.flip(-1).cumsum(-1).flip(-1) * mask


def reinforce_loss(log_probs: torch.Tensor, weights: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """-(1/B) sum_b sum_t mask * weight * log pi: per-trajectory sums, averaged over trajectories."""
    return -(log_probs * weights.detach() * mask).sum(-1).mean()


def _reinforce(batch: RolloutBatch, shaping: torch.Tensor, baseline: torch.Tensor,
               advantage_clip: float | None) -> tuple[torch.Tensor, Metrics]:
    weights = reward_to_go(batch.token_rewards + shaping, batch.mask) - baseline[:, None]
    if advantage_clip is not None:
        weights = weights.clamp(-advantage_clip, advantage_clip)
    weights = weights * batch.mask
    loss = reinforce_loss(batch.log_probs, weights, batch.mask)
    first = weights[:, 0]  # the whole-trajectory advantage (G_1 - b)
    metrics = {
        "reward": float(batch.episode_returns.mean()),
        "advantage_mean": float(first.mean()),
        "advantage_std": float(first.std()) if first.numel() > 1 else 0.0,
        "advantage_abs_max": float(first.abs().max()),
        "shaping_per_token": float(masked_mean(shaping, batch.mask)),
    }
    return loss, metrics


def _kl_and_entropy_metrics(batch: RolloutBatch) -> Metrics:
    metrics: Metrics = {}
    if batch.ref_log_probs is not None:
        # E_pi[log pi - log pi_ref] estimated on the sampled actions
        metrics["kl_to_reference"] = float(masked_mean(_sampling_log_probs(batch) - batch.ref_log_probs, batch.mask))
    if batch.entropy is not None:
        metrics["entropy"] = float(masked_mean(batch.entropy.detach(), batch.mask))
    return metrics


def _baseline(batch: RolloutBatch, kind: str, objective: str) -> torch.Tensor:
    if kind == "greedy":
        _require(batch, objective, "baseline_returns")
        return batch.baseline_returns.to(batch.token_rewards.dtype)
    if kind == "mean":
        returns = batch.episode_returns
        count = returns.numel()
        if count < 2:
            return torch.zeros_like(returns)
        return (returns.sum() - returns) / (count - 1)  # leave-one-out: independent of the row's own sample
    if kind == "none":
        return torch.zeros_like(batch.episode_returns)
    raise ValueError(f"baseline must be 'greedy', 'mean' or 'none', got {kind!r}.")


def remax(batch: RolloutBatch, kl_coef: float = 0.0, advantage_clip: float | None = None,
          baseline: str = "greedy") -> tuple[torch.Tensor, Metrics]:
    """ReMax (Li et al., 2023): REINFORCE with the greedy rollout's return as baseline.

        A = R(y) - R(y_greedy)          (y sampled, y_greedy = argmax actions on an identical copy)
        loss = -(1/B) sum_b sum_t A_t log pi(a_t | s_t)
    with an optional per-token KL penalty to the reference, s_t = -kl_coef (log pi_t - log pi_ref_t),
    added as reward-to-go, and an optional clip of A_t to [-advantage_clip, advantage_clip].
    No value model, no ratio, no clipping of updates: one optimizer step per rollout batch.
    """
    shaping = torch.zeros_like(batch.token_rewards)
    if kl_coef:
        _require(batch, "remax", "ref_log_probs")
        shaping = -kl_coef * (_sampling_log_probs(batch) - batch.ref_log_probs)
    loss, metrics = _reinforce(batch, shaping, _baseline(batch, baseline, "remax"), advantage_clip)
    if batch.baseline_returns is not None:
        metrics["baseline_reward"] = float(batch.baseline_returns.mean())
    return loss, {**metrics, **_kl_and_entropy_metrics(batch)}


def pm_rlhf(batch: RolloutBatch, beta: float = 0.1, baseline: str = "greedy",
            advantage_clip: float | None = None) -> tuple[torch.Tensor, Metrics]:
    """Preference-matching RLHF (Xiao et al., 2024): maximise E_{y~pi}[r(x, y) - beta log pi(y | x)].

    The optimum is pi(y | x) proportional to exp(r(x, y) / beta) — the preference distribution under
    Bradley-Terry — instead of KL-RLHF's pi_ref exp(r / beta). Per token the shaping is
    s_t = -beta log pi(a_t | s_t) (sum_t log pi_t = log pi(y | x)).
    """
    shaping = -beta * _sampling_log_probs(batch)
    loss, metrics = _reinforce(batch, shaping, _baseline(batch, baseline, "pm_rlhf"), advantage_clip)
    return loss, {**metrics, **_kl_and_entropy_metrics(batch)}


def conditional_pm_rlhf(batch: RolloutBatch, beta: float = 0.1, alpha: float = 1e-3, baseline: str = "greedy",
                        advantage_clip: float | None = None) -> tuple[torch.Tensor, Metrics]:
    """Conditional PM-RLHF for language: the PM regulariser only where the reference finds the action plausible.

        s_t = -beta (log pi_t - 1[log pi_ref_t <= log alpha] log pi_ref_t)
    Actions with pi_ref > alpha get the pure -beta log pi term; implausible ones keep the KL penalty
    -beta (log pi_t - log pi_ref_t), so the policy is not pushed towards them.
    """
    _require(batch, "conditional_pm_rlhf", "ref_log_probs")
    implausible = (batch.ref_log_probs <= torch.log(torch.tensor(alpha))).to(batch.ref_log_probs.dtype)
    shaping = -beta * (_sampling_log_probs(batch) - implausible * batch.ref_log_probs)
    loss, metrics = _reinforce(batch, shaping, _baseline(batch, baseline, "conditional_pm_rlhf"), advantage_clip)
    metrics["implausible_fraction"] = float(masked_mean(implausible, batch.mask))
    return loss, {**metrics, **_kl_and_entropy_metrics(batch)}


def kl_rlhf(batch: RolloutBatch, beta: float = 0.1, baseline: str = "greedy",
            advantage_clip: float | None = None) -> tuple[torch.Tensor, Metrics]:
    """Standard KL-regularised RLHF: maximise E_{y~pi}[r(x, y)] - beta KL(pi || pi_ref).

    Optimum pi proportional to pi_ref exp(r / beta): it inherits the reference's bias and, for small beta,
    collapses onto the majority preference. Per token s_t = -beta (log pi_t - log pi_ref_t).
    """
    _require(batch, "kl_rlhf", "ref_log_probs")
    shaping = -beta * (_sampling_log_probs(batch) - batch.ref_log_probs)
    loss, metrics = _reinforce(batch, shaping, _baseline(batch, baseline, "kl_rlhf"), advantage_clip)
    return loss, {**metrics, **_kl_and_entropy_metrics(batch)}


def gae(token_rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over real positions (left-aligned, no gaps).

        delta_t = r_t + gamma V_{t+1} - V_t  (V after the last real position is 0)
        A_t = delta_t + gamma lam A_{t+1},   returns_t = A_t + V_t
    """
    values = values.detach() * mask
    rewards = token_rewards * mask
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        next_value = values[:, t + 1] if t + 1 < rewards.shape[1] else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * mask[:, t]
        advantages[:, t] = running
    return advantages, (advantages + values) * mask


def whiten(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mean = masked_mean(values, mask)
    variance = masked_mean((values - mean) ** 2, mask)
    return (values - mean) * torch.rsqrt(variance + 1e-8) * mask


def ppo(batch: RolloutBatch, clip_ratio: float = 0.2, value_coef: float = 0.5,
        value_clip: float | None = 0.2) -> tuple[torch.Tensor, Metrics]:
    """Clipped-ratio PPO with a value model (advantages and returns precomputed by `gae`).

        ratio_t = exp(log pi_t - log pi_old_t)
        L_policy = -mean_t min(ratio_t A_t, clip(ratio_t, 1 - eps, 1 + eps) A_t)
        L_value  = 0.5 mean_t max((V_t - G_t)^2, (V_old_t + clip(V_t - V_old_t, -c, c) - G_t)^2)
        loss = L_policy + value_coef L_value
    """
    _require(batch, "ppo", "old_log_probs", "values", "old_values", "advantages", "returns")
    ratio = torch.exp(batch.log_probs - batch.old_log_probs)
    unclipped = ratio * batch.advantages
    clipped = ratio.clamp(1 - clip_ratio, 1 + clip_ratio) * batch.advantages
    policy_loss = masked_mean(-torch.minimum(unclipped, clipped), batch.mask)
    value_error = (batch.values - batch.returns) ** 2
    if value_clip is not None:
        clipped_values = batch.old_values + (batch.values - batch.old_values).clamp(-value_clip, value_clip)
        value_error = torch.maximum(value_error, (clipped_values - batch.returns) ** 2)
    value_loss = 0.5 * masked_mean(value_error, batch.mask)
    metrics = {
        "reward": float(batch.episode_returns.mean()),
        "policy_loss": float(policy_loss.detach()),
        "value_loss": float(value_loss.detach()),
        "clip_fraction": float(masked_mean(((ratio - 1).abs() > clip_ratio).float(), batch.mask)),
        "approx_kl_old": float(masked_mean(batch.old_log_probs - batch.log_probs.detach(), batch.mask)),
        **_kl_and_entropy_metrics(batch),
    }
    return policy_loss + value_coef * value_loss, metrics


Objective = Callable[..., tuple[torch.Tensor, Metrics]]
OBJECTIVES: dict[str, Objective] = {
    "remax": remax,
    "pm_rlhf": pm_rlhf,
    "conditional_pm_rlhf": conditional_pm_rlhf,
    "kl_rlhf": kl_rlhf,
    "ppo": ppo,
}


def get_objective(name: str) -> Objective:
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; choose one of {sorted(OBJECTIVES)}.")
    return OBJECTIVES[name]
