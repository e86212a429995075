import itertools

import pytest
import torch

from training.objectives import (OBJECTIVES, RolloutBatch, conditional_pm_rlhf, gae, get_objective, kl_rlhf, pm_rlhf,
                                 ppo, remax, reward_to_go)


def kl(p: torch.Tensor, q: torch.Tensor) -> float:
    return float((p * (p.log() - q.log())).sum())


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
        )
        loss, _ = objective(rollout, **hyper)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return logits.detach().softmax(-1)


def test_pm_rlhf_matches_the_preference_distribution_on_a_bandit():
    policy = train_bandit(pm_rlhf, beta=1.0)
    target = (REWARDS / 1.0).softmax(-1)
    assert kl(target, policy) < 0.05
    # Bradley-Terry preference of arm 0 over arm 3 is reproduced by the policy's odds
    assert abs(policy[0] / (policy[0] + policy[3]) - torch.sigmoid(REWARDS[0] - REWARDS[3])) < 0.05


def test_kl_rlhf_with_a_skewed_reference_collapses_onto_the_majority_choice():
    policy = train_bandit(kl_rlhf, beta=0.1, lr=0.1)
    assert policy[0] > 0.95  # the highest-reward arm takes (almost) everything
    assert kl((REWARDS / 1.0).softmax(-1), policy) > 1.0
    # at beta = 1 KL-RLHF instead inherits the reference's bias: optimum pi_ref * exp(r)
    biased = train_bandit(kl_rlhf, beta=1.0)
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

    def log_probs(self, sequences: torch.Tensor) -> torch.Tensor:
        """(B, 2) tokens -> (B, 2) log pi of each token given its prefix."""
        first = self.first.log_softmax(-1)[sequences[:, 0]]
        second = self.second.log_softmax(-1)[sequences[:, 0], sequences[:, 1]]
        return torch.stack([first, second], dim=1)

    def sequence_probs(self) -> torch.Tensor:
        return self.log_probs(torch.tensor(SEQUENCES)).sum(-1).exp()

    def sample(self, count: int) -> torch.Tensor:
        index = torch.multinomial(self.sequence_probs().detach(), count, replacement=True)
        return torch.tensor(SEQUENCES)[index]

    def greedy(self) -> torch.Tensor:
        first = int(self.first.argmax())
        return torch.tensor([[first, int(self.second[first].argmax())]])


REFERENCE = TabularPolicy(seed=1)


def rollout(policy: TabularPolicy, sequences: torch.Tensor) -> RolloutBatch:
    index = sequences[:, 0] * 3 + sequences[:, 1]
    batch = len(sequences)
    rewards = torch.zeros(batch, 2)
    rewards[:, 1] = SEQUENCE_REWARDS[index]  # terminal reward on the last token
    log_probs = policy.log_probs(sequences)
    greedy = policy.greedy()
    return RolloutBatch(
        log_probs=log_probs, mask=torch.ones(batch, 2, dtype=torch.bool), token_rewards=rewards,
        old_log_probs=log_probs.detach(), ref_log_probs=REFERENCE.log_probs(sequences).detach(),
        baseline_returns=SEQUENCE_REWARDS[greedy[0, 0] * 3 + greedy[0, 1]].expand(batch),
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


def test_pm_rlhf_converges_to_softmax_of_sequence_rewards():
    beta = 0.5
    assert kl((SEQUENCE_REWARDS / beta).softmax(-1), train_mdp(pm_rlhf, beta=beta)) < 0.05


def test_kl_rlhf_converges_to_reference_tilted_by_rewards():
    beta = 0.5
    optimum = (REFERENCE.sequence_probs().detach().log() + SEQUENCE_REWARDS / beta).softmax(-1)
    assert kl(optimum, train_mdp(kl_rlhf, beta=beta)) < 0.05


def test_remax_estimator_mean_equals_the_exact_policy_gradient():
    policy = TabularPolicy(seed=3)
    exact = torch.autograd.grad((policy.sequence_probs() * SEQUENCE_REWARDS).sum(), list(policy.parameters()))
    probs = policy.sequence_probs().detach()
    expected = [torch.zeros_like(p) for p in policy.parameters()]
    for weight, sequence in zip(probs, SEQUENCES):
        loss, _ = remax(rollout(policy, torch.tensor([sequence])))
        for total, grad in zip(expected, torch.autograd.grad(-loss, list(policy.parameters()))):
            total += weight * grad
    for mine, truth in zip(expected, exact):
        assert torch.allclose(mine, truth, atol=1e-6)
    # the greedy baseline really matters per sample (it is not zero) yet leaves the mean unchanged
    assert float(rollout(policy, torch.tensor([SEQUENCES[0]])).baseline_returns[0]) != 0.0


def test_remax_advantage_clip_and_kl_penalty():
    log_probs = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    batch = RolloutBatch(log_probs=log_probs, mask=torch.tensor([[True, True]]), token_rewards=torch.tensor([[0.0, 10.0]]),
                         baseline_returns=torch.tensor([1.0]), ref_log_probs=torch.tensor([[-1.5, -2.0]]))
    loss, metrics = remax(batch, advantage_clip=5.0)
    assert metrics["advantage_mean"] == 5.0  # 10 - 1 = 9 clipped to 5
    assert torch.isclose(loss, torch.tensor(-(5.0 * -1.0 + 5.0 * -2.0)))
    loss, metrics = remax(batch, kl_coef=0.1)
    # shaping: -0.1 * (log pi - log pi_ref) = [-0.05, 0]; reward-to-go [9 - 0.05, 9]
    assert torch.isclose(loss, torch.tensor(-((9 - 0.05) * -1.0 + 9.0 * -2.0)))
    assert abs(metrics["kl_to_reference"] - 0.25) < 1e-6


def test_conditional_pm_interpolates_between_pm_and_kl():
    policy = TabularPolicy(seed=4)
    sequences = torch.tensor(SEQUENCES)
    batch = rollout(policy, sequences)
    every_action_plausible = conditional_pm_rlhf(batch, beta=0.3, alpha=1e-9)[0]
    assert torch.isclose(every_action_plausible, pm_rlhf(batch, beta=0.3)[0])
    none_plausible = conditional_pm_rlhf(batch, beta=0.3, alpha=1.0)[0]
    assert torch.isclose(none_plausible, kl_rlhf(batch, beta=0.3)[0])
    mixed, metrics = conditional_pm_rlhf(batch, beta=0.3, alpha=0.3)
    assert 0 < metrics["implausible_fraction"] < 1


def test_reward_to_go_and_gae_by_hand():
    rewards = torch.tensor([[1.0, 0.0, 2.0, 5.0]])
    mask = torch.tensor([[True, True, True, False]])
    assert reward_to_go(rewards, mask).tolist() == [[3.0, 2.0, 2.0, 0.0]]
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


def test_ppo_clips_the_ratio():
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


def test_registry_and_missing_fields():
    assert set(OBJECTIVES) == {"remax", "pm_rlhf", "conditional_pm_rlhf", "kl_rlhf", "ppo"}
    with pytest.raises(ValueError, match="unknown objective"):
        get_objective("dpo")
    batch = RolloutBatch(log_probs=torch.zeros(1, 1), mask=torch.ones(1, 1, dtype=torch.bool), token_rewards=torch.zeros(1, 1))
    with pytest.raises(ValueError, match="baseline_returns"):
        remax(batch)
    with pytest.raises(ValueError, match="ref_log_probs"):
        kl_rlhf(batch, baseline="none")
