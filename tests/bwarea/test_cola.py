import json

import pytest
import torch
import torch.nn.functional as F

import bwarea
from bwarea import ARConfig, ARLanguageModel, CheckpointError, CoLAConfig, CoLAModel
from bwarea.cola import straight_through_one_hot

VOCAB, ACTIONS = 97, 8


def tiny_lm(seed: int = 0, **overrides) -> ARLanguageModel:
    torch.manual_seed(seed)
    fields = dict(vocab_size=VOCAB, hidden_size=32, num_heads=4, num_kv_heads=2, intermediate_size=64, num_layers=2,
                  max_position_embeddings=64, pad_token_id=0, eos_token_id=1)
    return ARLanguageModel(ARConfig(**{**fields, **overrides})).eval()


def make_model(active: bool = True, seed: int = 0, **overrides) -> CoLAModel:
    """CoLA on a tiny random LM; `active` gives the merge blocks and codebook random weights (as after
    some training) so that actions change the world model, which at initialisation they do not."""
    model = CoLAModel.from_lm(tiny_lm(seed, **overrides), num_actions=ACTIONS, inverse_layers=2, policy_layers=2).eval()
    if active:
        generator = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for merge in model.world.merges:
                merge.down.weight.normal_(0.0, 0.2, generator=generator)
            model.codebook.weight.normal_(0.0, 1.0, generator=generator)
    return model


