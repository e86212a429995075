"""RL objectives for fine-tuning a policy on rollout tensors, behind one registry.

Each objective is a pure loss function `loss(batch, **options) -> (loss, metrics)` with its formula in the
docstring, registered by name in OBJECTIVES together with what its rollouts need (`Needs`: a greedy twin per
task, a group of samples per task, a value model, the reference policy, full action distributions) and, for
the clipped-ratio objectives, a `prepare` function that computes advantages once from the whole rollout batch
before the minibatch epochs. Adding an objective = one function + one registry entry + its test.

Conventions. A rollout is a trajectory of actions a_1..a_T (cognitive actions for BWArea, tokens for the AR
baseline) over all generated positions of an episode (all turns concatenated). Tensors are (B, T) with `mask`
marking real positions. `log_probs` carry gradients (current policy); `old_log_probs` are the sampling-time
values and `ref_log_probs` the frozen reference policy's, both without gradients. `token_rewards` (B, T) places
the environment's rewards on the positions where they were earned (the last token of a turn); their row sum is
the episode return R. `group_ids` (B,) marks samples of the same task and seed (rollout.group_size of them).

REINFORCE family (ReMax, RLOO, PM-RLHF, conditional PM-RLHF, KL-RLHF). With an episode baseline b that does not
depend on the row's own sample and a per-step regulariser s_t = phi(a_t, s_t) (e.g. PM: -beta log pi(a_t)),
they maximise E[R + sum_t s_t] with one step per rollout batch:

    A_t = clip(sum_{t' >= t} gamma^(t'-t) r_t' - b)                                 (environment part)
    estimator "sampled":  w_t = A_t + sum_{t' >= t} gamma^(t'-t) s_t'               (one sample of every term)
    estimator "exact":    w_t = A_t + sum_{t' > t} gamma^(t'-t) F_t' - c_t,  F_t = E_{a ~ pi(.|s_t)} phi(a, s_t)
    loss = -(1/B) sum_b sum_t [ w_t log pi(a_t | s_t) + F_t ]        (F_t's own term only with "exact")

F_t is the whole step's expectation, summed over the K actions (exact for BWArea's 64 actions; the entropy is
exact for any model), so a step's own regulariser carries no sampling noise; the later steps' F (which do depend
on a_t through the state) stay in the weight, minus a per-position baseline c_t = the mean of the other rows'
same quantity at position t (independent of the row's sample, hence unbiased). `placement: one_step` keeps only
each step's own term (biased, lower variance; the ReMax code's per-token KL), `placement: k3` (KL only) adds
beta * k3 = beta (exp(l) - l - 1), l = log pi_ref - log pi, to the loss as GRPO does.

Clipped-ratio family (PPO, GRPO, Dr. GRPO, REINFORCE++): `prepare` computes advantages A_t once under the
sampling policy; then for a few epochs of minibatches
    ratio_t = exp(log pi_t - log pi_old_t),   L = -agg_t min(ratio_t A_t, clip(ratio_t, 1 - eps, 1 + eps) A_t)
with `agg` a per-token mean (PPO, REINFORCE++), a per-response mean then a mean over responses (GRPO) or a
per-response sum over a mean over responses (Dr. GRPO: no length normalisation).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, fields, replace
from typing import Any, Callable

import torch

from common.errors import InvalidInput

Metrics = dict[str, float]
Options = dict[str, Any]
ESTIMATORS = ("exact", "sampled")
PLACEMENTS = ("reward_to_go", "one_step", "k3")
BASELINES = ("greedy", "group", "none")


@dataclass
class RolloutBatch:
    log_probs: torch.Tensor                      # (B, T) log pi_theta(a_t | s_t), with gradients
    mask: torch.Tensor                           # (B, T) bool, real action positions
    token_rewards: torch.Tensor                  # (B, T) environment rewards placed where earned
    old_log_probs: torch.Tensor | None = None    # (B, T) log-probs at sampling time (no gradient)
    ref_log_probs: torch.Tensor | None = None    # (B, T) frozen reference policy
    baseline_returns: torch.Tensor | None = None  # (B,) return of the greedy rollout on the same task/seed
    group_ids: torch.Tensor | None = None        # (B,) long, equal for samples of the same task and seed
    entropy: torch.Tensor | None = None          # (B, T) entropy of the policy's action distribution, with gradients
    log_policy: torch.Tensor | None = None       # (B, T, K) the policy's whole log-distribution, with gradients
    ref_log_policy: torch.Tensor | None = None   # (B, T, K) the reference's whole log-distribution
    values: torch.Tensor | None = None           # (B, T) value model, with gradients (PPO)
    old_values: torch.Tensor | None = None       # (B, T) values at sampling time (PPO)
    advantages: torch.Tensor | None = None       # (B, T) advantages computed by the objective's `prepare`
    returns: torch.Tensor | None = None          # (B, T) value targets (PPO)

    @property
    def episode_returns(self) -> torch.Tensor:
        return (self.token_rewards * self.mask).sum(-1)

    def select(self, rows: torch.Tensor) -> "RolloutBatch":
        """The sub-batch of the given rows (for minibatches)."""
        return replace(self, **{f.name: getattr(self, f.name)[rows] for f in fields(self) if getattr(self, f.name) is not None})


def _require(batch: RolloutBatch, objective: str, *names: str) -> None:
    missing = [name for name in names if getattr(batch, name) is None]
    if missing:
        raise InvalidInput(f"objective {objective!r} needs rollout field(s) {missing}; the rollout engine must record them.")


def _sampling_log_probs(batch: RolloutBatch) -> torch.Tensor:
    return (batch.old_log_probs if batch.old_log_probs is not None else batch.log_probs).detach()


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.to(values.dtype)
    return (values * weights).sum() / weights.sum().clamp(min=1)


def reward_to_go(token_rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """G_t = sum_{t' >= t} gamma^(t' - t) r_t' over real positions (B, T)."""
    rewards = token_rewards * mask
    if gamma == 1.0:
        return rewards.flip(-1).cumsum(-1).flip(-1) * mask
    returns = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        running = rewards[:, t] + gamma * running
        returns[:, t] = running
    return returns * mask


