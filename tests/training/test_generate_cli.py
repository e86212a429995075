import json

import pytest
import torch

from bwarea import ARConfig, ARLanguageModel, BWAreaConfig, BWAreaModel, train_tokenizer
from training import cli

TEXT = ["You are in a kitchen. There is a fridge here.\n> open fridge\nThe fridge is open.\n"] * 30


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    tokenizer = train_tokenizer(TEXT, vocab_size=300)
    config = BWAreaConfig(vocab_size=len(tokenizer), hidden_size=32, num_heads=2, num_kv_heads=1, intermediate_size=64,
                          world_layers=2, inverse_layers=1, policy_layers=1, num_actions=8, code_dim=4,
                          eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    BWAreaModel(config).save_pretrained(root / "bwarea", tokenizer=tokenizer)
    ARLanguageModel(ARConfig.matching(config)).save_pretrained(root / "ar", tokenizer=tokenizer)
    return root


def test_generate_json_reports_actions_per_token(saved_models, capsys):
    assert cli.main(["generate", "--model", str(saved_models / "bwarea"), "--prompt", '["You are", "> open"]',
                     "--max_new_tokens", "6", "--json", "true", "--stop", "[]"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["prompt"] for r in records] == ["You are", "> open"]
    for record in records:
        assert 1 <= len(record["tokens"]) == len(record["actions"]) == len(record["log_probs"]) <= 6
        assert all(0 <= a < 8 for a in record["actions"]) and all(lp <= 0 for lp in record["log_probs"])


def test_generate_sweep_forces_each_action(saved_models, capsys):
    assert cli.main(["generate", "--model", str(saved_models / "bwarea"), "--prompt", "You", "--sweep_actions", "4",
                     "--max_new_tokens", "3", "--json", "true"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [set(r["actions"]) for r in records] == [{0}, {1}, {2}, {3}]


def test_generate_refuses_actions_for_the_ar_model(saved_models, capsys):
    assert cli.main(["generate", "--model", str(saved_models / "ar"), "--prompt", "You", "--actions", "[3]"]) == 2
    assert "need a BWArea model" in capsys.readouterr().err


def test_cli_lists_commands_and_rejects_unknown_ones(capsys):
    assert cli.main([]) == 0
    assert "generate" in capsys.readouterr().out
    assert cli.main(["fly"]) == 2
    assert "unknown command 'fly'" in capsys.readouterr().err
