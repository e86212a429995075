"""Diagnostics: action information, code shares, FLOPs per token."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from bwarea import ARConfig, ARLanguageModel, BWAreaConfig, BWAreaModel
from bwarea.codebook import code_usage
from bwarea.diagnostics import ActionInformation, action_information, flops_per_token
from tests.bwarea.test_two_stream import tiny_bwarea, tokens

NUM_ACTIONS = 8


@pytest.fixture(scope="module")
def model() -> BWAreaModel:
    return tiny_bwarea()


def padded_batch() -> tuple[torch.Tensor, torch.Tensor]:
    x = tokens(2, 7, seed=6)
    mask = torch.ones_like(x)
    mask[1, :2] = 0
    x[1, :2] = 0
    return x, mask


@torch.no_grad()
def naive_nll(model, x, mask, log_prior):
    """Per-transition conditional and marginal NLL, one world_logits call per (position, action)."""
    labels = model.label_actions(x, mask)
    conditional, marginal = torch.zeros(labels.shape), torch.zeros(labels.shape)
    for t in range(x.shape[1] - 1):
        log_probs = []
        for k in range(NUM_ACTIONS):
            actions = torch.cat([labels[:, :t], torch.full((x.shape[0], 1), k)], dim=1)
            logits = model.world_logits(x[:, :t + 1], actions, mask[:, :t + 1])[:, t]
            log_probs.append(logits.log_softmax(-1).gather(-1, x[:, t + 1:t + 2]).squeeze(-1))
        log_probs = torch.stack(log_probs, dim=-1)
        conditional[:, t] = -log_probs.gather(-1, labels[:, t:t + 1]).squeeze(-1)
        marginal[:, t] = -(log_probs + log_prior[:, t]).logsumexp(-1)
    counted = (mask[:, 1:] & mask[:, :-1]).bool()
    return float(conditional[counted].sum()), float(marginal[counted].sum()), int(counted.sum())


def test_action_information_matches_a_naive_count_and_stage1_loss(model):
    x, mask = padded_batch()
    info = action_information(model, x, mask)
    log_prior = model.policy_logits(x, mask)[:, :-1].log_softmax(-1).detach()
    conditional, marginal, count = naive_nll(model, x, mask, log_prior)
    assert info.tokens == count == 6 + 4
    assert math.isclose(info.conditional_nll_sum, conditional, rel_tol=1e-5)
    assert math.isclose(info.marginal_nll_sum, marginal, rel_tol=1e-5)
    assert math.isclose(info.conditional_nll, float(model.stage1(x, mask).lm_loss.detach()), rel_tol=1e-5)
    assert abs(info.information) > 0.05 and info.information == info.marginal_nll - info.conditional_nll

    uniform = action_information(model, x, mask, prior=torch.full((NUM_ACTIONS,), 1 / NUM_ACTIONS))
    _, marginal, _ = naive_nll(model, x, mask, torch.full((2, 6, NUM_ACTIONS), -math.log(NUM_ACTIONS)))
    assert math.isclose(uniform.marginal_nll_sum, marginal, rel_tol=1e-5)
    assert abs(uniform.marginal_nll - info.marginal_nll) > 1e-3


def test_chunking_and_one_hot_prior(model):
    x, mask = padded_batch()
    whole = action_information(model, x, mask, chunk=NUM_ACTIONS)
    for chunk in (1, 3):
        parts = action_information(model, x, mask, chunk=chunk)
        assert math.isclose(parts.conditional_nll_sum, whole.conditional_nll_sum, rel_tol=1e-6)
        assert math.isclose(parts.marginal_nll_sum, whole.marginal_nll_sum, rel_tol=1e-6)
    one_hot = F.one_hot(model.label_actions(x, mask), NUM_ACTIONS).float()
    labelled = action_information(model, x, mask, prior=one_hot)
    assert math.isclose(labelled.marginal_nll_sum, whole.conditional_nll_sum, rel_tol=1e-6)
    assert abs(labelled.information) < 1e-6


def test_world_model_that_ignores_actions_carries_no_information(model):
    deaf = copy.deepcopy(model)
    with torch.no_grad():
        deaf.world.inject.norm.weight.zero_()
    info = action_information(deaf, *padded_batch())
    assert abs(info.information) < 1e-5 and info.conditional_nll > 1


def test_action_information_accumulates_and_checks_its_prior(model):
    x, mask = padded_batch()
    first, second = action_information(model, x[:1], mask[:1]), action_information(model, x[1:], mask[1:])
    both = action_information(model, x, mask)
    total = first + second
    assert total.tokens == both.tokens
    assert math.isclose(total.marginal_nll_sum, both.marginal_nll_sum, rel_tol=1e-5)
    assert ActionInformation(0.0, 0.0, 0).information == 0.0
    with pytest.raises(ValueError, match="sum to 1"):
        action_information(model, x, mask, prior=torch.ones(NUM_ACTIONS))
    with pytest.raises(ValueError, match="prior has shape"):
        action_information(model, x, mask, prior=torch.ones(3))
    with pytest.raises(ValueError, match="chunk"):
        action_information(model, x, mask, chunk=0)


def test_code_usage_largest_share():
    actions = torch.tensor([[0, 0, 1, 2], [0, 3, 3, 5]])
    mask = torch.tensor([[True, True, True, False], [True, True, True, False]])
    shares = code_usage(actions, 8, mask)  # counted: 0 x3, 1 x1, 3 x2
    assert shares.alive_codes == 3
    assert math.isclose(shares.largest_share, 3 / 6)
    probs = torch.tensor([3, 1, 2]) / 6
    assert math.isclose(shares.entropy, float(-(probs * probs.log()).sum()), rel_tol=1e-6)
    assert math.isclose(shares.perplexity, math.exp(shares.entropy))
    collapsed = code_usage(torch.zeros(2, 5, dtype=torch.long), 8)
    assert collapsed.largest_share == 1.0 and collapsed.alive_codes == 1 and collapsed.perplexity == 1.0


def trunk_matmul_weights(hidden: int, heads: int, kv_heads: int, intermediate: int, layers: int) -> int:
    head_dim = hidden // heads
    attention = hidden * (heads + 2 * kv_heads) * head_dim + heads * head_dim * hidden
    return layers * (attention + 3 * hidden * intermediate)


def test_flops_per_token_match_a_hand_count():
    hidden, heads, kv, inter, vocab, actions, code, context = 32, 4, 2, 64, 97, 8, 8, 16
    config = BWAreaConfig(vocab_size=vocab, hidden_size=hidden, num_heads=heads, num_kv_heads=kv,
                          intermediate_size=inter, world_layers=4, inverse_layers=2, policy_layers=3,
                          num_actions=actions, code_dim=code, max_position_embeddings=64)
    flops = flops_per_token(BWAreaModel(config), context)
    world = (2 * (trunk_matmul_weights(hidden, heads, kv, inter, 4) + 2 * hidden * hidden + hidden * vocab + code * hidden)
             + 4 * 4 * hidden * context)
    inverse = 2 * (trunk_matmul_weights(hidden, heads, kv, inter, 2) + hidden * code) + 4 * 2 * hidden * context
    policy = 2 * (trunk_matmul_weights(hidden, heads, kv, inter, 3) + hidden * actions) + 4 * 3 * hidden * context
    assert flops == {"train_stage1": 3 * (world + inverse), "train_stage2": 3 * policy + inverse, "generate": policy + world}

    ar = flops_per_token(ARLanguageModel(ARConfig.matching(config)), context)
    forward = 2 * (trunk_matmul_weights(hidden, heads, kv, inter, 4) + hidden * vocab) + 4 * 4 * hidden * context
    assert ar == {"train": 3 * forward, "generate": forward}
    assert flops["generate"] == ar["generate"] + policy + 2 * (2 * hidden * hidden + code * hidden)
    with pytest.raises(ValueError, match="ARLanguageModel, got"):
        flops_per_token(torch.nn.Linear(2, 2), context)
