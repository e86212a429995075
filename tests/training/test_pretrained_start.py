"""Pretraining and fine-tuning that start from a pretrained Hugging Face LM (a tiny random Llama saved with
save_pretrained, with its own tokenizer): the world model starts as the LM, frozen parts stay bit-identical,
LoRA exports are merged, the AR baseline is the same LM, and `bwarea finetune` trains what `tuning` names.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import bwarea
from bwarea import BWAreaModel, train_tokenizer
from bwarea.pretrained_lm import load_causal_lm
from cli import convert
from tests.training.test_data import textworld_corpus
from tests.training.test_pretrain import config
from training.finetune import FinetuneError, FinetuneModule
from training.pretrain import PretrainError, run
from training.rollout import RolloutConfig
from training.runs import read_training_info

STEPS = 6


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, tw_cache) -> Path:
    return textworld_corpus(tmp_path_factory.getbasetemp(), tw_cache)


def corpus_texts(corpus: Path) -> list[str]:
    """The documents of a corpus written by `bwarea data` (JSONL shards with a "text" field)."""
    return [json.loads(line)["text"] for path in sorted(corpus.rglob("*.jsonl")) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory, corpus) -> Path:
    """A tiny random Llama with a BPE tokenizer trained on the corpus, saved like any Hugging Face model."""
    directory = tmp_path_factory.mktemp("hf-llama")
    tokenizer = train_tokenizer(corpus_texts(corpus), vocab_size=400)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.eos_token_id))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def settings(corpus: Path, root: Path, stage: str, **model_args) -> dict:
    result = config(corpus, root, stage, **model_args)
    init_args = result["model"]["init_args"]
    for unused in ("preset", "architecture", "restart_dead_codes_every"):
        if unused not in model_args:
            init_args.pop(unused, None)
    result["trainer"].update(max_steps=STEPS, val_check_interval=STEPS)
    result["run"]["name"] = {"WorldModelStage": "world", "PolicyStage": "policy", "ARBaseline": "ar"}[stage]
    result["data"].pop("vocab_size")
    return result


def trunk_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.clone() for name, tensor in module.state_dict().items()}


@pytest.fixture(scope="module")
def stage1_actions(corpus, hf_model, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("from-lm")
    run(settings(corpus, root, "WorldModelStage", init_from=str(hf_model), tuning="actions",
                 architecture={"num_actions": 8, "code_dim": 8}, diagnostic_batches=1))
    return root / "runs" / "world" / "export"


def test_stage1_from_a_pretrained_lm_trains_only_the_action_parts(stage1_actions, hf_model):
    lm, tokenizer = load_causal_lm(hf_model)
    model = bwarea.load_pretrained(stage1_actions)
    assert isinstance(model, BWAreaModel) and model.config.num_actions == 8
    # the world model's trunk and head were frozen: bit-identical to the LM
    for name, tensor in lm.trunk.state_dict().items():
        assert torch.equal(model.world.trunk.state_dict()[name], tensor), name
    assert torch.equal(model.world.lm_head.weight, lm.lm_head.weight)
    # the injection left zero and the inverse dynamics moved away from the LM's first layers
    assert float(model.world.inject.norm.weight.abs().sum()) > 0
    assert not torch.equal(model.inverse.trunk.blocks[0].attn.qkv.weight, lm.trunk.blocks[0].attn.qkv.weight)
    # the LM's tokenizer came along, and the run logged the diagnostics
    assert bwarea.load_tokenizer(stage1_actions).get_vocab() == tokenizer.get_vocab()
    info = read_training_info(stage1_actions)
    assert info["tuning"] == "actions" and info["trained_parameters"] < info["parameters"]
    metrics = info["val_metrics"]
    for name in ("val/action_information", "val/next_token_entropy", "val/alive_codes", "val/largest_code_share"):
        assert name in metrics, name
    assert metrics["val/next_token_entropy"] >= metrics["val/next_token_entropy_given_action"] - 1e-4


def test_codebook_starts_from_kmeans_of_inverse_dynamics_features(corpus, hf_model, tmp_path):
    """With no training step (lr 0) the exported codebook is where the run put it before training: with
    codebook_init kmeans it sits on the inverse dynamics' features (small quantisation error, many codes used),
    with keep it is the same seeded random codebook, far from them."""
    exports = {}
    for mode in ("kmeans", "keep"):
        run(settings(corpus, tmp_path / mode, "WorldModelStage", init_from=str(hf_model), tuning="actions",
                     architecture={"num_actions": 8, "code_dim": 8}, diagnostic_batches=0, codebook_init=mode,
                     optimizer={"lr": 0.0, "warmup_steps": 1}))
        exports[mode] = bwarea.load_pretrained(tmp_path / mode / "runs" / "world" / "export")
    clustered, random_codes = exports["kmeans"], exports["keep"]
    assert torch.equal(clustered.inverse.to_code.weight, random_codes.inverse.to_code.weight)  # same seeded start
    assert not torch.allclose(clustered.codebook.codebook, random_codes.codebook.codebook)
    ids = torch.tensor(bwarea.load_tokenizer(hf_model)(corpus_texts(corpus)[0])["input_ids"][:120])[None]
    with torch.no_grad():
        features = clustered.inverse(ids).reshape(-1, 8)

    def quantisation_error(model: BWAreaModel) -> float:
        return float(torch.cdist(features, model.codebook.codebook).min(-1).values.pow(2).mean())

    assert quantisation_error(clustered) < 0.5 * quantisation_error(random_codes)
    assert len(set(clustered.codebook.nearest(features).tolist())) >= 4


def test_stage1_lora_export_is_merged(corpus, hf_model, tmp_path):
    run(settings(corpus, tmp_path, "WorldModelStage", init_from=str(hf_model), tuning="lora",
                 lora={"rank": 2, "alpha": 4.0}, architecture={"num_actions": 8, "code_dim": 8}, diagnostic_batches=0,
                 optimizer={"lr": 1e-2, "warmup_steps": 1}))
    export = tmp_path / "runs" / "world" / "export"
    model = bwarea.load_pretrained(export)  # plain names: nothing of the adapters left
    lm, _ = load_causal_lm(hf_model)
    assert not torch.equal(model.world.trunk.blocks[0].attn.qkv.weight, lm.trunk.blocks[0].attn.qkv.weight)
    assert torch.equal(model.world.trunk.embed.weight, lm.trunk.embed.weight)  # not a LoRA target
    assert read_training_info(export)["tuning"] == "lora"


def test_stage2_head_tuning_keeps_the_policy_trunk(stage1_actions, corpus, tmp_path):
    run(settings(corpus, tmp_path, "PolicyStage", stage1=str(stage1_actions), tuning="head", diagnostic_batches=1,
                 optimizer={"lr": 1e-2, "warmup_steps": 1}))
    start = bwarea.load_pretrained(stage1_actions)
    tuned = bwarea.load_pretrained(tmp_path / "runs" / "policy" / "export")
    assert all(torch.equal(a, b) for a, b in zip(start.policy.trunk.parameters(), tuned.policy.trunk.parameters()))
    assert not torch.equal(start.policy.action_head.weight, tuned.policy.action_head.weight)
    metrics = read_training_info(tmp_path / "runs" / "policy" / "export")["val_metrics"]
    assert {"val/sim_greedy_perplexity", "val/sim_all_policy_greedy_perplexity", "val/action_information"} <= set(metrics)


def test_ar_baseline_is_the_same_lm_fine_tuned(corpus, hf_model, tmp_path):
    run(settings(corpus, tmp_path, "ARBaseline", init_from=str(hf_model), tuning="lora", lora={"rank": 2},
                 optimizer={"lr": 1e-2, "warmup_steps": 1}))
    export = tmp_path / "runs" / "ar" / "export"
    tuned, start = bwarea.load_pretrained(export), load_causal_lm(hf_model)[0]
    assert tuned.config.num_layers == start.config.num_layers
    assert not torch.equal(tuned.trunk.blocks[1].mlp.down.weight, start.trunk.blocks[1].mlp.down.weight)
    assert torch.equal(tuned.trunk.norm.weight, start.trunk.norm.weight)  # norms carry no adapters


def test_a_tuning_the_variant_lacks_is_one_clear_error(corpus, hf_model, tmp_path):
    with pytest.raises(PretrainError, match="tuning 'lora' is not available for a 'bwarea-cola' model.*\\['full'\\]"):
        run(settings(corpus, tmp_path, "WorldModelStage", init_from=str(hf_model), variant="cola", tuning="lora",
                     architecture={"num_actions": 8}))


def test_finetune_head_tuning_trains_only_the_action_head(stage1_actions, corpus, tmp_path, bbh_dir):
    stage2 = tmp_path / "stage2"
    run(settings(corpus, stage2, "PolicyStage", stage1=str(stage1_actions), tuning="head", diagnostic_batches=0))
    export = stage2 / "runs" / "policy" / "export"
    module = FinetuneModule(str(export), env="bbh/boolean_expressions", env_options={"data_dir": str(bbh_dir)},
                            task_pool=4, episodes_per_update=2, updates=1, tuning="head",
                            rollout=RolloutConfig(max_turns=1, max_new_tokens=3, prompt_format="observation"))
    assert module.trainable == list(module.policy_model.policy.action_head.parameters())
    assert all(not p.requires_grad for p in module.policy_model.policy.trunk.parameters())
    with pytest.raises(FinetuneError, match="tuning 'actions' is not available"):
        FinetuneModule(str(export), env="bbh/boolean_expressions", env_options={"data_dir": str(bbh_dir)}, tuning="actions")


def test_cola_runs_through_both_stages_and_fine_tuning(corpus, hf_model, tmp_path, bbh_dir):
    """CoLA from the same LM: stage 1 trains only the action networks (the LM stays bit-identical), stage 2
    the policy, and a ReMax update (and PPO's value model) work on it unchanged."""
    run(settings(corpus, tmp_path, "WorldModelStage", init_from=str(hf_model), variant="cola",
                 architecture={"num_actions": 8, "inverse_layers": 1, "policy_layers": 1}, diagnostic_batches=1))
    world = tmp_path / "runs" / "world" / "export"
    model, (lm, _) = bwarea.load_pretrained(world), load_causal_lm(hf_model)
    assert model.config.model_type == "bwarea-cola"
    assert all(torch.equal(model.lm.state_dict()[name], tensor) for name, tensor in lm.trunk.state_dict().items())
    assert "val/action_information" in read_training_info(world)["val_metrics"]
    run(settings(corpus, tmp_path, "PolicyStage", stage1=str(world), diagnostic_batches=0))
    export = tmp_path / "runs" / "policy" / "export"
    options = dict(env="bbh/boolean_expressions", env_options={"data_dir": str(bbh_dir)}, task_pool=4, episodes_per_update=2,
                   updates=1, rollout=RolloutConfig(max_turns=1, max_new_tokens=3, prompt_format="observation"))
    remax = FinetuneModule(str(export), **options)
    assert {id(p) for p in remax.trainable} == {id(p) for p in remax.policy_model.policy.parameters()}
    episodes = remax.play([0, 1], greedy=False, sampling_seeds=[0, 1])
    assert all(not e.dropped and e.turns for e in episodes)
    ppo = FinetuneModule(str(export), objective="ppo", **options)
    assert ppo.value_model.trunk.config.num_layers == lm.config.num_layers


def test_a_converted_model_is_a_starting_point_and_its_random_codebook_gets_clustered(corpus, hf_model, tmp_path):
    """`bwarea convert hf` without --corpus leaves the codebook random; stage 1 from that directory clusters it
    (and keeps the converted shapes), while a converted directory cannot be reshaped by architecture options."""
    converted = tmp_path / "converted"
    assert convert.main(["hf", "--model", str(hf_model), "--out", str(converted), "--num_actions", "8", "--code_dim", "8"]) == 0
    assert read_training_info(converted)["codebook_init"] == "random"
    run(settings(corpus, tmp_path, "WorldModelStage", init_from=str(converted), tuning="actions", diagnostic_batches=0,
                 optimizer={"lr": 0.0, "warmup_steps": 1}))
    start, tuned = bwarea.load_pretrained(converted), bwarea.load_pretrained(tmp_path / "runs" / "world" / "export")
    assert tuned.config.num_actions == 8
    assert not torch.equal(start.codebook.codebook, tuned.codebook.codebook)  # k-means moved it; lr 0 moved nothing else
    assert torch.equal(start.inverse.to_code.weight, tuned.inverse.to_code.weight)
    with pytest.raises(PretrainError, match="already converted model"):
        run(settings(corpus, tmp_path / "again", "WorldModelStage", init_from=str(converted), architecture={"num_actions": 4}))
