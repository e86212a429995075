import pytest
import torch

from bwarea import ARConfig, ARLanguageModel, BWAreaConfig, BWAreaModel
from bwarea.codebook import code_usage

VOCAB = 97


def tiny_config(**overrides) -> BWAreaConfig:
    fields = dict(vocab_size=VOCAB, hidden_size=64, num_heads=4, num_kv_heads=2, intermediate_size=128,
                  world_layers=2, inverse_layers=1, policy_layers=2, num_actions=16, code_dim=8,
                  max_position_embeddings=128, pad_token_id=0, eos_token_id=1)
    return BWAreaConfig(**{**fields, **overrides})


@pytest.fixture(scope="module")
def model() -> BWAreaModel:
    torch.manual_seed(0)
    return BWAreaModel(tiny_config()).eval()


def tokens(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(2, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_presets_sizes_and_ar_match():
    for name, (low, high) in {"tiny": (2e6, 5e6), "small": (20e6, 30e6), "1b": (2.5e9, 2.9e9)}.items():
        config = BWAreaConfig.preset(name)
        with torch.device("meta"):
            bwarea = BWAreaModel(config)
            baseline = ARLanguageModel(ARConfig.matching(config))
        assert low <= bwarea.num_parameters() <= high, name
        world = sum(p.numel() for p in bwarea.world.parameters())
        assert abs(baseline.num_parameters() / world - 1) < 0.05, name
    big = BWAreaConfig.preset("1b")
    assert (big.world_layers, big.inverse_layers, big.policy_layers, big.hidden_size, big.num_actions) == (22, 11, 22, 2048, 64)
    assert big.injection_layer == 11


def test_bad_configs_raise_clear_errors():
    with pytest.raises(ValueError, match="num_kv_heads"):
        tiny_config(num_kv_heads=3)
    with pytest.raises(ValueError, match="world_layers"):
        tiny_config(world_layers=1)
    with pytest.raises(ValueError, match="unknown BWArea preset"):
        BWAreaConfig.preset("huge")


def test_shapes_of_every_mode(model):
    x = tokens(3, 10)
    out = model.stage1(x, return_logits=True)
    assert out.logits.shape == (3, 9, VOCAB)
    assert model.stage1(x).logits is None
    assert torch.allclose(model.stage1(x).lm_loss, out.lm_loss, atol=1e-5)  # fused head+loss == plain
    assert out.actions.shape == (3, 9) and out.features.shape == (3, 9, 8)
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    assert 1 <= out.usage.alive_codes <= 16
    assert model.policy_logits(x).shape == (3, 10, 16)
    assert model.label_actions(x).shape == (3, 9)
    log_probs, entropy = model.action_log_probs(x, model.label_actions(x))
    assert log_probs.shape == entropy.shape == (3, 9)
    assert bool((log_probs <= 0).all()) and bool((entropy > 0).all())
    assert model.world_logits(x, torch.full((10,), 3)).shape == (3, 10, VOCAB)
    logits, actions = model.simulated_logits(x)
    assert logits.shape == (3, 10, VOCAB) and actions.shape == (3, 10)
    generated = model.generate(x, max_new_tokens=4)
    assert generated.tokens.shape == generated.actions.shape == generated.action_log_probs.shape == (3, 4)
    assert generated.sequences.shape == (3, 14)


def test_stage1_loss_gradients_reach_world_inverse_and_codebook_only(model):
    model.zero_grad()
    model.train()
    model.stage1(tokens(2, 12)).loss.backward()
    model.eval()
    assert model.inverse.to_code.weight.grad.abs().sum() > 0  # straight-through estimator
    assert model.codebook.codebook.grad.abs().sum() > 0
    assert model.world.inject.proj.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.policy.parameters())
    model.zero_grad()


def test_inverse_dynamics_sees_exactly_one_future_token(model):
    x = tokens(1, 12)
    base = model.label_actions(x)
    features = model.inverse(x)
    for t in range(10):
        changed = x.clone()
        changed[0, t + 2:] = tokens(1, 12, seed=t + 1)[0, t + 2:]
        # the feature (hence the action) at t depends on x_0..x_{t+1} only
        assert torch.equal(model.label_actions(changed)[0, : t + 1], base[0, : t + 1])
        assert torch.allclose(model.inverse(changed)[0, : t + 1], features[0, : t + 1])
    # ... and it does depend on x_{t+1}: the one-token look-ahead is real
    changed = x.clone()
    changed[0, 5] = (x[0, 5] + 1) % VOCAB
    assert not torch.allclose(model.inverse(changed)[0, 4], features[0, 4])


def test_world_model_and_policy_are_causal(model):
    x = tokens(1, 12)
    actions = torch.randint(0, 16, (1, 12))
    world = model.world_logits(x, actions)
    policy = model.policy_logits(x)
    for t in range(11):
        changed_x = x.clone()
        changed_x[0, t + 1:] = tokens(1, 12, seed=50 + t)[0, t + 1:]
        changed_a = actions.clone()
        changed_a[0, t + 1:] = (actions[0, t + 1:] + 1) % 16
        assert torch.allclose(model.world_logits(changed_x, changed_a)[0, : t + 1], world[0, : t + 1], atol=1e-5)
        assert torch.allclose(model.policy_logits(changed_x)[0, : t + 1], policy[0, : t + 1], atol=1e-5)
    # the action at t does change the logits at t
    changed_a = actions.clone()
    changed_a[0, 4] = (actions[0, 4] + 1) % 16
    assert not torch.allclose(model.world_logits(x, changed_a)[0, 4], world[0, 4])


def _uncached_generation(model, prompt: torch.Tensor, steps: int):
    """Greedy BWArea generation recomputing everything from scratch at every step."""
    sequence = prompt.clone()
    actions = model.label_actions(prompt)
    for _ in range(steps):
        action = model.policy_logits(sequence)[:, -1].argmax(-1)
        actions = torch.cat([actions, action[:, None]], dim=1)
        token = model.world_logits(sequence, actions)[:, -1].argmax(-1)
        sequence = torch.cat([sequence, token[:, None]], dim=1)
    return sequence[:, prompt.shape[1]:], actions[:, prompt.shape[1] - 1:]


def test_cached_generation_equals_uncached_recomputation(model):
    prompt = tokens(2, 7)
    out = model.generate(prompt, max_new_tokens=12, temperature=0.0, eos_token_id=[])
    expected_tokens, expected_actions = _uncached_generation(model, prompt, 12)
    assert torch.equal(out.tokens, expected_tokens)
    assert torch.equal(out.actions, expected_actions)


def test_left_padded_batch_matches_each_row_alone(model):
    short, long = tokens(1, 4, seed=3), tokens(1, 9, seed=4)
    batch = torch.zeros(2, 9, dtype=torch.long)
    mask = torch.zeros(2, 9, dtype=torch.long)
    batch[0, 5:], mask[0, 5:] = short[0], 1
    batch[1], mask[1] = long[0], 1
    out = model.generate(batch, mask, max_new_tokens=8, temperature=0.0, eos_token_id=[])
    for row, prompt in enumerate((short, long)):
        alone = model.generate(prompt, max_new_tokens=8, temperature=0.0, eos_token_id=[])
        assert torch.equal(out.tokens[row], alone.tokens[0])
        assert torch.equal(out.actions[row], alone.actions[0])
        assert torch.allclose(out.action_log_probs[row], alone.action_log_probs[0], atol=1e-5)


def test_generation_log_probs_equal_recomputation_from_policy_logits(model):
    prompt = tokens(3, 6)
    out = model.generate(prompt, max_new_tokens=10, temperature=1.5, generator=torch.Generator().manual_seed(1), eos_token_id=[])
    recomputed, _ = model.action_log_probs(out.sequences, out.action_positions(), out.attention_mask)
    mask = out.action_mask()
    assert torch.allclose(recomputed[mask], out.action_log_probs[out.mask], atol=1e-5)
    by_hand = model.policy_logits(out.sequences).log_softmax(-1)[:, 5:-1].gather(-1, out.actions[..., None]).squeeze(-1)
    assert torch.allclose(by_hand, out.action_log_probs, atol=1e-5)


def test_reported_top_choices_are_the_policy_distribution_at_temperature_one(model):
    prompt = tokens(2, 6)
    out = model.generate(prompt, max_new_tokens=5, temperature=1.5, generator=torch.Generator().manual_seed(2),
                         eos_token_id=[], report_top=5)
    probs = model.policy_logits(out.sequences).softmax(-1)[:, 5:-1]
    expected = probs.topk(5, dim=-1)
    assert out.top_choices.shape == (2, 5, 5)
    assert torch.equal(out.top_choices, expected.indices)
    assert torch.allclose(out.top_choice_probs, expected.values, atol=1e-5)
    assert model.generate(prompt, max_new_tokens=2, temperature=0.0).top_choices is None


def test_sampling_is_reproducible_with_a_generator(model):
    prompt = tokens(2, 5)
    first = model.generate(prompt, max_new_tokens=6, temperature=2.0, generator=torch.Generator().manual_seed(7))
    second = model.generate(prompt, max_new_tokens=6, temperature=2.0, generator=torch.Generator().manual_seed(7))
    assert torch.equal(first.actions, second.actions) and torch.equal(first.tokens, second.tokens)


def test_fixed_action_controls_the_continuation(model):
    prompt = tokens(1, 6)
    continuations = {
        tuple(model.generate(prompt, max_new_tokens=6, actions=action, eos_token_id=[]).tokens[0].tolist())
        for action in range(16)
    }
    assert len(continuations) >= 4
    out = model.generate(prompt, max_new_tokens=6, actions=5, eos_token_id=[])
    assert bool((out.actions == 5).all())
    per_position = torch.tensor([1, 2, 3, 4, 5, 6])
    out = model.generate(prompt.expand(2, -1), max_new_tokens=6, actions=per_position, eos_token_id=[])
    assert torch.equal(out.actions, per_position.expand(2, -1))
    expected = model.world_logits(out.sequences[:, :-1], torch.cat([model.label_actions(prompt).expand(2, -1), out.actions], 1))
    assert torch.equal(expected[:, 5:].argmax(-1), out.tokens[:, :])
    with pytest.raises(ValueError, match="actions must lie in"):
        model.generate(prompt, max_new_tokens=2, actions=16)


def test_eos_and_stop_strings_end_rows():
    torch.manual_seed(0)
    model = BWAreaModel(tiny_config()).eval()
    prompt = tokens(2, 5)
    free = model.generate(prompt, max_new_tokens=6, temperature=0.0, eos_token_id=[])
    stop_token = int(free.tokens[0, 2])
    out = model.generate(prompt, max_new_tokens=6, temperature=0.0, eos_token_id=stop_token)
    first = int((free.tokens[0] == stop_token).nonzero()[0])
    assert out.mask[0].tolist() == [i <= first for i in range(out.tokens.shape[1])]
    assert bool(out.finished[0])
    assert bool((out.tokens[0, first + 1:] == 0).all())  # pad after the stop

    class CharTokenizer:
        def decode(self, ids):
            return "".join(chr(65 + i % 26) for i in ids)

    text = CharTokenizer().decode(free.tokens[1, 1:3].tolist())
    out = model.generate(prompt, max_new_tokens=6, temperature=0.0, eos_token_id=[], stop_strings=[text], tokenizer=CharTokenizer())
    assert out.mask[1].tolist()[:3] == [True, True, True] and not bool(out.mask[1, 3:].any())


def test_autoregressive_baseline_generation_is_cached_correctly():
    torch.manual_seed(0)
    baseline = ARLanguageModel(ARConfig.matching(tiny_config())).eval()
    prompt = tokens(2, 6)
    out = baseline.generate(prompt, max_new_tokens=8, temperature=0.0, eos_token_id=[])
    sequence = prompt
    for _ in range(8):
        sequence = torch.cat([sequence, baseline(sequence)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out.tokens, sequence[:, 6:])
    assert torch.equal(out.actions, out.tokens)
    recomputed, _ = baseline.action_log_probs(out.sequences, out.action_positions(), out.attention_mask)
    assert torch.allclose(recomputed[:, 5:], out.action_log_probs, atol=1e-5)
    loss = baseline.loss(prompt)
    assert torch.isfinite(loss) and loss.item() > 0


def test_ema_codebook_moves_towards_assigned_features():
    torch.manual_seed(0)
    model = BWAreaModel(tiny_config(codebook_update="ema", ema_decay=0.5)).train()
    before = model.codebook.codebook.clone()
    out = model.stage1(tokens(4, 16))
    assert out.codebook_loss.item() == 0.0 and out.commitment_loss.item() > 0
    assert not isinstance(model.codebook.codebook, torch.nn.Parameter)
    used = out.actions.unique()
    moved = (model.codebook.codebook - before).norm(dim=-1)
    assert bool((moved[used] > 0).all())
    assigned = out.features[out.actions == used[0]]
    # counts start at 1 and sums at the row itself, so after one update the row is the count-weighted
    # average of its old value and the features assigned to it (up to Laplace smoothing)
    expected = (before[used[0]] + assigned.sum(0)) / (1 + len(assigned))
    assert torch.allclose(model.codebook.codebook[used[0]], expected, atol=1e-4)


def test_dead_code_restart_revives_unused_codes():
    torch.manual_seed(0)
    model = BWAreaModel(tiny_config(usage_decay=0.0)).train()
    with torch.no_grad():
        model.codebook.codebook[4:] += 100.0  # far from every feature: never chosen
    out = model.stage1(tokens(4, 16))
    assert out.usage.alive_codes <= 4
    dead = model.codebook.dead_codes()
    assert set(range(4, 16)) <= set(dead.tolist())
    restarted = model.codebook.restart_dead_codes(out.features, generator=torch.Generator().manual_seed(0))
    assert restarted == len(dead)
    revived = model.stage1(tokens(4, 16, seed=9))
    assert revived.usage.alive_codes > out.usage.alive_codes
    assert set(revived.actions.unique().tolist()) & set(range(4, 16))


def test_code_usage_statistics():
    usage = code_usage(torch.tensor([0, 1, 2, 3]), 8)
    assert usage.alive_codes == 4 and abs(usage.perplexity - 4.0) < 1e-5
    usage = code_usage(torch.tensor([[5, 5], [5, 2]]), 8, mask=torch.tensor([[True, True], [True, False]]))
    assert usage.alive_codes == 1 and usage.entropy == 0.0


def test_kv_cache_respects_capacity_and_positions(model):
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model.policy_logits(tokens(1, 130))
