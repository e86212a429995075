import json
import random

import pytest

from bwarea import ScalarModelConfig, train_tokenizer
from training.reward_model import (PreferencePair, RewardScorer, bradley_terry_loss, pairs_from_ranked,
                                   read_preference_pairs, train_reward_model)

VERBS = ["take", "drop", "open", "eat", "examine", "look at"]
OBJECTS = ["apple", "stone", "door", "carrot", "key", "lamp", "book"]
PROMPTS = [f"Objective: find something to eat in room {i}.\n> " for i in range(6)]


def ground_truth(response: str) -> float:
    """Edible things are good, eating them is best."""
    return ("apple" in response or "carrot" in response) + ("eat" in response)


def ranked_samples(seed: int):
    rng = random.Random(seed)
    for prompt in PROMPTS:
        for _ in range(6):
            response = f"{rng.choice(VERBS)} {rng.choice(OBJECTS)}"
            yield prompt, response, ground_truth(response)


def test_pairs_from_ranked_orders_by_reward_and_skips_ties():
    pairs = pairs_from_ranked([("p", "eat apple", 2.0), ("p", "take stone", 0.0), ("p", "drop lamp", 0.0), ("q", "x", 1.0)])
    assert set(pairs) == {PreferencePair("p", "eat apple", "take stone"), PreferencePair("p", "eat apple", "drop lamp")}


def test_bradley_terry_loss_value():
    import torch
    loss, metrics = bradley_terry_loss(torch.tensor([2.0, 0.0]), torch.tensor([0.0, 0.0]))
    expected = -(torch.nn.functional.logsigmoid(torch.tensor(2.0)) + torch.nn.functional.logsigmoid(torch.tensor(0.0))) / 2
    assert torch.isclose(loss, expected) and metrics["accuracy"] == 0.5


def test_reward_model_learns_held_out_preferences():
    train_pairs = pairs_from_ranked(ranked_samples(0))
    held_out = pairs_from_ranked(ranked_samples(1))
    corpus = [p + r for p, r, _ in ranked_samples(0)] * 4
    tokenizer = train_tokenizer(corpus, vocab_size=320)
    config = ScalarModelConfig(vocab_size=len(tokenizer), hidden_size=32, num_heads=2, num_kv_heads=1,
                               intermediate_size=64, num_layers=1, max_position_embeddings=64,
                               pad_token_id=tokenizer.pad_token_id)
    model = train_reward_model(train_pairs, tokenizer, config, max_epochs=6, batch_size=16, learning_rate=3e-3,
                               trainer_options={"enable_progress_bar": False})
    scorer = RewardScorer(model, tokenizer)
    chosen = scorer([p.prompt for p in held_out], [p.chosen for p in held_out])
    rejected = scorer([p.prompt for p in held_out], [p.rejected for p in held_out])
    assert float((chosen > rejected).float().mean()) > 0.9


def test_preference_file_errors(tmp_path):
    good = tmp_path / "pairs.jsonl"
    good.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n\n")
    assert read_preference_pairs(good) == [PreferencePair("p", "a", "b")]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "chosen": "a"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: not a preference pair"):
        read_preference_pairs(bad)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_preference_pairs(tmp_path / "missing.jsonl")
