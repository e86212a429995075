import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer

from bwarea import (ARConfig, ARLanguageModel, BWAreaConfig, BWAreaModel, CheckpointError, load_pretrained,
                    load_tokenizer, train_tokenizer)

TEXT = [
    "You are in a kitchen. There is a fridge here. > open fridge",
    "The fridge is open. Inside you see an apple and a carrot. > take apple",
    "You take the apple. Your score has just gone up by one point. > eat apple",
] * 40


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TEXT, vocab_size=300)


def small_config(tokenizer, **overrides):
    fields = dict(vocab_size=len(tokenizer), hidden_size=32, num_heads=2, num_kv_heads=1, intermediate_size=64,
                  world_layers=2, inverse_layers=1, policy_layers=1, num_actions=8, code_dim=4,
                  pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    return BWAreaConfig(**{**fields, **overrides})


def test_tokenizer_round_trips_and_loads_with_auto_tokenizer(tokenizer, tmp_path):
    assert 258 < len(tokenizer) <= 300
    text = "You take the carrot. > eat carrot\n"
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert len(ids) < len(text.encode())  # merges were learned
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(str(tmp_path), local_files_only=True)
    assert loaded(text)["input_ids"] == ids
    assert loaded.eos_token == "<|endoftext|>" and loaded.pad_token == "<|pad|>"
    batch = load_tokenizer(tmp_path)(["a", "open the fridge"], padding=True, return_tensors="pt")
    assert batch["attention_mask"][0, 0] == 0  # left padding for generation
    with pytest.raises(FileNotFoundError, match="tokenizer directory"):
        load_tokenizer(tmp_path / "missing")


def test_tokenizer_rejects_empty_text():
    with pytest.raises(ValueError, match="too small"):
        train_tokenizer([""], vocab_size=300)


@pytest.mark.parametrize("tied", [False, True])
def test_save_load_round_trip_gives_identical_logits(tokenizer, tmp_path, tied):
    torch.manual_seed(0)
    model = BWAreaModel(small_config(tokenizer, tie_word_embeddings=tied)).eval()
    model.save_pretrained(tmp_path, tokenizer=tokenizer)
    assert {p.name for p in tmp_path.iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left behind
    loaded = load_pretrained(tmp_path).eval()
    assert isinstance(loaded, BWAreaModel)
    ids = torch.tensor([tokenizer("open fridge > take apple")["input_ids"]])
    assert torch.equal(model.stage1(ids, return_logits=True).logits, loaded.stage1(ids, return_logits=True).logits)
    assert torch.equal(model.policy_logits(ids), loaded.policy_logits(ids))
    if tied:
        assert loaded.world.lm_head.weight.data_ptr() == loaded.world.trunk.embed.weight.data_ptr()
    assert load_tokenizer(tmp_path)("apple")["input_ids"] == tokenizer("apple")["input_ids"]

    baseline = ARLanguageModel(ARConfig.matching(model.config)).eval()
    baseline.save_pretrained(tmp_path / "ar")
    assert torch.equal(load_pretrained(tmp_path / "ar")(ids), baseline(ids))


@pytest.fixture
def saved(tokenizer, tmp_path):
    BWAreaModel(small_config(tokenizer)).save_pretrained(tmp_path)
    return tmp_path


def test_missing_directory_and_files(saved, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        BWAreaModel.from_pretrained(tmp_path / "nowhere")
    (saved / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors is missing"):
        BWAreaModel.from_pretrained(saved)
    (saved / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json is missing"):
        BWAreaModel.from_pretrained(saved)


def test_corrupted_files_name_the_file(saved):
    (saved / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json is not valid JSON"):
        load_pretrained(saved)


def test_corrupted_weights_name_the_file(saved):
    data = (saved / "model.safetensors").read_bytes()
    (saved / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors is corrupted"):
        BWAreaModel.from_pretrained(saved)


def test_config_weights_mismatch_names_the_field(saved):
    config = json.loads((saved / "config.json").read_text())
    (saved / "config.json").write_text(json.dumps({**config, "vocab_size": config["vocab_size"] + 5}))
    with pytest.raises(CheckpointError, match="vocab_size"):
        BWAreaModel.from_pretrained(saved)
    (saved / "config.json").write_text(json.dumps({**config, "world_layers": 3}))
    with pytest.raises(CheckpointError, match="world_layers"):
        BWAreaModel.from_pretrained(saved)
    (saved / "config.json").write_text(json.dumps({**config, "num_actions": 16}))
    with pytest.raises(CheckpointError, match="num_actions"):
        BWAreaModel.from_pretrained(saved)
    (saved / "config.json").write_text(json.dumps({**config, "hiden_size": 3}))
    with pytest.raises(CheckpointError, match="unknown field 'hiden_size'"):
        BWAreaModel.from_pretrained(saved)


def test_missing_tensor_and_wrong_model_type(saved):
    state = load_file(str(saved / "model.safetensors"))
    del state["policy.action_head.weight"]
    save_file(state, str(saved / "model.safetensors"))
    with pytest.raises(CheckpointError, match="lacks tensor 'policy.action_head.weight'"):
        BWAreaModel.from_pretrained(saved)
    with pytest.raises(CheckpointError, match="model_type"):
        ARLanguageModel.from_pretrained(saved)


def test_too_little_text_for_a_tokenizer_is_a_user_error():
    from common.errors import UserError

    with pytest.raises(UserError, match="too small to learn any merges; give the tokenizer more text"):
        train_tokenizer(["ab"], vocab_size=300)
