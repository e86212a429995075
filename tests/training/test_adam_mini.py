"""Adam-mini: AdamW on the degenerate partition, the model partition, a hand-computed update, exact resume, errors."""

import copy
import io
import math

import pytest
import torch
import torch.nn as nn

from bwarea import ARConfig, ARLanguageModel, BWAreaConfig, BWAreaModel
from bwarea.lora import LoraSettings, add_lora
from training.adam_mini import (AdamMini, adam_mini_param_groups, attention_qkv_blocks, element_blocks, num_blocks,
                                optimizer_state_bytes, row_blocks)

HIDDEN, HEADS, KV_HEADS, HEAD_DIM, INTERMEDIATE, VOCAB, ACTIONS, CODE_DIM = 64, 4, 2, 16, 96, 128, 8, 16


def tiny_bwarea() -> BWAreaModel:
    torch.manual_seed(0)
    return BWAreaModel(BWAreaConfig.preset("tiny", vocab_size=VOCAB, hidden_size=HIDDEN, num_heads=HEADS,
                                           num_kv_heads=KV_HEADS, intermediate_size=INTERMEDIATE, world_layers=2,
                                           inverse_layers=1, policy_layers=2, num_actions=ACTIONS, code_dim=CODE_DIM))


def trunk_blocks(layers: int) -> int:
    """Second-moment entries of one Transformer trunk, counted by hand."""
    per_layer = (1                          # attention norm
                 + HEADS + KV_HEADS         # Q heads, K heads
                 + KV_HEADS * HEAD_DIM      # V rows
                 + HIDDEN                   # attention output rows
                 + 1                        # MLP norm
                 + 2 * INTERMEDIATE         # gate/up rows
                 + HIDDEN)                  # down rows
    return VOCAB + layers * per_layer + 1  # embedding rows, blocks, final norm


