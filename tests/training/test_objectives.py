import itertools

import pytest
import torch

from training.objectives import (OBJECTIVES, Needs, RolloutBatch, conditional_pm_rlhf, dr_grpo, gae, get_objective,
                                 group_statistics, grpo, grpo_advantages, dr_grpo_advantages, kl_rlhf, pm_rlhf, position_baseline,
                                 ppo, ppo_advantages, reinforce_pp_advantages, remax, reward_to_go, rloo)

ESTIMATORS = ["exact", "sampled"]


def kl(p: torch.Tensor, q: torch.Tensor) -> float:
    return float((p * (p.log() - q.log())).sum())


def entropy(log_p: torch.Tensor) -> torch.Tensor:
    return -(log_p.exp() * log_p).sum(-1)


# --- a bandit: one action per episode --------------------------------------------------------------
REWARDS = torch.tensor([1.0, 0.0, -0.5, 0.2, 0.5])
SKEWED_REFERENCE = torch.tensor([0.0, 2.0, 0.0, 0.0, 0.0]).log_softmax(-1)  # reference prefers arm 1


def train_bandit(objective, steps=300, batch=512, lr=0.05, seed=0, **hyper):
    torch.manual_seed(seed)
    logits = SKEWED_REFERENCE.clone().requires_grad_()
    optimizer = torch.optim.Adam([logits], lr=lr)
    for _ in range(steps):
        log_pi = logits.log_softmax(-1)
        arms = torch.multinomial(log_pi.exp().detach(), batch, replacement=True)
        greedy = int(log_pi.argmax())
        rollout = RolloutBatch(
            log_probs=log_pi[arms][:, None], mask=torch.ones(batch, 1, dtype=torch.bool),
            token_rewards=REWARDS[arms][:, None], old_log_probs=log_pi[arms][:, None].detach(),
            ref_log_probs=SKEWED_REFERENCE[arms][:, None], baseline_returns=REWARDS[greedy].expand(batch),
            entropy=entropy(log_pi).expand(batch)[:, None], log_policy=log_pi.expand(batch, 1, -1),
            ref_log_policy=SKEWED_REFERENCE.expand(batch, 1, -1),
        )
        loss, _ = objective(rollout, **hyper)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return logits.detach().softmax(-1)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_pm_rlhf_matches_the_preference_distribution_on_a_bandit(estimator):
    policy = train_bandit(pm_rlhf, beta=1.0, estimator=estimator)
    target = (REWARDS / 1.0).softmax(-1)
    assert kl(target, policy) < 0.05
    # Bradley-Terry preference of arm 0 over arm 3 is reproduced by the policy's odds
    assert abs(policy[0] / (policy[0] + policy[3]) - torch.sigmoid(REWARDS[0] - REWARDS[3])) < 0.05


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_kl_rlhf_with_a_skewed_reference_collapses_onto_the_majority_choice(estimator):
    policy = train_bandit(kl_rlhf, beta=0.1, lr=0.1, estimator=estimator)
    assert policy[0] > 0.95  # the highest-reward arm takes (almost) everything
    assert kl((REWARDS / 1.0).softmax(-1), policy) > 1.0
    # at beta = 1 KL-RLHF instead inherits the reference's bias: optimum pi_ref * exp(r)
    biased = train_bandit(kl_rlhf, beta=1.0, estimator=estimator)
    optimum = (SKEWED_REFERENCE + REWARDS).softmax(-1)
    assert kl(optimum, biased) < 0.05
    assert biased[1] > 2 * (REWARDS / 1.0).softmax(-1)[1]


# --- a tiny token MDP: two tokens from a vocabulary of three ---------------------------------------
SEQUENCES = list(itertools.product(range(3), repeat=2))
SEQUENCE_REWARDS = torch.tensor([0.9, -0.3, 0.1, 0.4, 1.2, -1.0, 0.0, 0.6, 0.3])