def tokens(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(2, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def left_padded(*rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(len(row) for row in rows)
    ids, mask = torch.zeros(len(rows), length, dtype=torch.long), torch.zeros(len(rows), length, dtype=torch.long)
    for index, row in enumerate(rows):
        ids[index, length - len(row):], mask[index, length - len(row):] = row, 1
    return ids, mask


def test_config_validation_and_defaults():
    config = CoLAConfig()
    assert (config.num_actions, config.inverse_layers, config.policy_layers, config.merge_layers) == (64, 4, 8, 2)
    assert (config.gumbel_tau, config.entropy_coef, config.model_type) == (2.0, 0.001, "bwarea-cola")
    assert config.merge_width == config.intermediate_size and CoLAConfig(merge_intermediate_size=40).merge_width == 40
    for field, value in (("num_actions", 1), ("merge_layers", 0), ("policy_layers", 0), ("num_layers", 0),
                         ("merge_intermediate_size", 0), ("gumbel_tau", 0.0), ("entropy_coef", -0.1)):
        with pytest.raises(ValueError, match=field):
            CoLAConfig(**{field: value})
    with pytest.raises(ValueError, match="num_kv_heads"):
        CoLAConfig(num_kv_heads=3)


def test_from_lm_copies_the_lm_and_keeps_it_frozen():
    lm = tiny_lm()
    model = CoLAModel.from_lm(lm, num_actions=ACTIONS, merge_layers=3, gumbel_tau=1.5)
    config = model.config
    assert (config.num_layers, config.num_actions, config.merge_layers, config.gumbel_tau) == (2, 8, 3, 1.5)
    lm_state = {**{f"lm.{k}": v for k, v in lm.trunk.state_dict().items()}, "lm_head.weight": lm.lm_head.weight}
    state = model.state_dict()
    assert all(torch.equal(state[name], tensor) for name, tensor in lm_state.items())
    assert not any(p.requires_grad for p in [*model.lm.parameters(), *model.lm_head.parameters()])
    assert all(p.requires_grad for p in [*model.stage1_parameters(), *model.policy_parameters()])
    parts = (model.lm, model.inverse, model.codebook, model.world, model.policy)
    assert model.num_parameters() == sum(p.numel() for part in parts for p in part.parameters()) + lm.lm_head.weight.numel()
    with pytest.raises(ValueError, match="hidden_size"):
        CoLAModel.from_lm(lm, hidden_size=64)
    with pytest.raises(ValueError, match="ARLanguageModel"):
        CoLAModel.from_lm(model)


def test_shapes_of_every_mode():
    model = make_model()
    x = tokens(3, 10)
    out = model.stage1(x, return_logits=True)
    assert out.logits.shape == (3, 9, VOCAB)
    assert out.actions.shape == (3, 9) and out.features.shape == (3, 9, ACTIONS)
    assert torch.allclose(model.stage1(x).lm_loss, out.lm_loss, atol=1e-5) and model.stage1(x).logits is None
    assert out.codebook_loss.item() == 0.0
    # commitment_loss carries the entropy bonus: -coef x the mean entropy of the ID's softmax
    log_probs = out.features.log_softmax(-1)
    entropy = -(log_probs.exp() * log_probs).sum(-1).mean()
    assert torch.allclose(out.commitment_loss, -0.001 * entropy)
    assert torch.allclose(out.loss, out.lm_loss + out.commitment_loss)
    assert 1 <= out.usage.alive_codes <= ACTIONS
    assert model.inverse_logits(x).shape == (3, 9, ACTIONS) and model.label_actions(x).shape == (3, 9)
    assert model.policy_logits(x).shape == (3, 10, ACTIONS)
    log_probs, entropy = model.action_log_probs(x, model.label_actions(x))
    assert log_probs.shape == entropy.shape == (3, 9) and bool((log_probs <= 0).all())
    assert model.world_logits(x, torch.full((10,), 3)).shape == (3, 10, VOCAB)
    logits, actions = model.simulated_logits(x)
    assert logits.shape == (3, 10, VOCAB) and actions.shape == (3, 10)
    assert torch.equal(actions, model.policy_logits(x).argmax(-1))
    assert torch.allclose(logits, model.world_logits(x, actions), atol=1e-6)
    two_stream, same_actions = model.two_stream_simulated_logits(x)
    assert torch.equal(two_stream, logits) and torch.equal(same_actions, actions)
    generated = model.generate(x, max_new_tokens=4)
    assert generated.tokens.shape == generated.actions.shape == generated.action_log_probs.shape == (3, 4)


def test_world_model_equals_the_lm_at_initialisation_whatever_the_actions():
    lm = tiny_lm()
    model = CoLAModel.from_lm(lm, num_actions=ACTIONS).eval()
    ids, mask = left_padded(tokens(1, 6, seed=1)[0], tokens(1, 11, seed=2)[0])
    expected = lm(ids, mask)
    for seed in range(3):
        actions = torch.randint(0, ACTIONS, ids.shape, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(model.world_logits(ids, actions, mask), expected)
    x = tokens(2, 12)
    out = model.stage1(x, return_logits=True)
    assert torch.equal(out.logits, lm(x)[:, :-1])
    assert torch.allclose(out.lm_loss, lm.loss(x), atol=1e-6)
    # once the merge blocks move, actions matter
    active = make_model()
    assert not torch.allclose(active.world_logits(x, torch.zeros_like(x)), active.world_logits(x, torch.ones_like(x)))


def test_inverse_dynamics_looks_ahead_exactly_one_token():
    model = make_model()
    x = tokens(1, 12)
    base = model.inverse_logits(x)
    for t in range(10):
        changed = x.clone()
        changed[0, t + 2:] = tokens(1, 12, seed=t + 1)[0, t + 2:]
        assert torch.allclose(model.inverse_logits(changed)[0, : t + 1], base[0, : t + 1], atol=1e-6)
        changed = x.clone()
        changed[0, t + 1] = (x[0, t + 1] + 1) % VOCAB
        assert not torch.allclose(model.inverse_logits(changed)[0, t], base[0, t], atol=1e-4)
    assert torch.equal(model.label_actions(x), base.argmax(-1))


def test_policy_is_causal_and_world_model_is_per_position():
    model = make_model()
    x = tokens(1, 12)
    actions = torch.randint(0, ACTIONS, (1, 12), generator=torch.Generator().manual_seed(3))
    world, policy = model.world_logits(x, actions), model.policy_logits(x)
    for t in range(11):
        changed_x = x.clone()
        changed_x[0, t + 1:] = tokens(1, 12, seed=50 + t)[0, t + 1:]
        assert torch.allclose(model.policy_logits(changed_x)[0, : t + 1], policy[0, : t + 1], atol=1e-6)
        # any action but a_t leaves the logits at t unchanged: the world model sees no action history
        changed_a = (actions + 1) % ACTIONS
        changed_a[0, t] = actions[0, t]
        assert torch.allclose(model.world_logits(changed_x, changed_a)[0, t], world[0, t], atol=1e-6)
        assert torch.allclose(model.two_stream_logits(x, changed_a)[0, t], world[0, t], atol=1e-6)
    changed_a = actions.clone()
    changed_a[0, 4] = (actions[0, 4] + 1) % ACTIONS
    assert not torch.allclose(model.world_logits(x, changed_a)[0, 4], world[0, 4], atol=1e-4)


def test_gradients_reach_only_the_parts_each_stage_trains():
    model = make_model().train()
    x = tokens(2, 12)
    model.stage1(x).loss.backward()
    for part in (model.inverse, model.codebook, model.world):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())
    frozen = [*model.lm.parameters(), *model.lm_head.parameters(), *model.policy.parameters()]
    assert all(p.grad is None for p in frozen)
    # the world model driven by policy actions sends no gradient back into the policy
    model.zero_grad(set_to_none=True)
    logits, _ = model.simulated_logits(x, temperature=1.0, generator=torch.Generator().manual_seed(0))
    logits.logsumexp(-1).sum().backward()
    assert all(p.grad is None for p in model.policy.parameters())
    # stage 2: behaviour cloning of the frozen ID's labels trains the policy alone
    model.zero_grad(set_to_none=True)
    labels = model.label_actions(x)
    F.cross_entropy(model.policy_logits(x)[:, :-1].flatten(0, 1), labels.flatten()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.policy.parameters())
    others = [p for name, p in model.named_parameters() if not name.startswith("policy.")]
    assert all(p.grad is None for p in others)


def test_straight_through_gumbel_one_hot():
    logits = torch.randn(64, ACTIONS, generator=torch.Generator().manual_seed(0), requires_grad=True)
    weights = torch.randn(64, ACTIONS, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    one_hot = straight_through_one_hot(logits, tau=2.0, sample=True)
    assert bool(((one_hot == 0) | (one_hot == 1)).all()) and bool((one_hot.sum(-1) == 1).all())
    assert not torch.equal(one_hot.argmax(-1), logits.argmax(-1))  # sampled, not argmax
    (one_hot * weights).sum().backward()
    # the gradient is that of the tempered softmax of the noisy scores: it sums to zero per row
    assert logits.grad.abs().sum() > 0 and torch.allclose(logits.grad.sum(-1), torch.zeros(64), atol=1e-6)
    # without noise: argmax forward, gradient of softmax(logits / tau)
    logits.grad = None
    one_hot = straight_through_one_hot(logits, tau=2.0, sample=False)
    assert torch.equal(one_hot.argmax(-1), logits.argmax(-1))
    (one_hot * weights).sum().backward()
    expected, = torch.autograd.grad(((logits / 2.0).softmax(-1) * weights).sum(), logits)
    assert torch.allclose(logits.grad, expected, atol=1e-6)
    # Gumbel-max: draws follow softmax(logits) whatever tau
    scores = torch.tensor([0.0, 1.0, 2.0]).expand(20000, 3)
    torch.manual_seed(1)
    counts = straight_through_one_hot(scores, tau=2.0, sample=True).sum(0) / 20000
    assert torch.allclose(counts, scores[0].softmax(-1), atol=0.015)


def test_stage1_samples_in_training_and_takes_the_argmax_otherwise():
    model = make_model()
    x = tokens(4, 16)
    labels = model.label_actions(x)
    assert torch.equal(model.stage1(x).actions, labels)
    model.inverse.train()
    torch.manual_seed(0)
    assert not torch.equal(model.stage1(x).actions, labels)
    for module in model.frozen_modules("policy"):
        module.eval()
    assert torch.equal(model.stage1(x).actions, labels)


def test_frozen_modules_per_stage():
    model = make_model(active=False)
    assert model.frozen_modules("world") == [model.lm, model.lm_head, model.policy]
    assert model.frozen_modules("policy") == [model.lm, model.lm_head, model.inverse, model.codebook, model.world]
    with pytest.raises(ValueError, match="stage"):
        model.frozen_modules("rl")


def _recorded_generation(model: CoLAModel, monkeypatch, *args, **options):
    """model.generate, also returning the world-model logits of every step (B, N, V)."""
    recorded, make_decoder = [], model.decoder

    def recording_decoder(*decoder_args, **decoder_options):
        decoder = make_decoder(*decoder_args, **decoder_options)
        token_logits = decoder.token_logits

        def recording_token_logits(*step):
            recorded.append(token_logits(*step))
            return recorded[-1]

        decoder.token_logits = recording_token_logits
        return decoder

    monkeypatch.setattr(model, "decoder", recording_decoder)
    out = model.generate(*args, **options)
    monkeypatch.undo()
    return out, torch.stack(recorded, dim=1)


@pytest.mark.parametrize("sampled", [False, True])
def test_cached_generation_scores_the_uncached_conditionals(monkeypatch, sampled):
    model = make_model()
    ids, mask = left_padded(tokens(1, 4, seed=1)[0], tokens(1, 7, seed=2)[0])
    prompt_length, steps = ids.shape[1], 9
    if sampled:
        options = dict(temperature=1.0, generator=torch.Generator().manual_seed(5))
    else:
        options = dict(actions=torch.randint(0, ACTIONS, (2, steps), generator=torch.Generator().manual_seed(4)))
    out, step_logits = _recorded_generation(model, monkeypatch, ids, mask, max_new_tokens=steps, eos_token_id=[], **options)
    assert out.tokens.shape == (2, steps)
    sequences, attention = out.sequences[:, :-1], out.attention_mask[:, :-1]
    uncached = model.world_logits(sequences, out.action_positions(), attention)[:, prompt_length - 1:]
    assert torch.allclose(step_logits, uncached, atol=1e-5)
    assert torch.equal(out.tokens, uncached.argmax(-1))
    log_probs, _ = model.action_log_probs(out.sequences, out.action_positions(), out.attention_mask)
    assert torch.allclose(log_probs[:, prompt_length - 1:], out.action_log_probs, atol=1e-5)
    if not sampled:
        assert torch.equal(out.actions, options["actions"])
        alone = model.generate(tokens(1, 4, seed=1), max_new_tokens=steps, actions=options["actions"][:1], eos_token_id=[])
        assert torch.equal(alone.tokens[0], out.tokens[0])  # left padding changes nothing


def test_prompt_actions_mode_has_no_effect():
    model = make_model()
    ids, mask = left_padded(tokens(1, 4, seed=1)[0], tokens(1, 7, seed=2)[0])
    by_mode = [model.generate(ids, mask, max_new_tokens=6, temperature=1.0, eos_token_id=[], prompt_actions=mode,
                              generator=torch.Generator().manual_seed(0)) for mode in ("inverse", "policy")]
    assert torch.equal(by_mode[0].tokens, by_mode[1].tokens) and torch.equal(by_mode[0].actions, by_mode[1].actions)


@pytest.mark.parametrize("tied", [False, True])
def test_save_and_load_round_trip(tmp_path, tied):
    model = make_model(tie_word_embeddings=tied)
    model.save_pretrained(tmp_path)
    loaded = bwarea.load_pretrained(tmp_path)
    assert isinstance(loaded, CoLAModel) and loaded.config == model.config
    loaded.eval()
    assert not any(p.requires_grad for p in [*loaded.lm.parameters(), *loaded.lm_head.parameters()])
    assert (loaded.lm_head.weight is loaded.lm.embed.weight) == tied
    x = tokens(2, 9)
    actions = torch.randint(0, ACTIONS, (2, 9), generator=torch.Generator().manual_seed(0))
    assert torch.equal(loaded.world_logits(x, actions), model.world_logits(x, actions))
    assert torch.equal(loaded.policy_logits(x), model.policy_logits(x))
    assert torch.equal(loaded.inverse_logits(x), model.inverse_logits(x))
    # a config that does not fit the weights names the field
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "num_actions": 16}))
    with pytest.raises(CheckpointError, match="num_actions"):
        bwarea.load_pretrained(tmp_path)