def reinforce_loss(log_probs: torch.Tensor, weights: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """-(1/B) sum_b sum_t mask * weight * log pi: per-trajectory sums, averaged over trajectories."""
    return -(log_probs * weights.detach() * mask).sum(-1).mean()


# --- baselines -------------------------------------------------------------------------------------

def group_statistics(values: torch.Tensor, group_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row: (mean over its group, leave-one-out mean over the rest of its group, std over its group (n - 1)).

    Rows of a group of one get a leave-one-out mean and a std of 0."""
    _, inverse = torch.unique(group_ids, return_inverse=True)
    groups = int(inverse.max()) + 1 if inverse.numel() else 0
    zeros = values.new_zeros(groups)
    count = zeros.index_add(0, inverse, torch.ones_like(values))
    total = zeros.index_add(0, inverse, values)
    squares = zeros.index_add(0, inverse, values * values)
    n, s = count[inverse], total[inverse]
    mean = s / n
    others = (n - 1).clamp(min=1)
    leave_one_out = torch.where(n > 1, (s - values) / others, torch.zeros_like(values))
    variance = ((squares[inverse] - n * mean * mean) / others).clamp(min=0)
    return mean, leave_one_out, torch.where(n > 1, variance.sqrt(), torch.zeros_like(values))


def episode_baseline(batch: RolloutBatch, kind: str, objective: str) -> torch.Tensor:
    """b per row: the greedy twin's return, the leave-one-out mean of the row's group (same task and seed), or 0."""
    if kind == "greedy":
        _require(batch, objective, "baseline_returns")
        return batch.baseline_returns.to(batch.token_rewards.dtype)
    if kind == "group":
        _require(batch, objective, "group_ids")
        return group_statistics(batch.episode_returns, batch.group_ids)[1]
    if kind == "none":
        return torch.zeros_like(batch.episode_returns)
    if kind == "mean":
        raise InvalidInput("baseline 'mean' was removed: it averaged the returns of other tasks; use 'group' (leave-one-out "
                           "over rollout.group_size samples of the same task) or 'greedy'.")
    raise InvalidInput(f"baseline must be one of {BASELINES}, got {kind!r}.")


def position_baseline(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """c_t per row: the mean of the other rows' values at position t (rows real at t); 0 where no other row is."""
    weights = mask.to(values.dtype)
    total = (values * weights).sum(0, keepdim=True)
    count = weights.sum(0, keepdim=True)
    others = (count - weights).clamp(min=1)
    return torch.where(count - weights > 0, (total - values * weights) / others, torch.zeros_like(values)) * weights


# --- regularisers ---------------------------------------------------------------------------------

@dataclass
class Regulariser:
    """A per-step regulariser phi: `sampled` = phi(a_t, s_t) at the sampled actions (B, T, no gradient); `exact` =
    F_t = E_{a ~ pi(.|s_t)} phi(a, s_t) (B, T, with gradients), None when the full distributions are missing."""

    sampled: torch.Tensor
    exact: torch.Tensor | None
    kind: str
    coef: float


def _implausible(log_ref: torch.Tensor, alpha: float, alpha_convention: str) -> torch.Tensor:
    if alpha_convention not in ("threshold", "official"):
        raise InvalidInput(f"alpha_convention must be 'threshold' or 'official', got {alpha_convention!r}.")
    if alpha_convention == "official" and alpha == 0:
        return torch.ones_like(log_ref)  # the authors' code: alpha = 0 switches PM off, leaving KL-RLHF
    return (log_ref <= torch.log(torch.tensor(alpha, dtype=log_ref.dtype, device=log_ref.device))).to(log_ref.dtype)


def regulariser(batch: RolloutBatch, kind: str, coef: float, objective: str, alpha: float = 0.0,
                alpha_convention: str = "threshold", exact: bool = True) -> Regulariser:
    """phi for kind "pm" (-coef log pi), "kl" (-coef (log pi - log pi_ref)) or "conditional_pm"
    (-coef (log pi - 1[pi_ref <= alpha] log pi_ref)); F_t exact from the entropy or the full distributions."""
    log_pi = _sampling_log_probs(batch)
    expected = None
    if kind == "pm":
        sampled = -coef * log_pi
        if exact:
            _require(batch, objective, "entropy")
            expected = coef * batch.entropy
        return Regulariser(sampled, expected, kind, coef)
    _require(batch, objective, "ref_log_probs")
    if kind == "kl":
        sampled = -coef * (log_pi - batch.ref_log_probs)
        if exact:
            _require(batch, objective, "log_policy", "ref_log_policy")
            expected = -coef * (batch.log_policy.exp() * (batch.log_policy - batch.ref_log_policy)).sum(-1)
        return Regulariser(sampled, expected, kind, coef)
    if kind == "conditional_pm":
        sampled = -coef * (log_pi - _implausible(batch.ref_log_probs, alpha, alpha_convention) * batch.ref_log_probs)
        if exact:
            _require(batch, objective, "log_policy", "ref_log_policy")
            kept = _implausible(batch.ref_log_policy, alpha, alpha_convention) * batch.ref_log_policy
            expected = -coef * (batch.log_policy.exp() * (batch.log_policy - kept)).sum(-1)
        return Regulariser(sampled, expected, kind, coef)
    raise InvalidInput(f"unknown regulariser {kind!r}.")


def k3(batch: RolloutBatch) -> torch.Tensor:
    """k3 = exp(l) - l - 1 with l = log pi_ref - log pi at the sampled actions (B, T, with gradients): a
    non-negative estimate of KL(pi || pi_ref); in a loss its gradient is that of KL(pi_ref || pi) near pi_ref."""
    log_ratio = batch.ref_log_probs - batch.log_probs
    return torch.exp(log_ratio) - log_ratio - 1


def _check_estimator(estimator: str, placement: str, gamma: float) -> None:
    if estimator not in ESTIMATORS:
        raise InvalidInput(f"estimator must be one of {ESTIMATORS}, got {estimator!r}.")
    if placement not in PLACEMENTS:
        raise InvalidInput(f"placement must be one of {PLACEMENTS}, got {placement!r}.")
    if not 0 < gamma <= 1:
        raise InvalidInput(f"gamma must be in (0, 1], got {gamma}.")


def _reinforce(batch: RolloutBatch, baseline: torch.Tensor, term: Regulariser | None, estimator: str, placement: str,
               gamma: float, advantage_clip: float | None) -> tuple[torch.Tensor, Metrics]:
    """The REINFORCE-family estimator of the module docstring."""
    mask = batch.mask
    advantage = reward_to_go(batch.token_rewards, mask, gamma) - baseline[:, None]
    if advantage_clip is not None:
        advantage = advantage.clamp(-advantage_clip, advantage_clip)  # r - b only, as the ReMax code: not the regulariser
    weights = advantage * mask
    direct = torch.zeros((), device=mask.device)
    if term is not None and placement == "k3":
        if term.kind != "kl":
            raise InvalidInput("placement 'k3' is a KL estimator; use it with a KL penalty (kl_rlhf, remax/rloo kl_coef).")
        direct = -term.coef * (k3(batch) * mask).sum(-1).mean()
    elif term is not None and estimator == "sampled":
        weights = weights + (reward_to_go(term.sampled, mask, gamma) if placement == "reward_to_go" else term.sampled * mask)
    elif term is not None:
        exact = term.exact * mask
        direct = exact.sum(-1).mean()
        if placement == "reward_to_go":
            future = reward_to_go(exact.detach(), mask, gamma) - exact.detach()   # sum_{t' > t} gamma^(t'-t) F_t'
            weights = weights + (future - position_baseline(future, mask)) * mask
    loss = reinforce_loss(batch.log_probs, weights, mask) - direct
    first = weights[:, 0]
    metrics = {
        "reward": float(batch.episode_returns.mean()),
        "advantage_mean": float(advantage[:, 0].mean()),
        "weight_mean": float(first.mean()),
        "weight_std": float(first.std()) if first.numel() > 1 else 0.0,
        "weight_abs_max": float(first.abs().max()),
        "zero_advantage_share": float((advantage[:, 0] == 0).float().mean()),
    }
    if term is not None:
        metrics["regulariser_per_step"] = float(masked_mean(term.sampled, mask))
    return loss, metrics


def diagnostics(batch: RolloutBatch) -> Metrics:
    """KL to the reference (exact from the full distributions when present, else estimated on the sampled actions)
    and the policy's mean entropy."""
    metrics: Metrics = {}
    if batch.log_policy is not None and batch.ref_log_policy is not None:
        log_policy = batch.log_policy.detach()
        exact = (log_policy.exp() * (log_policy - batch.ref_log_policy)).sum(-1)
        metrics["kl_to_reference"] = float(masked_mean(exact, batch.mask))
    elif batch.ref_log_probs is not None:
        metrics["kl_to_reference"] = float(masked_mean(_sampling_log_probs(batch) - batch.ref_log_probs, batch.mask))
    if batch.entropy is not None:
        metrics["entropy"] = float(masked_mean(batch.entropy.detach(), batch.mask))
    return metrics


# --- the REINFORCE family ------------------------------------------------------------------------------

def remax(batch: RolloutBatch, kl_coef: float = 0.0, baseline: str = "greedy", advantage_clip: float | None = None,
          estimator: str = "exact", placement: str = "reward_to_go", gamma: float = 1.0) -> tuple[torch.Tensor, Metrics]:
    """ReMax (Li et al., 2023): REINFORCE with the greedy rollout's return as baseline.

        A = R(y) - R(y_greedy)          (y sampled, y_greedy = argmax actions on an identical copy)
        loss = -(1/B) sum_b sum_t A_t log pi(a_t | s_t)
    with an optional KL penalty phi = -kl_coef (log pi - log pi_ref) (module docstring: estimator, placement) and
    an optional clip of A to [-advantage_clip, advantage_clip]. With rollout.group_size n > 1 the group shares its
    greedy baseline. No value model, no ratio: one optimizer step per rollout batch.
    """
    _check_estimator(estimator, placement, gamma)
    term = regulariser(batch, "kl", kl_coef, "remax", exact=estimator == "exact" and placement != "k3") if kl_coef else None
    loss, metrics = _reinforce(batch, episode_baseline(batch, baseline, "remax"), term, estimator, placement, gamma,
                               advantage_clip)
    if batch.baseline_returns is not None:
        metrics["baseline_reward"] = float(batch.baseline_returns.mean())
    return loss, {**metrics, **diagnostics(batch)}


def rloo(batch: RolloutBatch, kl_coef: float = 0.0, advantage_clip: float | None = None, estimator: str = "exact",
         placement: str = "reward_to_go", gamma: float = 1.0) -> tuple[torch.Tensor, Metrics]:
    """REINFORCE leave-one-out (Ahmadian et al., 2024): n samples of the same task, each baselined by the others.

        A_i = R_i - (1/(n-1)) sum_{j != i} R_j,     loss = -(1/B) sum_i sum_t A_i,t log pi(a_t | s_t)
    Unbiased (the others are independent of sample i); KL penalty and clip as in `remax`.
    """
    _check_estimator(estimator, placement, gamma)
    term = regulariser(batch, "kl", kl_coef, "rloo", exact=estimator == "exact" and placement != "k3") if kl_coef else None
    loss, metrics = _reinforce(batch, episode_baseline(batch, "group", "rloo"), term, estimator, placement, gamma,
                               advantage_clip)
    return loss, {**metrics, **diagnostics(batch)}


def pm_rlhf(batch: RolloutBatch, beta: float = 0.1, baseline: str = "greedy", advantage_clip: float | None = None,
            estimator: str = "exact", placement: str = "reward_to_go", gamma: float = 1.0) -> tuple[torch.Tensor, Metrics]:
    """Preference-matching RLHF (Xiao et al., 2024): maximise E_{y~pi}[r(x, y) - beta log pi(y | x)].

    The optimum is pi(y | x) proportional to exp(r(x, y) / beta) — the preference distribution under
    Bradley-Terry — instead of KL-RLHF's pi_ref exp(r / beta). Per step phi = -beta log pi(a_t | s_t), whose exact
    expectation is beta H(pi(.|s_t)) (module docstring).
    """
    _check_estimator(estimator, placement, gamma)
    if placement == "k3":
        raise InvalidInput("placement 'k3' is a KL estimator; PM-RLHF takes reward_to_go or one_step.")
    term = regulariser(batch, "pm", beta, "pm_rlhf", exact=estimator == "exact")
    loss, metrics = _reinforce(batch, episode_baseline(batch, baseline, "pm_rlhf"), term, estimator, placement, gamma,
                               advantage_clip)
    return loss, {**metrics, **diagnostics(batch)}


def conditional_pm_rlhf(batch: RolloutBatch, beta: float = 0.1, alpha: float = 1e-3, alpha_convention: str = "threshold",
                        baseline: str = "greedy", advantage_clip: float | None = None, estimator: str = "exact",
                        placement: str = "reward_to_go", gamma: float = 1.0) -> tuple[torch.Tensor, Metrics]:
    """Conditional PM-RLHF for language: the PM regulariser only where the reference finds the action plausible.

        phi(a, s) = -beta (log pi(a|s) - 1[pi_ref(a|s) <= alpha] log pi_ref(a|s))
    Actions with pi_ref > alpha get the pure -beta log pi term; implausible ones keep the KL penalty
    -beta (log pi - log pi_ref), so the policy is not pushed towards them. alpha_convention "threshold" (default):
    alpha is that plausibility threshold, so alpha = 0 makes every action plausible = plain PM-RLHF. "official": as
    the authors' code, alpha = 0 means the KL baseline (every action keeps the KL term); for alpha > 0 both agree.
    """
    _check_estimator(estimator, placement, gamma)
    if placement == "k3":
        raise InvalidInput("placement 'k3' is a KL estimator; conditional PM-RLHF takes reward_to_go or one_step.")
    term = regulariser(batch, "conditional_pm", beta, "conditional_pm_rlhf", alpha, alpha_convention, estimator == "exact")
    loss, metrics = _reinforce(batch, episode_baseline(batch, baseline, "conditional_pm_rlhf"), term, estimator,
                               placement, gamma, advantage_clip)
    metrics["implausible_fraction"] = float(masked_mean(_implausible(batch.ref_log_probs, alpha, alpha_convention), batch.mask))
    return loss, {**metrics, **diagnostics(batch)}


def kl_rlhf(batch: RolloutBatch, beta: float = 0.1, baseline: str = "greedy", advantage_clip: float | None = None,
            estimator: str = "exact", placement: str = "reward_to_go", gamma: float = 1.0) -> tuple[torch.Tensor, Metrics]:
    """Standard KL-regularised RLHF: maximise E_{y~pi}[r(x, y)] - beta KL(pi || pi_ref).

    Optimum pi proportional to pi_ref exp(r / beta): it inherits the reference's bias and, for small beta,
    collapses onto the majority preference. Per step phi = -beta (log pi - log pi_ref), exact expectation
    -beta KL(pi(.|s_t) || pi_ref(.|s_t)).
    """
    _check_estimator(estimator, placement, gamma)
    term = regulariser(batch, "kl", beta, "kl_rlhf", exact=estimator == "exact" and placement != "k3")
    loss, metrics = _reinforce(batch, episode_baseline(batch, baseline, "kl_rlhf"), term, estimator, placement, gamma,
                               advantage_clip)
    return loss, {**metrics, **diagnostics(batch)}


# --- the clipped-ratio family -----------------------------------------------------------------------

AGGREGATIONS = ("token_mean", "sequence_mean", "sequence_sum")


def clipped_surrogate(batch: RolloutBatch, clip_ratio: float, aggregate: str) -> tuple[torch.Tensor, Metrics]:
    """-agg min(ratio A, clip(ratio, 1 - eps, 1 + eps) A) over real positions, with batch.advantages (B, T)."""
    ratio = torch.exp(batch.log_probs - batch.old_log_probs)
    surrogate = torch.minimum(ratio * batch.advantages, ratio.clamp(1 - clip_ratio, 1 + clip_ratio) * batch.advantages)
    loss = -aggregate_positions(surrogate, batch.mask, aggregate)
    return loss, {
        "policy_loss": float(loss.detach()),
        "clip_fraction": float(masked_mean(((ratio.detach() - 1).abs() > clip_ratio).float(), batch.mask)),
        "approx_kl_old": float(masked_mean(batch.old_log_probs - batch.log_probs.detach(), batch.mask)),
    }


def aggregate_positions(values: torch.Tensor, mask: torch.Tensor, aggregate: str) -> torch.Tensor:
    """token_mean: mean over all real positions; sequence_mean: mean over each row's positions, then over rows;
    sequence_sum: sum over each row's positions, mean over rows."""
    if aggregate == "token_mean":
        return masked_mean(values, mask)
    weights = mask.to(values.dtype)
    if aggregate == "sequence_mean":
        return ((values * weights).sum(-1) / weights.sum(-1).clamp(min=1)).mean()
    if aggregate == "sequence_sum":
        return (values * weights).sum(-1).mean()
    raise InvalidInput(f"aggregate must be one of {AGGREGATIONS}, got {aggregate!r}.")


def group_advantages(batch: RolloutBatch, normalise_std: bool, eps: float = 1e-6) -> RolloutBatch:
    """A_i = (R_i - mean_group R) [/ (std_group R + eps)] on every position of response i."""
    _require(batch, "grpo", "group_ids")
    mean, _, std = group_statistics(batch.episode_returns, batch.group_ids)
    advantage = batch.episode_returns - mean
    if normalise_std:
        advantage = advantage / (std + eps)
    return replace(batch, advantages=advantage[:, None] * batch.mask)


def grpo_advantages(batch: RolloutBatch) -> RolloutBatch:
    return group_advantages(batch, normalise_std=True)


def dr_grpo_advantages(batch: RolloutBatch) -> RolloutBatch:
    return group_advantages(batch, normalise_std=False)


def _ratio_objective(batch: RolloutBatch, name: str, clip_ratio: float, kl_coef: float, aggregate: str
                     ) -> tuple[torch.Tensor, Metrics]:
    _require(batch, name, "old_log_probs", "advantages")
    loss, metrics = clipped_surrogate(batch, clip_ratio, aggregate)
    if kl_coef:
        _require(batch, name, "ref_log_probs")
        penalty = aggregate_positions(k3(batch), batch.mask, aggregate)
        loss = loss + kl_coef * penalty
        metrics["k3_penalty"] = float(penalty.detach())
    metrics["reward"] = float(batch.episode_returns.mean())
    return loss, {**metrics, **diagnostics(batch)}


def grpo(batch: RolloutBatch, clip_ratio: float = 0.2, kl_coef: float = 0.04) -> tuple[torch.Tensor, Metrics]:
    """GRPO (Shao et al., 2024): group-normalised advantages, clipped ratio, KL to the reference as a k3 loss term.

        A_i = (R_i - mean_j R_j) / (std_j R_j + 1e-6)    over the n samples of the same task
        loss = -mean_i (1/|y_i|) sum_t min(ratio A_i, clip(ratio) A_i) + kl_coef mean_i (1/|y_i|) sum_t k3_t
    """
    return _ratio_objective(batch, "grpo", clip_ratio, kl_coef, "sequence_mean")


def dr_grpo(batch: RolloutBatch, clip_ratio: float = 0.2, kl_coef: float = 0.0) -> tuple[torch.Tensor, Metrics]:
    """Dr. GRPO (Liu et al., 2025): GRPO without the std division and without the per-response length
    normalisation, both of which bias the objective.

        A_i = R_i - mean_j R_j,    loss = -mean_i sum_t min(ratio A_i, clip(ratio) A_i) [+ kl_coef mean_i sum_t k3_t]
    """
    return _ratio_objective(batch, "dr_grpo", clip_ratio, kl_coef, "sequence_sum")


def whiten(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mean = masked_mean(values, mask)
    variance = masked_mean((values - mean) ** 2, mask)
    return (values - mean) * torch.rsqrt(variance + 1e-8) * mask


def reinforce_pp_advantages(batch: RolloutBatch, kl_coef: float = 0.01, gamma: float = 1.0) -> RolloutBatch:
    """REINFORCE++: per-token reward r_t - kl_coef (log pi_old - log pi_ref)_t, its reward-to-go, whitened over
    the whole batch (not per group)."""
    rewards = batch.token_rewards
    if kl_coef:
        _require(batch, "reinforce_pp", "ref_log_probs")
        rewards = rewards - kl_coef * (_sampling_log_probs(batch) - batch.ref_log_probs)
    return replace(batch, advantages=whiten(reward_to_go(rewards, batch.mask, gamma), batch.mask))


def reinforce_pp(batch: RolloutBatch, clip_ratio: float = 0.2) -> tuple[torch.Tensor, Metrics]:
    """REINFORCE++ (Hu, 2025): no critic; batch-normalised reward-to-go advantages with the KL folded into the
    per-token reward (`reinforce_pp_advantages`), PPO's clipped ratio, a per-token mean.

        loss = -mean_t min(ratio_t A_t, clip(ratio_t) A_t)
    """
    return _ratio_objective(batch, "reinforce_pp", clip_ratio, 0.0, "token_mean")


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


def ppo_advantages(batch: RolloutBatch, gamma: float = 1.0, lam: float = 0.95, kl_coef: float = 0.0,
                   pm_coef: float = 0.0) -> RolloutBatch:
    """GAE on the shaped per-token reward r_t - kl_coef (log pi_old - log pi_ref)_t - pm_coef log pi_old_t (PPO as in
    RLHF; pm_coef > 0 is PM-RLHF as published: PPO with the PM term), advantages whitened over the batch."""
    _require(batch, "ppo", "old_values")
    rewards = batch.token_rewards
    if kl_coef:
        _require(batch, "ppo", "ref_log_probs")
        rewards = rewards - kl_coef * (_sampling_log_probs(batch) - batch.ref_log_probs)
    if pm_coef:
        rewards = rewards - pm_coef * _sampling_log_probs(batch)
    advantages, returns = gae(rewards, batch.old_values, batch.mask, gamma, lam)
    return replace(batch, advantages=whiten(advantages, batch.mask), returns=returns)


def ppo(batch: RolloutBatch, clip_ratio: float = 0.2, value_coef: float = 0.5,
        value_clip: float | None = 0.2) -> tuple[torch.Tensor, Metrics]:
    """Clipped-ratio PPO with a value model (advantages and returns from `ppo_advantages`).

        ratio_t = exp(log pi_t - log pi_old_t)
        L_policy = -mean_t min(ratio_t A_t, clip(ratio_t, 1 - eps, 1 + eps) A_t)
        L_value  = 0.5 mean_t max((V_t - G_t)^2, (V_old_t + clip(V_t - V_old_t, -c, c) - G_t)^2)
        loss = L_policy + value_coef L_value
    """
    _require(batch, "ppo", "old_log_probs", "values", "old_values", "advantages", "returns")
    policy_loss, metrics = clipped_surrogate(batch, clip_ratio, "token_mean")
    value_error = (batch.values - batch.returns) ** 2
    if value_clip is not None:
        clipped_values = batch.old_values + (batch.values - batch.old_values).clamp(-value_clip, value_clip)
        value_error = torch.maximum(value_error, (clipped_values - batch.returns) ** 2)
    value_loss = 0.5 * masked_mean(value_error, batch.mask)
    metrics.update({"reward": float(batch.episode_returns.mean()), "value_loss": float(value_loss.detach()),
                    **diagnostics(batch)})
    return policy_loss + value_coef * value_loss, metrics


# --- the registry -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Needs:
    """What an objective's rollouts must provide."""

    greedy_twin: bool = False          # one greedy (argmax) episode per task, on an identical copy of its environment
    min_group_size: int = 1            # rollout.group_size at least this
    value_model: bool = False          # a learned V(s_t) (PPO)
    reference: bool = False            # log pi_ref of the sampled actions (fine-tuning records them always, for the KL log)
    full_distributions: bool = False   # the policy's and the reference's whole (B, T, K) log-distributions


def _regularised(options: Options, coef: str, default: float, kind: str, **needs: Any) -> Needs:
    """Needs of a REINFORCE-family objective whose regulariser of `kind` has its coefficient in options[coef]."""
    active = bool(options.get(coef, default))
    exact = options.get("estimator", "exact") == "exact" and options.get("placement", "reward_to_go") != "k3"
    reference = active and kind != "pm"
    return Needs(reference=reference, full_distributions=reference and exact, **needs)


@dataclass(frozen=True)
class Objective:
    """A registry entry: the loss, what its rollouts need given its options, the advantage pass of the clipped-ratio
    objectives (None: one step per batch) and the option holding its KL coefficient (for adaptive KL control)."""

    name: str
    loss: Callable[..., tuple[torch.Tensor, Metrics]]
    needs: Callable[[Options], Needs]
    prepare: Callable[..., RolloutBatch] | None = None
    kl_option: str | None = None

    def option_names(self) -> set[str]:
        functions = [self.loss] + ([self.prepare] if self.prepare is not None else [])
        return {name for f in functions for name in list(inspect.signature(f).parameters)[1:]}

    def check_options(self, options: Options) -> None:
        unknown = sorted(set(options) - self.option_names())
        if unknown:
            raise InvalidInput(f"objective {self.name!r} has no option(s) {unknown}; its options are {sorted(self.option_names())}.")

    def _call(self, function: Callable, batch: RolloutBatch, options: Options):
        """`function` with the options it declares (all of them if it takes **options)."""
        parameters = list(inspect.signature(function).parameters.values())[1:]
        if any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters):
            return function(batch, **options)
        return function(batch, **{k: v for k, v in options.items() if k in {p.name for p in parameters}})

    def compute_loss(self, batch: RolloutBatch, options: Options) -> tuple[torch.Tensor, Metrics]:
        return self._call(self.loss, batch, options)

    def prepare_batch(self, batch: RolloutBatch, options: Options) -> RolloutBatch:
        return self._call(self.prepare, batch, options)


OBJECTIVES: dict[str, Objective] = {objective.name: objective for objective in (
    Objective("remax", remax, lambda o: _regularised(o, "kl_coef", 0.0, "kl", greedy_twin=o.get("baseline", "greedy") == "greedy",
                                                     min_group_size=2 if o.get("baseline") == "group" else 1),
              kl_option="kl_coef"),
    Objective("rloo", rloo, lambda o: _regularised(o, "kl_coef", 0.0, "kl", min_group_size=2), kl_option="kl_coef"),
    Objective("pm_rlhf", pm_rlhf, lambda o: _regularised(o, "beta", 0.1, "pm", greedy_twin=o.get("baseline", "greedy") == "greedy",
                                                         min_group_size=2 if o.get("baseline") == "group" else 1)),
    Objective("conditional_pm_rlhf", conditional_pm_rlhf,
              lambda o: _regularised(o, "beta", 0.1, "conditional_pm", greedy_twin=o.get("baseline", "greedy") == "greedy",
                                     min_group_size=2 if o.get("baseline") == "group" else 1)),
    Objective("kl_rlhf", kl_rlhf, lambda o: _regularised(o, "beta", 0.1, "kl", greedy_twin=o.get("baseline", "greedy") == "greedy",
                                                         min_group_size=2 if o.get("baseline") == "group" else 1),
              kl_option="beta"),
    Objective("grpo", grpo, lambda o: Needs(min_group_size=2, reference=bool(o.get("kl_coef", 0.04))), grpo_advantages,
              kl_option="kl_coef"),
    Objective("dr_grpo", dr_grpo, lambda o: Needs(min_group_size=2, reference=bool(o.get("kl_coef", 0.0))),
              dr_grpo_advantages, kl_option="kl_coef"),
    Objective("reinforce_pp", reinforce_pp, lambda o: Needs(reference=bool(o.get("kl_coef", 0.01))), reinforce_pp_advantages,
              kl_option="kl_coef"),
    Objective("ppo", ppo, lambda o: Needs(value_model=True, reference=bool(o.get("kl_coef", 0.0))), ppo_advantages,
              kl_option="kl_coef"),
)}


def get_objective(name: str) -> Objective:
    if name not in OBJECTIVES:
        raise InvalidInput(f"unknown objective {name!r}; choose one of {sorted(OBJECTIVES)}.")
    return OBJECTIVES[name]