class TabularPolicy(torch.nn.Module):
    def __init__(self, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.first = torch.nn.Parameter(torch.randn(3, generator=generator))
        self.second = torch.nn.Parameter(torch.randn(3, 3, generator=generator))

    def distributions(self, sequences: torch.Tensor) -> torch.Tensor:
        """(B, 2) tokens -> (B, 2, 3) log-distribution of each position given its prefix."""
        first = self.first.log_softmax(-1).expand(len(sequences), -1)
        second = self.second.log_softmax(-1)[sequences[:, 0]]
        return torch.stack([first, second], dim=1)

    def log_probs(self, sequences: torch.Tensor) -> torch.Tensor:
        """(B, 2) tokens -> (B, 2) log pi of each token given its prefix."""
        return self.distributions(sequences).gather(-1, sequences[..., None]).squeeze(-1)

    def sequence_probs(self) -> torch.Tensor:
        return self.log_probs(torch.tensor(SEQUENCES)).sum(-1).exp()

    def sample(self, count: int) -> torch.Tensor:
        index = torch.multinomial(self.sequence_probs().detach(), count, replacement=True)
        return torch.tensor(SEQUENCES)[index]

    def greedy(self) -> torch.Tensor:
        first = int(self.first.argmax())
        return torch.tensor([[first, int(self.second[first].argmax())]])


REFERENCE = TabularPolicy(seed=1)


def rollout(policy: TabularPolicy, sequences: torch.Tensor, group_ids: list[int] | None = None) -> RolloutBatch:
    index = sequences[:, 0] * 3 + sequences[:, 1]
    batch = len(sequences)
    rewards = torch.zeros(batch, 2)
    rewards[:, 1] = SEQUENCE_REWARDS[index]  # terminal reward on the last token
    log_policy = policy.distributions(sequences)
    log_probs = log_policy.gather(-1, sequences[..., None]).squeeze(-1)
    greedy = policy.greedy()
    return RolloutBatch(
        log_probs=log_probs, mask=torch.ones(batch, 2, dtype=torch.bool), token_rewards=rewards,
        old_log_probs=log_probs.detach(), ref_log_probs=REFERENCE.log_probs(sequences).detach(),
        baseline_returns=SEQUENCE_REWARDS[greedy[0, 0] * 3 + greedy[0, 1]].expand(batch),
        group_ids=None if group_ids is None else torch.tensor(group_ids), entropy=entropy(log_policy),
        log_policy=log_policy, ref_log_policy=REFERENCE.distributions(sequences).detach(),
    )


def train_mdp(objective, steps=300, batch=512, lr=0.1, **hyper):
    torch.manual_seed(0)
    policy = TabularPolicy(seed=0)
    optimizer = torch.optim.Adam(policy.parameters(), lr=lr)
    for _ in range(steps):
        loss, _ = objective(rollout(policy, policy.sample(batch)), **hyper)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return policy.sequence_probs().detach()


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_pm_rlhf_converges_to_softmax_of_sequence_rewards(estimator):
    beta = 0.5
    assert kl((SEQUENCE_REWARDS / beta).softmax(-1), train_mdp(pm_rlhf, beta=beta, estimator=estimator)) < 0.05


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_kl_rlhf_converges_to_reference_tilted_by_rewards(estimator):
    beta = 0.5
    optimum = (REFERENCE.sequence_probs().detach().log() + SEQUENCE_REWARDS / beta).softmax(-1)
    assert kl(optimum, train_mdp(kl_rlhf, beta=beta, estimator=estimator)) < 0.05


def parameters_gradient(loss: torch.Tensor, policy: TabularPolicy) -> torch.Tensor:
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(policy.parameters()))])


