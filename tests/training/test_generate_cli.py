import json
import re

import pytest
import torch
from transformers import LlamaConfig

import bwarea
from bwarea import ARConfig, ARLanguageModel, BWAreaConfig, BWAreaModel, CoLAModel, train_tokenizer
from cli import convert
from cli import main as cli
from tests.bwarea.test_pretrained_lm import save_hf_model

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
    lm = ARLanguageModel(ARConfig(vocab_size=len(tokenizer), hidden_size=32, num_heads=4, num_kv_heads=2,
                                  intermediate_size=64, num_layers=2, max_position_embeddings=128,
                                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    CoLAModel.from_lm(lm, num_actions=8).save_pretrained(root / "cola", tokenizer=tokenizer)
    return root


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A tiny random Llama (saved as transformers does) and `bwarea convert hf` of it to BWArea and CoLA."""
    root = tmp_path_factory.mktemp("converted")
    llama = save_hf_model(root / "llama", LlamaConfig(
        vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, initializer_range=0.1), train_tokenizer(TEXT, vocab_size=300))
    for variant in ("bwarea", "cola"):
        assert convert.main(["hf", "--model", str(root / "llama"), "--out", str(root / variant), "--variant", variant,
                             "--num_actions", "8"]) == 0
    return root, llama


def run_json(capsys, model_dir, *argv: str) -> list[dict]:
    assert cli.main(["generate", "--model", str(model_dir), "--json", "true", *argv]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_generate_json_reports_actions_per_token(saved_models, capsys):
    assert cli.main(["generate", "--model", str(saved_models / "bwarea"), "--prompt", '["You are", "> open"]',
                     "--max_new_tokens", "6", "--json", "true", "--stop", "[]"]) == 0
    output = capsys.readouterr()
    records = [json.loads(line) for line in output.out.splitlines()]
    assert f"bwarea generate: {saved_models / 'bwarea'} on cpu (float32); torch threads: " in output.err
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
    assert "need a latent-action model" in capsys.readouterr().err
    assert cli.main(["generate", "--model", str(saved_models / "ar"), "--prompt", "You", "--prompt_actions", "policy"]) == 2
    assert "need a latent-action model" in capsys.readouterr().err


def test_generate_sweeps_a_cola_model(saved_models, capsys):
    assert cli.main(["generate", "--model", str(saved_models / "cola"), "--prompt", "You", "--sweep_actions", "3",
                     "--max_new_tokens", "4"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\u2502")[0] for line in lines] == ["[action 0] You", "[action 1] You", "[action 2] You"]
    records = run_json(capsys, saved_models / "cola", "--prompt", "You", "--sweep_actions", "3", "--max_new_tokens", "4")
    assert [set(r["actions"]) for r in records] == [{0}, {1}, {2}]
    # an untrained CoLA world model is its LM whatever the action: every row says the same
    assert len({tuple(r["tokens"]) for r in records}) == 1 and len(records[0]["tokens"]) == 4


def test_generate_shows_the_policy_actions_of_a_cola_model(saved_models, capsys):
    [record] = run_json(capsys, saved_models / "cola", "--prompt", "You are", "--temperature", "0",
                        "--max_new_tokens", "5", "--stop", "[]")
    model = bwarea.load_pretrained(saved_models / "cola")
    prompt = bwarea.load_tokenizer(saved_models / "cola")("You are")["input_ids"]
    sequence = torch.tensor([prompt + record["tokens"]])
    with torch.no_grad():
        policy = model.policy_logits(sequence)[0, len(prompt) - 1:-1].log_softmax(-1)
    assert record["actions"] == policy.argmax(-1).tolist()  # greedy: the policy's first choice at every step
    assert record["log_probs"] == pytest.approx(policy.max(-1).values.tolist(), abs=1e-5)
    assert cli.main(["generate", "--model", str(saved_models / "cola"), "--prompt", "You", "--max_new_tokens", "3"]) == 0
    shown = capsys.readouterr().out.splitlines()
    assert len(shown) == 2 and len(re.findall(r"['\"]:[0-7]\b", shown[1])) == 3  # the text, then each token:action


@pytest.mark.parametrize("mode", ["inverse", "policy"])
def test_prompt_actions_reach_the_decoder(saved_models, capsys, monkeypatch, mode):
    seen = []
    decoder = BWAreaModel.decoder

    def recording_decoder(self, *args, prompt_actions="inverse"):
        seen.append(prompt_actions)
        return decoder(self, *args, prompt_actions=prompt_actions)
    monkeypatch.setattr(BWAreaModel, "decoder", recording_decoder)
    flags = [] if mode == "inverse" else ["--prompt_actions", mode]   # inverse is the default
    [record] = run_json(capsys, saved_models / "bwarea", "--prompt", "You are in", "--max_new_tokens", "4", *flags)
    assert seen == [mode] and 1 <= len(record["actions"]) <= 4


def test_generate_rejects_bad_action_options(saved_models, capsys):
    model = str(saved_models / "cola")
    assert cli.main(["generate", "--model", model, "--prompt", "You", "--sweep_actions", "9"]) == 2
    assert "exceeds the model's 8 latent actions" in capsys.readouterr().err
    assert cli.main(["generate", "--model", model, "--prompt", "You", "--actions", "[8]"]) == 2
    assert "actions must lie in [0, 8)" in capsys.readouterr().err
    assert cli.main(["generate", "--model", model, "--prompt_actions", "sideways"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("bwarea generate: ") and "prompt_actions" in error and error.count("\n") == 1
    assert cli.main(["generate", "--model", str(saved_models / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("variant", ["bwarea", "cola"])
def test_converted_models_generate_the_lm_text(converted, capsys, variant):
    """A fresh conversion's world model is the LM, so any forced action gives the LM's greedy text."""
    root, llama = converted
    prompt = "You are in a kitchen"
    ids = bwarea.load_tokenizer(root / variant)(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        for _ in range(5):
            ids = torch.cat([ids, llama(ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    lm_text = ids[0, -5:].tolist()

    [forced] = run_json(capsys, root / variant, "--prompt", prompt, "--actions", "[6]", "--max_new_tokens", "5",
                        "--stop", "[]")
    assert forced["actions"] == [6] * 5 and forced["tokens"] == lm_text
    swept = run_json(capsys, root / variant, "--prompt", prompt, "--sweep_actions", "3", "--max_new_tokens", "5",
                     "--stop", "[]")
    assert [set(r["actions"]) for r in swept] == [{0}, {1}, {2}]
    assert all(r["tokens"] == lm_text for r in swept)
    sampled = run_json(capsys, root / variant, "--prompt", f'["{prompt}", "> open"]', "--max_new_tokens", "5",
                       "--stop", "[]")
    for record in sampled:
        assert 1 <= len(record["tokens"]) == len(record["actions"]) <= 5 and all(0 <= a < 8 for a in record["actions"])


def test_cli_lists_commands_and_rejects_unknown_ones(capsys):
    assert cli.main([]) == 0
    assert "generate" in capsys.readouterr().out
    assert cli.main(["fly"]) == 2
    assert "unknown command 'fly'" in capsys.readouterr().err


def test_the_command_line_offers_the_prompt_action_modes_generation_knows():
    from typing import get_args

    from bwarea.generation import PromptActions
    from cli.generate import PromptActions as offered

    assert get_args(offered) == get_args(PromptActions)


def test_every_generate_error_is_one_line_without_a_traceback(saved_models, tmp_path, capsys):
    def refused(*argv: str) -> str:
        assert cli.main(["generate", *argv]) == 2
        captured = capsys.readouterr()
        assert captured.err.startswith("bwarea generate: ") and captured.err.count("\n") == 1, captured.err
        assert "Traceback" not in captured.err and captured.out == ""
        return captured.err

    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "config.json").write_text("{not json")
    assert "config.json is not valid JSON" in refused("--model", str(corrupt))
    assert "does not exist" in refused("--model", str(tmp_path / "missing"))
    model = str(saved_models / "bwarea")
    assert "exceeds the model's 8 latent actions" in refused("--model", model, "--sweep_actions", "100")
    assert "actions must lie in [0, 8)" in refused("--model", model, "--actions", "70")   # a list option, one value
    assert "exceeds max_position_embeddings" in refused("--model", model, "--prompt", "go west. " * 600)
    assert "did you mean --max_new_tokens" in refused("--model", model, "--max_new_token", "3")