def fill_gradients(parameters, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for index, param in enumerate(parameters):
        grad = torch.randn(param.shape, generator=generator) * (index % 3 + 0.5)
        param.grad = grad.to(param.dtype)


def test_one_element_blocks_equal_adamw_step_for_step():
    torch.manual_seed(1)
    shapes = [(5, 3), (7,), (2, 3, 4)]
    mini_params = [nn.Parameter(torch.randn(shape)) for shape in shapes]
    adamw_params = [nn.Parameter(param.detach().clone()) for param in mini_params]
    initial = [param.detach().clone() for param in mini_params]
    settings = dict(lr=0.01, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1)
    mini = AdamMini([{"params": mini_params, "block_layouts": [element_blocks(s) for s in shapes]}], **settings)
    adamw = torch.optim.AdamW(adamw_params, **settings)
    for step in range(6):
        fill_gradients(mini_params, seed=step)
        fill_gradients(adamw_params, seed=step)
        mini.step()
        adamw.step()
        for ours, reference in zip(mini_params, adamw_params):
            torch.testing.assert_close(ours, reference, rtol=0, atol=1e-6)
    assert all(float((param.detach() - start).abs().mean()) > 0.01 for param, start in zip(mini_params, initial))


def test_hand_computed_two_steps_with_two_blocks():
    weight = nn.Parameter(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    optimizer = AdamMini([{"params": [weight], "block_layouts": [row_blocks(weight.shape)]}],
                         lr=0.1, betas=(0.5, 0.5), eps=0.0, weight_decay=0.5)
    # step 1: g = [[1, -1], [2, 0]], block mean squares [1, 2]; m = [[.5, -.5], [1, 0]], v = [.5, 1];
    # bias corrections .5 and .5 -> m_hat = [[1, -1], [2, 0]], v_hat = [1, 2]; decay multiplies w by 1 - .1 * .5
    weight.grad = torch.tensor([[1.0, -1.0], [2.0, 0.0]])
    optimizer.step()
    after_one = [[0.95 - 0.1, 1.9 + 0.1], [2.85 - 0.1 * 2 / math.sqrt(2), 3.8]]
    torch.testing.assert_close(weight.detach(), torch.tensor(after_one), rtol=0, atol=1e-6)
    torch.testing.assert_close(optimizer.state[weight]["block_exp_avg_sq"], torch.tensor([0.5, 1.0]))
    # step 2: g = [[0, 2], [1, 1]], block mean squares [2, 1]; m = [[.25, .75], [1, .5]], v = [1.25, 1];
    # bias corrections .75 and .75 -> m_hat = [[1/3, 1], [4/3, 2/3]], v_hat = [5/3, 4/3]
    weight.grad = torch.tensor([[0.0, 2.0], [1.0, 1.0]])
    optimizer.step()
    row0 = [0.95 * value - 0.1 * moment / math.sqrt(5 / 3) for value, moment in zip(after_one[0], (1 / 3, 1.0))]
    row1 = [0.95 * value - 0.1 * moment / math.sqrt(4 / 3) for value, moment in zip(after_one[1], (4 / 3, 2 / 3))]
    torch.testing.assert_close(weight.detach(), torch.tensor([row0, row1]), rtol=0, atol=1e-6)
    torch.testing.assert_close(optimizer.state[weight]["block_exp_avg_sq"], torch.tensor([1.25, 1.0]))
    torch.testing.assert_close(optimizer.state[weight]["exp_avg"], torch.tensor([[0.25, 0.75], [1.0, 0.5]]))


def test_bwarea_partition_heads_rows_and_norms():
    model = tiny_bwarea()
    groups = adam_mini_param_groups(model, weight_decay=0.1)
    layouts = {id(p): layout for group in groups for p, layout in zip(group["params"], group["block_layouts"])}
    total = sum(num_blocks(layout) for layout in layouts.values())
    by_hand = (trunk_blocks(2) + HIDDEN + 1 + VOCAB      # world: trunk, injection W rows and norm, LM head rows
               + trunk_blocks(1) + CODE_DIM               # inverse dynamics: trunk, to_code rows
               + trunk_blocks(2) + ACTIONS                # policy: trunk, action head rows
               + ACTIONS + HIDDEN)                        # codebook rows, up-projection rows
    assert total == by_hand
    attention = model.world.trunk.blocks[0].attn
    assert layouts[id(attention.qkv.weight)] == ((HEADS + KV_HEADS, HEAD_DIM * HIDDEN), (KV_HEADS * HEAD_DIM, HIDDEN))
    assert layouts[id(model.world.trunk.blocks[0].attn_norm.weight)] == ((1, HIDDEN),)
    assert layouts[id(model.world.trunk.embed.weight)] == ((VOCAB, HIDDEN),)
    # decay on Linear and Embedding weights only (norms and the codebook parameter are not decayed)
    decayed = {id(p) for p in groups[0]["params"]}
    assert groups[0]["weight_decay"] == 0.1 and groups[1]["weight_decay"] == 0.0
    assert id(attention.qkv.weight) in decayed and id(model.world.trunk.embed.weight) in decayed
    assert id(model.world.trunk.norm.weight) not in decayed and id(model.codebook.codebook) not in decayed

    # the second moments are the block means of g^2: per head for Q/K, per row for V, one for a norm
    optimizer = AdamMini(groups, betas=(0.9, 0.99))
    params = [p for group in groups for p in group["params"]]
    fill_gradients(params, seed=3)
    optimizer.step()
    grad = attention.qkv.weight.grad
    qk_rows = (HEADS + KV_HEADS) * HEAD_DIM
    expected = 0.01 * torch.cat([grad[:qk_rows].reshape(HEADS + KV_HEADS, -1).pow(2).mean(-1), grad[qk_rows:].pow(2).mean(-1)])
    torch.testing.assert_close(optimizer.state[attention.qkv.weight]["block_exp_avg_sq"], expected)
    norm = model.world.trunk.norm.weight
    torch.testing.assert_close(optimizer.state[norm]["block_exp_avg_sq"], 0.01 * norm.grad.pow(2).mean()[None])
    assert sum(state["block_exp_avg_sq"].numel() for state in optimizer.state.values()) == by_hand

    # state: fp32 first moments plus the block entries, against AdamW's two moments and a step tensor per parameter
    adamw = torch.optim.AdamW([copy.deepcopy(p) for p in params])
    for param, twin in zip(params, adamw.param_groups[0]["params"]):
        twin.grad = param.grad
    adamw.step()
    count = sum(p.numel() for p in params)
    assert optimizer_state_bytes(optimizer) == 4 * (count + by_hand)
    assert optimizer_state_bytes(adamw) == 8 * count + 4 * len(params)
    assert 0.5 < optimizer_state_bytes(optimizer) / optimizer_state_bytes(adamw) < 0.52


def test_tied_embedding_counted_once_and_qkv_bias_by_heads():
    model = ARLanguageModel(ARConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_heads=HEADS, num_kv_heads=KV_HEADS,
                                     intermediate_size=INTERMEDIATE, num_layers=1, tie_word_embeddings=True,
                                     attention_bias=True))
    groups = adam_mini_param_groups(model)
    params = [p for group in groups for p in group["params"]]
    assert len(params) == len({id(p) for p in params}) == len(list(model.parameters()))
    layouts = {id(p): layout for group in groups for p, layout in zip(group["params"], group["block_layouts"])}
    assert layouts[id(model.trunk.blocks[0].attn.qkv.bias)] == ((HEADS + KV_HEADS, HEAD_DIM), (KV_HEADS * HEAD_DIM, 1))
    blocks = trunk_blocks(1) + HEADS + KV_HEADS + KV_HEADS * HEAD_DIM  # the q/k/v bias adds heads and V rows
    assert sum(num_blocks(layout) for layout in layouts.values()) == blocks
    described = repr(AdamMini(groups))
    assert "blocks:" in described and sum(int(line.split()[1]) for line in described.splitlines() if "blocks:" in line) == blocks


def test_lora_adapters_get_rows_and_only_given_parameters_train():
    model = tiny_bwarea()
    adapters = add_lora(model.policy.trunk, LoraSettings(rank=4, targets=("qkv",)))
    trainable = [*adapters, model.policy.action_head.weight]
    groups = adam_mini_param_groups(model, trainable, weight_decay=0.1, lr=5e-4)
    chosen = [p for group in groups for p in group["params"]]
    assert {id(p) for p in chosen} == {id(p) for p in trainable} and all(group["lr"] == 5e-4 for group in groups)
    qkv_rows = (HEADS + 2 * KV_HEADS) * HEAD_DIM
    layouts = [layout for group in groups for layout in group["block_layouts"]]
    assert sorted(set(layouts)) == sorted({((4, HIDDEN),), ((qkv_rows, 4),), ((ACTIONS, HIDDEN),)})
    # the frozen base weight of a LoRA-wrapped qkv still gets its heads
    all_groups = adam_mini_param_groups(model, model.parameters())
    base = model.policy.trunk.blocks[0].attn.qkv.get_base_layer().weight
    index = [i for i, p in enumerate(all_groups[0]["params"]) if p is base][0]
    assert all_groups[0]["block_layouts"][index][0] == (HEADS + KV_HEADS, HEAD_DIM * HIDDEN)


def test_state_dict_round_trip_resumes_exactly():
    torch.manual_seed(2)
    params = [nn.Parameter(torch.randn(6, 4)), nn.Parameter(torch.randn(5).to(torch.bfloat16))]
    layouts = [row_blocks((6, 4)), row_blocks((5,))]

    def build(weights):
        return AdamMini([{"params": weights, "block_layouts": layouts, "lr": 0.02}], betas=(0.9, 0.95), weight_decay=0.1)

    optimizer = build(params)
    for step in range(3):
        fill_gradients(params, seed=step)
        optimizer.step()
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    buffer.seek(0)
    resumed_params = [nn.Parameter(p.detach().clone()) for p in params]
    resumed = build(resumed_params)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert resumed.state[resumed_params[1]]["exp_avg"].dtype == torch.float32  # not cast to the bf16 parameter's dtype
    for step in range(3, 6):
        fill_gradients(params, seed=step)
        fill_gradients(resumed_params, seed=step)
        optimizer.step()
        resumed.step()
    for ours, theirs in zip(params, resumed_params):
        assert torch.equal(ours, theirs)
    assert resumed.state[resumed_params[0]]["step"] == 6


def test_bf16_parameter_is_the_fp32_update_rounded_once():
    values = torch.randn(3, 8).to(torch.bfloat16)
    grad = torch.randn(3, 8).to(torch.bfloat16)
    low, full = nn.Parameter(values.clone()), nn.Parameter(values.float())
    for param in (low, full):
        param.grad = grad.to(param.dtype)
        optimizer = AdamMini([{"params": [param], "block_layouts": [row_blocks(param.shape)]}], lr=0.1, weight_decay=0.1)
        optimizer.step()
        assert optimizer.state[param]["exp_avg"].dtype == torch.float32
    assert low.dtype == torch.bfloat16 and torch.equal(low, full.to(torch.bfloat16))
    assert not torch.equal(low, values)


def test_clear_errors():
    weight = nn.Parameter(torch.randn(4, 3))
    with pytest.raises(ValueError, match="block_layouts"):
        AdamMini([weight])
    with pytest.raises(ValueError, match="covers 4 elements"):
        AdamMini([{"params": [weight], "block_layouts": [((2, 2),)]}])
    with pytest.raises(ValueError, match="two different block layouts"):
        AdamMini([{"params": [weight], "block_layouts": [row_blocks(weight.shape)]},
                  {"params": [weight], "block_layouts": [element_blocks(weight.shape)]}])
    model = tiny_bwarea()
    with pytest.raises(ValueError, match="not a parameter of the BWAreaModel"):
        adam_mini_param_groups(model, [*model.policy_parameters(), weight])
    with pytest.raises(ValueError, match="sets 'block_layouts' itself"):
        adam_mini_param_groups(model, block_layouts=[])
    # a q/k/v weight tied to a plain layer would need head blocks and row blocks at once
    model.policy.action_head.weight = model.policy.trunk.blocks[0].attn.qkv.weight
    with pytest.raises(ValueError, match="asks for other Adam-mini blocks"):
        adam_mini_param_groups(model)
    with pytest.raises(ValueError, match="does not have the"):
        attention_qkv_blocks(model.world.trunk.blocks[0].attn, (10, HIDDEN))
    # resuming with another partition
    saved = AdamMini([{"params": [weight], "block_layouts": [row_blocks(weight.shape)]}]).state_dict()
    other = AdamMini([{"params": [weight], "block_layouts": [element_blocks(weight.shape)]}])
    with pytest.raises(ValueError, match="other block layouts"):
        other.load_state_dict(saved)