def expected_gradient(policy: TabularPolicy, objective, batch_size: int = 1, group: bool = False, **hyper):
    """(E[g], E[|g - E g|^2]) of -grad loss over every batch of `batch_size` independent sequences (exact enumeration),
    the batch one group of the same task when `group`."""
    probs = policy.sequence_probs().detach()
    mean = second = 0
    for batch in itertools.product(range(len(SEQUENCES)), repeat=batch_size):
        weight = torch.prod(probs[list(batch)])
        sequences = torch.tensor([SEQUENCES[i] for i in batch])
        loss, _ = objective(rollout(policy, sequences, [0] * batch_size if group else None), **hyper)
        gradient = -parameters_gradient(loss, policy)
        mean = mean + weight * gradient
        second = second + weight * gradient.square().sum()
    return mean, float(second - mean.square().sum())


def true_gradient(policy: TabularPolicy, regulariser=None, beta: float = 0.0) -> torch.Tensor:
    """grad of J = sum_y P(y) (R(y) + beta * phi(y)), phi = -log P(y) (pm) or -(log P(y) - log P_ref(y)) (kl)."""
    probs = policy.sequence_probs()
    objective = probs * SEQUENCE_REWARDS
    if regulariser == "pm":
        objective = objective - beta * probs * probs.log()
    if regulariser == "kl":
        objective = objective - beta * probs * (probs.log() - REFERENCE.sequence_probs().detach().log())
    return parameters_gradient(objective.sum(), policy)


def test_remax_estimator_mean_equals_the_exact_policy_gradient():
    policy = TabularPolicy(seed=3)
    mean, _ = expected_gradient(policy, remax)
    torch.testing.assert_close(mean, true_gradient(policy), atol=1e-6, rtol=0)
    # the greedy baseline really matters per sample (it is not zero) yet leaves the mean unchanged
    assert float(rollout(policy, torch.tensor([SEQUENCES[0]])).baseline_returns[0]) != 0.0


@pytest.mark.parametrize("objective,regulariser,options", [
    (pm_rlhf, "pm", {"beta": 0.7, "baseline": "none"}),
    (kl_rlhf, "kl", {"beta": 0.7, "baseline": "greedy"}),
    (remax, "kl", {"kl_coef": 0.3}),
])
def test_exact_and_sampled_regularisers_have_the_true_gradient_in_expectation_and_exact_has_less_variance(
        objective, regulariser, options):
    """Over every pair of independent samples (so the exact estimator's per-position baseline, built from the other
    row, is in play), both estimators' mean gradient is the true one; the exact one varies less."""
    policy = TabularPolicy(seed=5)
    beta = options.get("beta", options.get("kl_coef"))
    truth = true_gradient(policy, regulariser, beta)
    exact, exact_variance = expected_gradient(policy, objective, batch_size=2, estimator="exact", **options)
    sampled, sampled_variance = expected_gradient(policy, objective, batch_size=2, estimator="sampled", **options)
    torch.testing.assert_close(exact, truth, atol=1e-5, rtol=0)
    torch.testing.assert_close(sampled, truth, atol=1e-5, rtol=0)
    assert exact_variance < 0.9 * sampled_variance


def test_conditional_pm_exact_estimator_is_unbiased_for_its_sequence_objective():
    """phi(y) = -beta sum_t (log pi_t - 1[pi_ref,t <= alpha] log pi_ref,t): the exact estimator's mean gradient
    equals the gradient of sum_y P(y) (R(y) + phi(y)) by enumeration."""
    policy = TabularPolicy(seed=6)
    beta, alpha = 0.4, 0.3
    sequences = torch.tensor(SEQUENCES)
    probs = policy.sequence_probs()
    ref = REFERENCE.log_probs(sequences).detach()
    kept = (ref <= torch.log(torch.tensor(alpha))).float() * ref
    phi = -beta * (policy.log_probs(sequences) - kept).sum(-1)
    truth = parameters_gradient((probs * (SEQUENCE_REWARDS + phi)).sum(), policy)
    exact, _ = expected_gradient(policy, conditional_pm_rlhf, batch_size=2, beta=beta, alpha=alpha, baseline="none")
    torch.testing.assert_close(exact, truth, atol=1e-5, rtol=0)


