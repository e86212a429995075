import gymnasium
import pytest
import torch

import envs
from bwarea import BWAreaConfig, BWAreaModel, train_tokenizer
from bwarea.model import chosen_log_probs
from training.rollout import ReferencePolicy, RolloutConfig, RolloutEngine, build_rollout_batch, summarize

CORPUS = ["Objective: find the coin.\nYou are in a cellar.\n> go west\nYou arrive in a studio.\n> take coin\n"] * 40


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(CORPUS, vocab_size=300)


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    config = BWAreaConfig(vocab_size=len(tokenizer), hidden_size=32, num_heads=2, num_kv_heads=1, intermediate_size=64,
                          world_layers=2, inverse_layers=1, policy_layers=1, num_actions=8, code_dim=4,
                          max_position_embeddings=192, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return BWAreaModel(config)


def coin_game(tw_cache):
    return lambda: envs.make("textworld/coin-easy", cache_dir=tw_cache)


def engine(model, tokenizer, **overrides):
    config = RolloutConfig(**{"max_turns": 3, "max_new_tokens": 5, **overrides})
    return RolloutEngine(model, tokenizer, config, reference=ReferencePolicy(model))


def test_greedy_episodes_are_deterministic_and_use_argmax_actions(model, tokenizer, tw_cache):
    rollouts = engine(model, tokenizer)
    first = rollouts.run(coin_game(tw_cache), [0, 1], greedy=True)
    second = rollouts.run(coin_game(tw_cache), [0, 1], greedy=True)
    assert [[t.actions for t in e.turns] for e in first] == [[t.actions for t in e.turns] for e in second]
    assert [e.transcript for e in first] == [e.transcript for e in second]
    for episode in first:
        for turn in episode.turns:
            sequence = torch.tensor([turn.prompt_ids + turn.tokens])
            logits = model.policy_logits(sequence)[0, len(turn.prompt_ids) - 1:-1]
            assert logits.argmax(-1).tolist() == turn.actions


def actions_of(episodes):
    return [[t.actions for t in e.turns] for e in episodes]


def test_sampled_episodes_reproduce_with_sampling_seeds(model, tokenizer, tw_cache):
    rollouts = engine(model, tokenizer, temperature=1.5)
    run = lambda: rollouts.run(coin_game(tw_cache), [0, 1], sampling_seeds=[3, 4])  # noqa: E731
    first, second = run(), run()
    assert actions_of(first) == actions_of(second)
    greedy = rollouts.run(coin_game(tw_cache), [0, 1], greedy=True)
    assert actions_of(first) != actions_of(greedy)
    assert actions_of(rollouts.run(coin_game(tw_cache), [0, 1], sampling_seeds=[5, 4]))[0] != actions_of(first)[0]
    with pytest.raises(ValueError, match="one per episode"):
        rollouts.run(coin_game(tw_cache), [0, 1], sampling_seeds=[3])


def test_an_episode_samples_the_same_whichever_batch_plays_it(model, tokenizer, tw_cache):
    """What sharding a rollout batch over processes relies on: episode i depends on its own seeds only."""
    rollouts = engine(model, tokenizer, temperature=1.5)
    together = rollouts.run(coin_game(tw_cache), [0, 1, 2, 3], sampling_seeds=[10, 11, 12, 13])
    odd = rollouts.run(coin_game(tw_cache), [1, 3], sampling_seeds=[11, 13])
    alone = rollouts.run(coin_game(tw_cache), [2], sampling_seeds=[12])
    assert actions_of(odd) == actions_of(together)[1::2]
    assert actions_of(alone) == actions_of(together)[2:3]
    for a, b in zip(odd, together[1::2]):
        assert [x for t in a.turns for x in t.log_probs] == pytest.approx([x for t in b.turns for x in t.log_probs], abs=1e-5)


def test_every_tensor_of_a_rollout_and_its_loss_is_made_on_the_model_device(model, tokenizer, tw_cache):
    """With torch's default device set to "meta", a tensor created without naming a device is a meta tensor, and
    mixing it with the model's real tensors fails: so this passes only if every tensor the engine, the batch builder
    and the objective create names its device (the model's, or the host for staging) — the same bug that would put
    a tensor on the CPU while the model is on a GPU. The CPU-only machine cannot run a CUDA model, hence meta."""
    from training.objectives import get_objective

    rollouts = engine(model, tokenizer, temperature=1.5)
    torch.set_default_device("meta")
    try:
        episodes = rollouts.run(coin_game(tw_cache), [0, 1], sampling_seeds=[1, 2])
        greedy = rollouts.run(coin_game(tw_cache), [0, 1], greedy=True)
        log_probs, entropy = rollouts.policy_log_probs(episodes)
        batch = build_rollout_batch(episodes, log_probs, entropy, [e.total_reward for e in greedy])
        loss, _ = get_objective("remax").compute_loss(batch, {"kl_coef": 0.1, "estimator": "sampled"})
        loss.backward()
    finally:
        torch.set_default_device(None)
    assert all(e.error is None for e in episodes + greedy) and loss.device.type == "cpu"
    assert all(p.grad is not None and p.grad.device.type == "cpu" for p in model.policy_parameters())
    model.zero_grad(set_to_none=True)


def test_recomputed_log_probs_match_generation_and_reference(model, tokenizer, tw_cache):
    rollouts = engine(model, tokenizer)
    episodes = rollouts.run(coin_game(tw_cache), [0, 1], sampling_seeds=[0, 1])
    log_probs, entropy = rollouts.policy_log_probs(episodes)
    assert log_probs.requires_grad
    batch = build_rollout_batch(episodes, log_probs, entropy, baseline_returns=[0.0, 1.0])
    assert batch.mask.sum(-1).tolist() == [e.num_tokens for e in episodes]
    assert torch.allclose(batch.log_probs[batch.mask], batch.old_log_probs[batch.mask], atol=1e-5)
    # the reference is a frozen copy: identical before any update, unaffected after one
    assert torch.allclose(batch.ref_log_probs[batch.mask], batch.old_log_probs[batch.mask], atol=1e-5)
    # after an update the reference still scores with the starting weights, and leaves the updated ones in place
    ids, mask, actions, generated = rollouts.turn_batch([t for e in episodes for t in e.turns])
    before, _ = chosen_log_probs(rollouts.reference.policy_logits(ids, mask)[:, :actions.shape[1]], actions)
    original = [parameter.detach().clone() for parameter in model.policy_parameters()]
    try:
        with torch.no_grad():
            for parameter in model.policy_parameters():
                parameter.add_(0.05 * torch.randn_like(parameter))
        updated = [parameter.detach().clone() for parameter in model.policy_parameters()]
        after, _ = chosen_log_probs(rollouts.reference.policy_logits(ids, mask)[:, :actions.shape[1]], actions)
        assert torch.equal(before, after)
        assert not torch.allclose(model.action_log_probs(ids, actions, mask)[0][generated], after[generated])
        assert all(torch.equal(p, u) for p, u in zip(model.policy_parameters(), updated))
    finally:
        with torch.no_grad():  # the model is shared by this module's tests
            for parameter, value in zip(model.policy_parameters(), original):
                parameter.copy_(value)


def test_log_probs_are_taken_at_the_sampling_temperature(model, tokenizer, tw_cache):
    """Sampling at T != 1 while differentiating log softmax(logits) would bias every objective: the engine records
    and recomputes log-probs of softmax(logits / T), the policy that was sampled."""
    rollouts = engine(model, tokenizer, temperature=1.7)
    episodes = rollouts.run(coin_game(tw_cache), [0, 1], sampling_seeds=[4, 5])
    log_probs, entropy = rollouts.policy_log_probs(episodes)
    batch = build_rollout_batch(episodes, log_probs, entropy)
    torch.testing.assert_close(batch.log_probs[batch.mask], batch.old_log_probs[batch.mask], atol=1e-5, rtol=0)
    torch.testing.assert_close(batch.ref_log_probs[batch.mask], batch.old_log_probs[batch.mask], atol=1e-5, rtol=0)
    ids, mask, actions, generated = rollouts.turn_batch([t for e in episodes for t in e.turns])
    at_one, _ = model.action_log_probs(ids, actions, mask)
    assert (at_one[generated] - batch.log_probs[batch.mask]).abs().max() > 0.05
    full = rollouts.policy_log_probs(episodes, full=True)[2]
    torch.testing.assert_close(full.exp().sum(-1)[batch.mask], torch.ones(int(batch.mask.sum())))
    assert ((full - batch.log_probs.detach()[..., None]).abs().min(-1).values[batch.mask] < 1e-5).all()  # chosen is in it


def test_rewards_land_on_the_last_token_of_their_turn(model, tokenizer, tw_cache):
    episodes = engine(model, tokenizer).run(coin_game(tw_cache), [0])
    episode = episodes[0]
    episode.turns[0].reward, episode.turns[-1].reward = 1.0, 2.0
    log_probs, _ = engine(model, tokenizer).policy_log_probs(episodes)
    batch = build_rollout_batch(episodes, log_probs)
    end_of_first = len(episode.turns[0].tokens) - 1
    assert batch.token_rewards[0, end_of_first] == 1.0
    assert batch.token_rewards[0, episode.num_tokens - 1] == 2.0 + (1.0 if len(episode.turns) == 1 else 0.0)
    assert batch.episode_returns[0] == sum(t.reward for t in episode.turns)


class CrashOnSecondStep(gymnasium.Wrapper):
    def step(self, action):
        self.steps = getattr(self, "steps", 0) + 1
        if self.steps == 2:
            raise RuntimeError("interpreter died")
        return self.env.step(action)


def test_crashing_environment_drops_only_its_episode(model, tokenizer, tw_cache):
    made = []

    def make():
        env = envs.make("textworld/coin-easy", cache_dir=tw_cache)
        made.append(env)
        return CrashOnSecondStep(env) if len(made) == 1 else env

    episodes = engine(model, tokenizer).run(make, [0, 1])
    assert episodes[0].dropped and "interpreter died" in episodes[0].error
    assert not episodes[1].dropped and len(episodes[1].turns) == 3
    assert summarize(episodes).dropped == 1


def test_failing_reward_function_drops_episodes_without_raising(model, tokenizer, tw_cache):
    def broken_reward(transcripts, commands):
        raise ValueError("reward server unreachable")

    rollouts = RolloutEngine(model, tokenizer, RolloutConfig(max_turns=2, max_new_tokens=4), reward_function=broken_reward)
    episodes = rollouts.run(coin_game(tw_cache), [0, 1])
    assert all(e.dropped and "reward server unreachable" in e.error for e in episodes)

    rollouts.reward_function = lambda transcripts, commands: [float(len(t)) for t in transcripts]
    episodes = rollouts.run(coin_game(tw_cache), [0])
    assert episodes[0].total_reward == float(len(episodes[0].transcript)) == episodes[0].turns[-1].reward


def test_prompts_fit_the_context_budget(model, tokenizer, tw_cache):
    rollouts = engine(model, tokenizer, context_tokens=40, max_turns=4)
    episodes = rollouts.run(coin_game(tw_cache), [0])
    assert all(len(turn.prompt_ids) <= 40 for turn in episodes[0].turns)


def test_single_step_tasks_use_the_observation_as_prompt(model, tokenizer, bbh_dir):
    rollouts = engine(model, tokenizer, prompt_format="observation", context_tokens=64)
    episodes = rollouts.run(lambda: envs.make("bbh/boolean_expressions", data_dir=bbh_dir, split="train"), [0, 1, 2])
    for episode in episodes:
        assert len(episode.turns) == 1 and not episode.dropped
        assert episode.total_reward in (0.0, 1.0) and "target" in episode.info
