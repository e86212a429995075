"""Two-stream scoring equals what cached generation scores; prompt actions chosen by the policy."""

import pytest
import torch

from bwarea import ARConfig, ARLanguageModel, BWAreaConfig, BWAreaModel
from bwarea.generation import choose

VOCAB = 97


def tiny_bwarea() -> BWAreaModel:
    """A random BWArea whose actions matter: the larger initialisation spreads the inverse dynamics'
    labels over the codes and lets history actions change the logits visibly."""
    torch.manual_seed(0)
    config = BWAreaConfig(vocab_size=VOCAB, hidden_size=32, num_heads=4, num_kv_heads=2, intermediate_size=64,
                          world_layers=4, inverse_layers=2, policy_layers=2, num_actions=8, code_dim=8,
                          max_position_embeddings=64, initializer_range=0.2, pad_token_id=0, eos_token_id=1)
    return BWAreaModel(config).eval()


@pytest.fixture(scope="module")
def model() -> BWAreaModel:
    return tiny_bwarea()


def tokens(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(2, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def generated_world_logits(model, monkeypatch, prompt, attention_mask=None, **options):
    """Generate and return (output, the world-model logits of every step) by wrapping the decoder."""
    captured = []
    make_decoder = model.decoder

    def recording_decoder(*args, **kwargs):
        decoder = make_decoder(*args, **kwargs)
        token_logits = decoder.token_logits

        def record(*call):
            logits = token_logits(*call)
            captured.append(logits)
            return logits

        decoder.token_logits = record
        return decoder

    monkeypatch.setattr(model, "decoder", recording_decoder)
    output = model.generate(prompt, attention_mask, **options)
    monkeypatch.undo()
    return output, torch.stack(captured, dim=1)


def naive_two_stream(model, x, current, attention_mask=None):
    """One world_logits call per position t with the actions [ID labels of x_{<t} ..., current[:, t]]."""
    labels = model.label_actions(x, attention_mask)
    columns = []
    for t in range(x.shape[1]):
        actions = torch.cat([labels[:, :t], current[:, t:t + 1]], dim=1)
        prefix_mask = None if attention_mask is None else attention_mask[:, :t + 1]
        columns.append(model.world_logits(x[:, :t + 1], actions, prefix_mask)[:, t])
    return torch.stack(columns, dim=1)


@torch.no_grad()
def test_two_stream_logits_equal_cached_generation_and_a_per_position_loop(model, monkeypatch):
    x = tokens(3, 9)
    assert len(model.label_actions(x).unique()) >= 4  # a history of one repeated code would hide misalignment
    greedy = model.policy_logits(x).argmax(-1)
    two_stream = model.two_stream_logits(x, greedy)
    assert two_stream.shape == (3, 9, VOCAB)
    torch.testing.assert_close(two_stream, naive_two_stream(model, x, greedy), atol=1e-5, rtol=0)
    for t in range(x.shape[1]):
        output, world = generated_world_logits(model, monkeypatch, x[:, :t + 1], max_new_tokens=1,
                                               temperature=0, token_temperature=0)
        assert torch.equal(output.actions[:, 0], greedy[:, t])
        torch.testing.assert_close(world[:, 0], two_stream[:, t], atol=1e-5, rtol=0)
    # the history matters: the all-policy simulated LLM scores different conditionals
    all_policy, actions = model.simulated_logits(x)
    assert torch.equal(actions, greedy)
    assert (all_policy[:, 1:] - two_stream[:, 1:]).abs().max() > 0.1
    logits, chosen = model.two_stream_simulated_logits(x)
    assert torch.equal(chosen, greedy) and torch.equal(logits, two_stream)


@torch.no_grad()
def test_two_stream_logits_with_left_padding(model, monkeypatch):
    long, short = tokens(1, 8, seed=1), tokens(1, 5, seed=2)
    x = torch.cat([long, torch.cat([torch.zeros(1, 3, dtype=torch.long), short], dim=1)])
    mask = torch.ones_like(x)
    mask[1, :3] = 0
    greedy = model.policy_logits(x, mask).argmax(-1)
    padded = model.two_stream_logits(x, greedy, mask)
    torch.testing.assert_close(padded[0], model.two_stream_logits(long, greedy[:1])[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(padded[1, 3:], model.two_stream_logits(short, greedy[1:, 3:])[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(padded[:, 3:], naive_two_stream(model, x, greedy, mask)[:, 3:], atol=1e-5, rtol=0)
    for t in range(3, x.shape[1]):
        _, world = generated_world_logits(model, monkeypatch, x[:, :t + 1], mask[:, :t + 1], max_new_tokens=1,
                                          temperature=0, token_temperature=0)
        torch.testing.assert_close(world[:, 0], padded[:, t], atol=1e-5, rtol=0)


@torch.no_grad()
def test_prompt_actions_policy_feeds_the_policy_choices_to_the_world_model(model, monkeypatch):
    prompt = tokens(2, 7, seed=3)
    policy_logits = model.policy_logits(prompt)
    greedy = policy_logits.argmax(-1)
    _, inverse = generated_world_logits(model, monkeypatch, prompt, max_new_tokens=1, temperature=0)
    output, policy = generated_world_logits(model, monkeypatch, prompt, max_new_tokens=1, temperature=0,
                                            prompt_actions="policy")
    torch.testing.assert_close(policy[:, 0], model.world_logits(prompt, greedy)[:, -1], atol=1e-5, rtol=0)
    torch.testing.assert_close(policy[:, 0], model.simulated_logits(prompt)[0][:, -1], atol=1e-5, rtol=0)
    assert (policy - inverse).abs().max() > 0.1
    assert torch.equal(output.actions[:, 0], greedy[:, -1])

    # sampled prompt actions are drawn like the generated one (same temperature, top-k and generator)
    output, sampled = generated_world_logits(model, monkeypatch, prompt, max_new_tokens=1, temperature=1.5, top_k=5,
                                             prompt_actions="policy", generator=torch.Generator().manual_seed(4))
    drawn = choose(policy_logits, 1.5, top_k=5, generator=torch.Generator().manual_seed(4))
    assert not torch.equal(drawn, greedy)
    assert torch.equal(output.actions[:, 0], drawn[:, -1])
    torch.testing.assert_close(sampled[:, 0], model.world_logits(prompt, drawn)[:, -1], atol=1e-5, rtol=0)

    # a forced action replaces only the newest choice
    _, forced = generated_world_logits(model, monkeypatch, prompt, max_new_tokens=1, temperature=0, actions=5,
                                       prompt_actions="policy")
    actions = torch.cat([greedy[:, :-1], torch.full((2, 1), 5)], dim=1)
    torch.testing.assert_close(forced[:, 0], model.world_logits(prompt, actions)[:, -1], atol=1e-5, rtol=0)


@torch.no_grad()
def test_prompt_actions_policy_continues_from_policy_labelled_prompt(model):
    prompt = tokens(2, 6, seed=5)
    output = model.generate(prompt, max_new_tokens=4, temperature=0, prompt_actions="policy", eos_token_id=[])
    actions = torch.cat([model.policy_logits(prompt).argmax(-1)[:, :-1], output.actions], dim=1)
    world = model.world_logits(output.sequences[:, :-1], actions)
    assert torch.equal(world[:, prompt.shape[1] - 1:].argmax(-1), output.tokens)


def test_prompt_actions_is_validated_and_ignored_by_the_ar_model(model):
    prompt = tokens(2, 5)
    with pytest.raises(ValueError, match="prompt_actions must be one of"):
        model.generate(prompt, max_new_tokens=1, prompt_actions="labels")
    torch.manual_seed(0)
    ar = ARLanguageModel(ARConfig(vocab_size=VOCAB, hidden_size=32, num_heads=4, num_kv_heads=2, intermediate_size=64,
                                  num_layers=2, max_position_embeddings=64)).eval()
    runs = [ar.generate(prompt, max_new_tokens=3, temperature=1.0, prompt_actions=mode,
                        generator=torch.Generator().manual_seed(0)) for mode in ("inverse", "policy")]
    assert torch.equal(runs[0].sequences, runs[1].sequences)
    torch.testing.assert_close(runs[0].action_log_probs, runs[1].action_log_probs)