def test_rloo_is_unbiased_and_uses_only_same_task_samples():
    policy = TabularPolicy(seed=7)
    mean, _ = expected_gradient(policy, rloo, batch_size=2, group=True)
    torch.testing.assert_close(mean, true_gradient(policy), atol=1e-6, rtol=0)
    # two groups: each row's baseline is the other member of its own group, never a row of the other task
    returns = torch.tensor([1.0, 3.0, 10.0, 30.0])
    mean_of_group, leave_one_out, std = group_statistics(returns, torch.tensor([5, 5, 9, 9]))
    assert leave_one_out.tolist() == [3.0, 1.0, 30.0, 10.0]
    assert mean_of_group.tolist() == [2.0, 2.0, 20.0, 20.0]
    torch.testing.assert_close(std, torch.tensor([2.0, 2.0, 20.0, 20.0]).sqrt() * torch.tensor([1.0, 1.0, 10.0, 10.0]).sqrt())
    with pytest.raises(ValueError, match="group_ids"):
        rloo(RolloutBatch(log_probs=torch.zeros(2, 1), mask=torch.ones(2, 1, dtype=torch.bool), token_rewards=torch.zeros(2, 1)))


def test_dr_grpo_first_step_is_the_policy_gradient_scaled_by_one_minus_one_over_n():
    """At ratio 1 Dr. GRPO is REINFORCE with the group mean (self included) as baseline: E[g] = (1 - 1/n) grad J."""
    policy = TabularPolicy(seed=8)

    def first_step(batch, **options):
        return dr_grpo(dr_grpo_advantages(batch), kl_coef=0.0)

    mean, _ = expected_gradient(policy, first_step, batch_size=2, group=True)
    torch.testing.assert_close(mean, 0.5 * true_gradient(policy), atol=1e-6, rtol=0)


def test_grpo_normalises_by_the_group_std_and_the_response_length():
    log_probs = torch.zeros(2, 3, requires_grad=True)
    mask = torch.tensor([[True, True, True], [True, False, False]])
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    batch = RolloutBatch(log_probs=log_probs, mask=mask, token_rewards=rewards, old_log_probs=torch.zeros(2, 3),
                         group_ids=torch.tensor([0, 0]))
    prepared = grpo_advantages(batch)
    # returns 1 and 0: mean 0.5, std (n - 1) = sqrt(0.5); A = +-0.5 / sqrt(0.5)
    expected = 0.5 / 0.5 ** 0.5
    torch.testing.assert_close(prepared.advantages, torch.tensor([[expected] * 3, [-expected, 0, 0]]), atol=1e-5, rtol=0)
    loss, _ = grpo(prepared, kl_coef=0.0)
    loss.backward()
    # per-response mean, then mean over responses: row 0's three tokens share 1/3 each, row 1's single token all
    torch.testing.assert_close(log_probs.grad, torch.tensor([[-expected / 6] * 3, [expected / 2, 0, 0]]), atol=1e-5, rtol=0)
    dr = dr_grpo_advantages(batch)
    torch.testing.assert_close(dr.advantages, torch.tensor([[0.5] * 3, [-0.5, 0, 0]]))


def test_reinforce_pp_folds_the_kl_into_the_reward_and_whitens_over_the_batch():
    mask = torch.ones(2, 2, dtype=torch.bool)
    batch = RolloutBatch(log_probs=torch.zeros(2, 2), mask=mask, token_rewards=torch.tensor([[0.0, 1.0], [0.0, 0.0]]),
                         old_log_probs=torch.tensor([[-1.0, -1.0], [-1.0, -1.0]]),
                         ref_log_probs=torch.tensor([[-2.0, -1.0], [-1.0, -1.0]]))
    shaped = torch.tensor([[-0.5 + 1.0, 1.0], [0.0, 0.0]])   # r_t - 0.5 (log pi - log pi_ref), reward-to-go
    expected = (shaped - shaped.mean()) / shaped.var(unbiased=False).sqrt()
    torch.testing.assert_close(reinforce_pp_advantages(batch, kl_coef=0.5).advantages, expected, atol=1e-4, rtol=0)


