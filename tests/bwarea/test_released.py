"""Conversion of the released BWArea-2.7B layout, checked on tiny synthetic releases.

The real 2.7B weights cannot be downloaded here. Instead a checkpoint is written in the release's exact
layout (its tensor names, Llama config with num_code/num_dim, a tokenizer with [PAD]) with random weights,
converted, and the converted model is compared with a forward pass written below from the formulas
over the release-named tensors — independent of bwarea's modules.
"""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import AutoTokenizer, PreTrainedTokenizerFast

import bwarea
from bwarea import BWAreaModel, CheckpointError
from bwarea.released import convert_released

HIDDEN, HEADS, KV_HEADS, INTERMEDIATE, LAYERS, ACTIONS, CODE_DIM = 32, 4, 2, 64, 4, 8, 16
HEAD_DIM = HIDDEN // HEADS
ROPE_THETA, EPS = 10000.0, 1e-5
WORDS = ["<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(36)]  # 39 tokens; [PAD] makes 40
TRUNKS = {"transformer": LAYERS, "transformer_action_enc": LAYERS // 2, "transformer_policy": LAYERS}


def release_tokenizer(with_pad: bool = True) -> PreTrainedTokenizerFast:
    backend = Tokenizer(models.WordLevel({word: i for i, word in enumerate(WORDS)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])  # Llama adds BOS
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    if with_pad:
        tokenizer.add_special_tokens({"pad_token": "[PAD]"})
    return tokenizer


def release_config(vocab: int, **overrides) -> dict:
    """A config.json like the release's: Hugging Face Llama fields plus the codebook size."""
    return {
        "architectures": ["IntentionForCausalLM"], "model_type": "llama", "hidden_act": "silu",
        "hidden_size": HIDDEN, "intermediate_size": INTERMEDIATE, "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS, "num_hidden_layers": LAYERS, "vocab_size": vocab,
        "max_position_embeddings": 64, "rms_norm_eps": EPS, "rope_theta": ROPE_THETA, "rope_scaling": None,
        "attention_bias": False, "tie_word_embeddings": False, "pretraining_tp": 1, "use_cache": True,
        "bos_token_id": 1, "eos_token_id": 2, "num_code": ACTIONS, "num_dim": CODE_DIM, "action_dim": CODE_DIM,
        "torch_dtype": "float32", **overrides,
    }


def release_state(vocab: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under the release's names; norm gains away from 1 so a swapped norm shows."""
    generator = torch.Generator().manual_seed(seed)

    def matrix(*shape):
        return torch.randn(*shape, generator=generator) / math.sqrt(shape[-1])

    def gain():
        return 1 + 0.3 * torch.randn(HIDDEN, generator=generator)

    state = {"model.embed_tokens.weight": matrix(vocab, HIDDEN), "lm_head.weight": matrix(vocab, HIDDEN)}
    for trunk, depth in TRUNKS.items():
        state[f"model.{trunk}.wte.weight"] = torch.randn(vocab, HIDDEN, generator=generator)
        state[f"model.{trunk}.ln_f.weight"] = gain()
        for i in range(depth):
            block = f"model.{trunk}.h.{i}."
            state[block + "input_layernorm.weight"] = gain()
            state[block + "post_attention_layernorm.weight"] = gain()
            state[block + "self_attn.q_proj.weight"] = matrix(HEADS * HEAD_DIM, HIDDEN)
            state[block + "self_attn.k_proj.weight"] = matrix(KV_HEADS * HEAD_DIM, HIDDEN)
            state[block + "self_attn.v_proj.weight"] = matrix(KV_HEADS * HEAD_DIM, HIDDEN)
            state[block + "self_attn.o_proj.weight"] = matrix(HIDDEN, HEADS * HEAD_DIM)
            state[block + "mlp.gate_proj.weight"] = matrix(INTERMEDIATE, HIDDEN)
            state[block + "mlp.up_proj.weight"] = matrix(INTERMEDIATE, HIDDEN)
            state[block + "mlp.down_proj.weight"] = matrix(HIDDEN, INTERMEDIATE)
    state["model.transformer_policy_layer.weight"] = matrix(ACTIONS, HIDDEN)
    state["model.press_layer.weight"] = matrix(CODE_DIM, HIDDEN)
    state["model.action_code_book.embed.weight"] = torch.randn(ACTIONS, CODE_DIM, generator=generator)
    state["model.unpress_layer.weight"] = matrix(HIDDEN, CODE_DIM)
    state["model.dynamics_layer.weight"] = matrix(HIDDEN, 2 * HIDDEN)
    state["model.dynamics_norm.weight"] = gain()
    return state


def write_release(directory, state, layout="safetensors", config=None, tokenizer=None):
    """Write `state` as the release would: one file or shards (with an index json), safetensors or .bin."""
    directory.mkdir(parents=True, exist_ok=True)
    vocab = state["lm_head.weight"].shape[0]
    (directory / "config.json").write_text(json.dumps(config or release_config(vocab)))
    (tokenizer or release_tokenizer()).save_pretrained(directory)
    suffix = "safetensors" if layout.startswith("safetensors") else "bin"
    stem = "model" if suffix == "safetensors" else "pytorch_model"
    if not layout.endswith("shards"):
        _save(state, directory / f"{stem}.{suffix}")
        return
    names = sorted(state)
    shards = [names[: len(names) // 2], names[len(names) // 2:]]
    weight_map = {}
    for number, shard in enumerate(shards, start=1):
        file = f"{stem}-{number:05d}-of-{len(shards):05d}.{suffix}"
        _save({name: state[name] for name in shard}, directory / file)
        weight_map.update(dict.fromkeys(shard, file))
    (directory / f"{stem}.{suffix}.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def _save(tensors, path):
    if path.suffix == ".safetensors":
        save_file({name: tensor.contiguous() for name, tensor in tensors.items()}, str(path))
    else:
        torch.save(tensors, path)


# --- the release's forward, from the formulas ---------------------------------------------------------

def rms_norm(x, gain):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS) * gain


def rotate(x):
    """RoPE, rotate-half convention: pairs (i, i + d/2) turn by position * theta^(-2i/d). x: (B, heads, T, d)."""
    inv_freq = 1.0 / ROPE_THETA ** (torch.arange(0, HEAD_DIM, 2, dtype=torch.float64) / HEAD_DIM)
    angles = torch.outer(torch.arange(x.shape[2], dtype=torch.float64), inv_freq)
    cos, sin = torch.cat([angles, angles], -1).cos().float(), torch.cat([angles, angles], -1).sin().float()
    first, second = x[..., : HEAD_DIM // 2], x[..., HEAD_DIM // 2:]
    return x * cos + torch.cat([-second, first], -1) * sin


def llama_block(x, w, prefix):
    batch, steps, _ = x.shape
    h = rms_norm(x, w[prefix + "input_layernorm.weight"])

    def heads(name, count):
        return (h @ w[prefix + name].T).view(batch, steps, count, HEAD_DIM).transpose(1, 2)

    q, k, v = rotate(heads("self_attn.q_proj.weight", HEADS)), rotate(heads("self_attn.k_proj.weight", KV_HEADS)), heads("self_attn.v_proj.weight", KV_HEADS)
    k, v = k.repeat_interleave(HEADS // KV_HEADS, dim=1), v.repeat_interleave(HEADS // KV_HEADS, dim=1)  # query head j reads KV head j // group
    scores = q @ k.transpose(-1, -2) / math.sqrt(HEAD_DIM)
    future = torch.ones(steps, steps, dtype=torch.bool).triu(1)
    attended = scores.masked_fill(future, float("-inf")).softmax(-1) @ v
    x = x + attended.transpose(1, 2).reshape(batch, steps, HIDDEN) @ w[prefix + "self_attn.o_proj.weight"].T
    h = rms_norm(x, w[prefix + "post_attention_layernorm.weight"])
    swiglu = F.silu(h @ w[prefix + "mlp.gate_proj.weight"].T) * (h @ w[prefix + "mlp.up_proj.weight"].T)
    return x + swiglu @ w[prefix + "mlp.down_proj.weight"].T


def trunk(ids, w, name, before_layer=None):
    """Embedding, blocks (calling before_layer(index, x) first, if given), final norm."""
    x = w[f"model.{name}.wte.weight"][ids]
    for i in range(TRUNKS[name]):
        x = before_layer(i, x) if before_layer else x
        x = llama_block(x, w, f"model.{name}.h.{i}.")
    return rms_norm(x, w[f"model.{name}.ln_f.weight"])


def reference_world_logits(ids, actions, w):
    """Actions a_t (B, T) enter before layer L/2: x + RMSNorm(W [x ; unpress(codebook[a_t])])."""
    action_embedding = w["model.action_code_book.embed.weight"][actions] @ w["model.unpress_layer.weight"].T

    def inject(i, x):
        if i != LAYERS // 2:
            return x
        mixed = torch.cat([x, action_embedding], -1) @ w["model.dynamics_layer.weight"].T
        return x + rms_norm(mixed, w["model.dynamics_norm.weight"])

    return trunk(ids, w, "transformer", inject) @ w["lm_head.weight"].T


def reference_labels(ids, w):
    """Features shifted left by one (position t sees x_{t+1}), pressed to D, nearest codebook row; last dropped."""
    features = trunk(ids, w, "transformer_action_enc")[:, 1:]
    codes = features @ w["model.press_layer.weight"].T
    book = w["model.action_code_book.embed.weight"]
    return torch.cdist(codes, book.expand(codes.shape[0], -1, -1)).argmin(-1)


def reference_policy_logits(ids, w):
    return trunk(ids, w, "transformer_policy") @ w["model.transformer_policy_layer.weight"].T


# --- tests --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def state():
    return release_state(vocab=len(WORDS) + 1)


def batch_of_text():
    tokenizer = release_tokenizer()
    texts = ["w1 w5 w9 w2 w30 w7 w7 w11", "w3 w3 w20 w21 w22 w0 w35 w16"]
    return torch.tensor([tokenizer(text)["input_ids"] for text in texts])


def assert_matches_release(model: BWAreaModel, weights: dict[str, torch.Tensor]):
    weights = {name: tensor.float() for name, tensor in weights.items()}
    ids = batch_of_text()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for actions in (torch.randint(ACTIONS, ids.shape, generator=generator), torch.full(ids.shape, 5)):
            expected = reference_world_logits(ids, actions, weights)
            # rows the conversion added for [PAD] have no counterpart in the release's weights
            torch.testing.assert_close(model.world_logits(ids, actions)[..., : expected.shape[-1]], expected, atol=1e-4, rtol=1e-4)
        other = reference_world_logits(ids, torch.full(ids.shape, 6), weights)
        assert (other - expected).abs().max() > 0.1  # the action matters, so the comparison above means something
        labels = reference_labels(ids, weights)
        assert labels.unique().numel() > 2  # varied labels: a wrong shift or codebook would show
        assert torch.equal(model.label_actions(ids), labels)
        torch.testing.assert_close(model.policy_logits(ids), reference_policy_logits(ids, weights), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("layout", ["safetensors", "safetensors_shards", "bin", "bin_shards"])
def test_converted_release_computes_what_the_release_computes(state, tmp_path, layout):
    write_release(tmp_path / "release", state, layout)
    out = convert_released(tmp_path / "release", tmp_path / "converted")
    assert out == tmp_path / "converted"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging directory left behind

    model = bwarea.load_pretrained(out).eval()
    config = model.config
    assert (config.world_layers, config.inverse_layers, config.policy_layers) == (4, 2, 4)
    assert (config.num_actions, config.code_dim, config.vocab_size) == (ACTIONS, CODE_DIM, 40)
    assert (config.num_heads, config.num_kv_heads, config.intermediate_size) == (HEADS, KV_HEADS, INTERMEDIATE)
    assert (config.pad_token_id, config.eos_token_id, config.rms_norm_eps) == (39, 2, EPS)
    assert_matches_release(model, state)

    tokenizer = bwarea.load_tokenizer(out)
    assert tokenizer.pad_token == "[PAD]" and tokenizer.pad_token_id == 39
    assert tokenizer("w1 w2")["input_ids"] == [1, 4, 5]
    info = json.loads((out / "training_info.json").read_text())
    assert info == {"stage": "converted", "source": str((tmp_path / "release").resolve()), "variant": "released"}


def test_bfloat16_release_stays_bfloat16_and_adds_pad_like_the_release_loader(tmp_path):
    """A tokenizer saved without a pad token gets [PAD]; 39 rows grow to 8 * ceil(40 / 8) = 40."""
    state = {name: tensor.to(torch.bfloat16) for name, tensor in release_state(vocab=len(WORDS), seed=3).items()}
    rotary_table = {"model.transformer.h.0.self_attn.rotary_emb.inv_freq": torch.ones(HEAD_DIM // 2)}  # older saves keep it
    write_release(tmp_path / "release", {**state, **rotary_table}, "bin_shards", tokenizer=release_tokenizer(with_pad=False))
    out = convert_released(tmp_path / "release", tmp_path / "converted")

    saved = load_file(str(out / "model.safetensors"))
    assert saved["world.lm_head.weight"].dtype == torch.bfloat16
    assert saved["world.lm_head.weight"].shape == (40, HIDDEN)
    for ours, theirs in (("world.lm_head.weight", "lm_head.weight"), ("inverse.trunk.embed.weight", "model.transformer_action_enc.wte.weight")):
        assert torch.equal(saved[ours][:39], state[theirs])
        torch.testing.assert_close(saved[ours][39].float(), state[theirs].float().mean(0), atol=1e-2, rtol=1e-2)
    assert "embed_tokens" not in " ".join(saved)

    model = bwarea.load_pretrained(out).eval()
    assert (model.config.vocab_size, model.config.pad_token_id) == (40, 39)
    assert_matches_release(model, {name: tensor.float() for name, tensor in state.items()})
    assert AutoTokenizer.from_pretrained(str(out), local_files_only=True).pad_token == "[PAD]"


def _convert_broken(tmp_path, state, **config_overrides):
    vocab = state["lm_head.weight"].shape[0]
    write_release(tmp_path / "release", state, config=release_config(vocab, **config_overrides))
    with pytest.raises(CheckpointError) as error:
        convert_released(tmp_path / "release", tmp_path / "converted")
    assert not (tmp_path / "converted").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    return str(error.value)


def test_missing_tensor_is_named(state, tmp_path):
    broken = dict(state)
    del broken["model.transformer.h.3.mlp.up_proj.weight"]
    message = _convert_broken(tmp_path, broken)
    assert "'model.transformer.h.3.mlp.up_proj.weight' is missing (1 missing)" in message


def test_unknown_tensor_is_named(state, tmp_path):
    message = _convert_broken(tmp_path, {**state, "model.transformer.h.0.self_attn.gate.weight": torch.zeros(HIDDEN)})
    assert "'model.transformer.h.0.self_attn.gate.weight' is unknown (1 unknown)" in message


def test_misshaped_tensor_is_named(state, tmp_path):
    message = _convert_broken(tmp_path, {**state, "model.press_layer.weight": torch.zeros(CODE_DIM + 1, HIDDEN)})
    assert f"'model.press_layer.weight' has ({CODE_DIM + 1}, {HIDDEN}) but needs ({CODE_DIM}, {HIDDEN}) (1 mis-shaped)" in message


def test_several_problems_arrive_in_one_error(state, tmp_path):
    broken = {name: tensor for name, tensor in state.items() if not name.startswith("model.transformer.h.1.")}
    broken["model.extra.weight"] = torch.zeros(1)
    broken["model.dynamics_norm.weight"] = torch.zeros(HIDDEN + 1)
    message = _convert_broken(tmp_path, broken)
    assert ("'model.transformer.h.1.input_layernorm.weight', 'model.transformer.h.1.mlp.down_proj.weight', "
            "'model.transformer.h.1.mlp.gate_proj.weight' and 6 more are missing (9 missing)") in message
    assert "'model.extra.weight' is unknown (1 unknown)" in message
    assert f"'model.dynamics_norm.weight' has ({HIDDEN + 1},) but needs ({HIDDEN},) (1 mis-shaped)" in message


def test_bias_is_refused(state, tmp_path):
    message = _convert_broken(tmp_path, {**state, "model.transformer.h.0.self_attn.q_proj.bias": torch.zeros(HIDDEN)})
    assert "'model.transformer.h.0.self_attn.q_proj.bias'" in message and "bias" in message


def test_layer_count_must_match_the_config(state, tmp_path):
    message = _convert_broken(tmp_path, state, num_hidden_layers=6)
    assert "num_hidden_layers=6 gives the world trunk 6 layers, but the weights hold 4" in message


def test_unsupported_llama_feature_is_refused(state, tmp_path):
    message = _convert_broken(tmp_path, state, rope_scaling={"type": "linear", "factor": 2.0})
    assert "'rope_scaling'" in message


def test_codebook_size_must_match_the_config(state, tmp_path):
    assert "'num_code' is 64" in _convert_broken(tmp_path, state, num_code=64)


def test_existing_output_is_refused_unless_overwrite(state, tmp_path):
    write_release(tmp_path / "release", state)
    out = tmp_path / "converted"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="already exists"):
        convert_released(tmp_path / "release", out)
    assert (out / "notes.txt").read_text() == "keep me"
    convert_released(tmp_path / "release", out, overwrite=True)
    assert not (out / "notes.txt").exists() and (out / "model.safetensors").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_missing_weights_are_reported(tmp_path):
    (tmp_path / "release").mkdir()
    (tmp_path / "release" / "config.json").write_text(json.dumps(release_config(40)))
    release_tokenizer().save_pretrained(tmp_path / "release")
    with pytest.raises(CheckpointError, match="holds no weights"):
        convert_released(tmp_path / "release", tmp_path / "converted")