def test_advantage_clip_clips_only_the_reward_part_and_k3_placement():
    log_probs = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    batch = RolloutBatch(log_probs=log_probs, mask=torch.tensor([[True, True]]), token_rewards=torch.tensor([[0.0, 10.0]]),
                         baseline_returns=torch.tensor([1.0]), ref_log_probs=torch.tensor([[-1.5, -2.0]]))
    loss, metrics = remax(batch, advantage_clip=5.0)
    assert metrics["advantage_mean"] == 5.0  # 10 - 1 = 9 clipped to 5
    assert torch.isclose(loss, torch.tensor(-(5.0 * -1.0 + 5.0 * -2.0)))
    # the KL term -0.1 (log pi - log pi_ref) = [-0.05, 0] is added after the clip: weights [5 - 0.05, 5]
    loss, metrics = remax(batch, kl_coef=0.1, advantage_clip=5.0, estimator="sampled")
    assert torch.isclose(loss, torch.tensor(-((5 - 0.05) * -1.0 + 5.0 * -2.0)))
    assert abs(metrics["kl_to_reference"] - 0.25) < 1e-6
    # k3 in the loss: + 0.1 * sum_t (exp(l) - l - 1), l = log pi_ref - log pi
    loss, _ = remax(batch, kl_coef=0.1, placement="k3")
    l = torch.tensor([-0.5, 0.0])
    assert torch.isclose(loss, torch.tensor(-(9.0 * -1.0 + 9.0 * -2.0)) + 0.1 * (l.exp() - l - 1).sum())
    with pytest.raises(ValueError, match="KL estimator"):
        pm_rlhf(batch, placement="k3")


def test_per_position_baseline_uses_only_other_rows():
    values = torch.tensor([[1.0, 2.0], [3.0, 0.0], [5.0, 4.0]])
    mask = torch.tensor([[True, True], [True, False], [True, True]])
    assert position_baseline(values, mask).tolist() == [[4.0, 4.0], [3.0, 0.0], [2.0, 2.0]]


def test_conditional_pm_interpolates_between_pm_and_kl():
    policy = TabularPolicy(seed=4)
    sequences = torch.tensor(SEQUENCES)
    batch = rollout(policy, sequences)
    for estimator in ESTIMATORS:
        every_action_plausible = conditional_pm_rlhf(batch, beta=0.3, alpha=1e-9, estimator=estimator)[0]
        assert torch.isclose(every_action_plausible, pm_rlhf(batch, beta=0.3, estimator=estimator)[0])
        none_plausible = conditional_pm_rlhf(batch, beta=0.3, alpha=1.0, estimator=estimator)[0]
        assert torch.isclose(none_plausible, kl_rlhf(batch, beta=0.3, estimator=estimator)[0])
    mixed, metrics = conditional_pm_rlhf(batch, beta=0.3, alpha=0.3)
    assert 0 < metrics["implausible_fraction"] < 1
    # alpha = 0: plain PM under the threshold convention, the KL baseline under the authors' convention
    assert torch.isclose(conditional_pm_rlhf(batch, beta=0.3, alpha=0.0)[0], pm_rlhf(batch, beta=0.3)[0])
    official = conditional_pm_rlhf(batch, beta=0.3, alpha=0.0, alpha_convention="official")[0]
    assert torch.isclose(official, kl_rlhf(batch, beta=0.3)[0])


def test_reward_to_go_and_gae_by_hand():
    rewards = torch.tensor([[1.0, 0.0, 2.0, 5.0]])
    mask = torch.tensor([[True, True, True, False]])
    assert reward_to_go(rewards, mask).tolist() == [[3.0, 2.0, 2.0, 0.0]]
    torch.testing.assert_close(reward_to_go(rewards, mask, gamma=0.5), torch.tensor([[1.5, 1.0, 2.0, 0.0]]))
    values = torch.tensor([[0.5, 1.0, 1.5, 9.0]])
    advantages, returns = gae(rewards, values, mask, gamma=0.9, lam=0.5)
    delta2 = 2.0 - 1.5
    delta1 = 0.0 + 0.9 * 1.5 - 1.0
    delta0 = 1.0 + 0.9 * 1.0 - 0.5
    a2 = delta2
    a1 = delta1 + 0.45 * a2
    a0 = delta0 + 0.45 * a1
    assert torch.allclose(advantages, torch.tensor([[a0, a1, a2, 0.0]]))
    assert torch.allclose(returns, torch.tensor([[a0 + 0.5, a1 + 1.0, a2 + 1.5, 0.0]]))


def test_ppo_clips_the_ratio_and_shapes_its_reward():
    old = torch.tensor([[-1.0, -1.0]])
    new = torch.tensor([[-0.5, -1.0]], requires_grad=True)  # first ratio exp(0.5) > 1.2
    values = torch.tensor([[0.0, 0.0]], requires_grad=True)
    batch = RolloutBatch(log_probs=new, mask=torch.ones(1, 2, dtype=torch.bool), token_rewards=torch.zeros(1, 2),
                         old_log_probs=old, values=values, old_values=torch.zeros(1, 2),
                         advantages=torch.tensor([[1.0, 1.0]]), returns=torch.tensor([[1.0, 1.0]]))
    loss, metrics = ppo(batch, clip_ratio=0.2)
    loss.backward()
    assert new.grad[0, 0] == 0.0  # clipped: no gradient pushes the ratio further up
    assert new.grad[0, 1] < 0.0   # unclipped: ratio 1, advantage 1 -> increase log-prob
    assert metrics["clip_fraction"] == 0.5
    assert values.grad[0, 0] < 0  # value moves towards the return
    # PM-RLHF as published: PPO with -pm_coef log pi added to each token's reward before GAE
    shaped = ppo_advantages(batch, gamma=1.0, lam=1.0, pm_coef=0.5)
    torch.testing.assert_close(shaped.returns, torch.tensor([[1.0, 0.5]]))


def test_registry_needs_and_options():
    assert set(OBJECTIVES) == {"remax", "rloo", "pm_rlhf", "conditional_pm_rlhf", "kl_rlhf", "grpo", "dr_grpo",
                               "reinforce_pp", "ppo"}
    with pytest.raises(ValueError, match="unknown objective"):
        get_objective("dpo")
    assert get_objective("remax").needs({}) == Needs(greedy_twin=True)
    assert get_objective("remax").needs({"kl_coef": 0.1}) == Needs(greedy_twin=True, reference=True, full_distributions=True)
    assert get_objective("remax").needs({"kl_coef": 0.1, "estimator": "sampled"}).full_distributions is False
    assert get_objective("pm_rlhf").needs({"baseline": "group"}) == Needs(min_group_size=2)   # exact PM reads the entropy
    assert get_objective("rloo").needs({}).min_group_size == 2 and get_objective("grpo").needs({}).reference
    assert get_objective("ppo").needs({}).value_model and get_objective("ppo").prepare is not None
    assert get_objective("remax").prepare is None
    assert "lam" in get_objective("ppo").option_names() and "value_coef" in get_objective("ppo").option_names()
    with pytest.raises(ValueError, match="has no option.*'betta'"):
        get_objective("pm_rlhf").check_options({"betta": 0.1})
    batch = RolloutBatch(log_probs=torch.zeros(1, 1), mask=torch.ones(1, 1, dtype=torch.bool), token_rewards=torch.zeros(1, 1))
    with pytest.raises(ValueError, match="baseline_returns"):
        remax(batch)
    with pytest.raises(ValueError, match="ref_log_probs"):
        kl_rlhf(batch, baseline="none")
    with pytest.raises(ValueError, match="'mean' was removed"):
        remax(batch, baseline="mean")
