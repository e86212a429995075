"""Bradley-Terry reward models: learn a scalar r(x, y) from preference pairs, then use it as the reward
of any fine-tuning objective.

Pairs come from a JSONL file (`{"prompt": ..., "chosen": ..., "rejected": ...}` per line) or are built
from rollouts ranked by their ground-truth reward (`pairs_from_ranked`). Under Bradley-Terry,
P(chosen > rejected) = sigmoid(r(x, chosen) - r(x, rejected)); training minimises
    -log sigmoid(r(x, y_w) - r(x, y_l)).
"""

from __future__ import annotations

import itertools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from bwarea import ScalarModel, ScalarModelConfig


@dataclass(frozen=True)
class PreferencePair:
    prompt: str
    chosen: str
    rejected: str


def bradley_terry_loss(chosen_scores: torch.Tensor, rejected_scores: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """-mean log sigmoid(r_w - r_l), with the pairwise ranking accuracy and mean margin."""
    margin = chosen_scores - rejected_scores
    loss = -F.logsigmoid(margin).mean()
    return loss, {"accuracy": float((margin > 0).float().mean()), "margin": float(margin.detach().mean())}


def read_preference_pairs(path: str | os.PathLike) -> list[PreferencePair]:
    """Read JSONL preference pairs; every line needs string fields prompt, chosen and rejected."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"preference file {path} does not exist; expected JSONL lines like "
                                '{"prompt": "...", "chosen": "...", "rejected": "..."}.')
    pairs = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            pairs.append(PreferencePair(*(_string_field(record, name) for name in ("prompt", "chosen", "rejected"))))
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ValueError(f"{path}:{number}: not a preference pair ({error}); each line must be a JSON object "
                             "with string fields prompt, chosen and rejected.") from None
    if not pairs:
        raise ValueError(f"{path} holds no preference pairs.")
    return pairs


def _string_field(record: dict, name: str) -> str:
    value = record[name]
    if not isinstance(value, str):
        raise TypeError(f"field {name!r} must be a string")
    return value


def pairs_from_ranked(samples: Iterable[tuple[str, str, float]]) -> list[PreferencePair]:
    """All pairs (higher, lower) among responses to the same prompt whose ground-truth rewards differ."""
    by_prompt: dict[str, list[tuple[str, float]]] = {}
    for prompt, response, reward in samples:
        by_prompt.setdefault(prompt, []).append((response, reward))
    pairs = []
    for prompt, responses in by_prompt.items():
        for (first, first_reward), (second, second_reward) in itertools.combinations(responses, 2):
            if first_reward != second_reward:
                chosen, rejected = (first, second) if first_reward > second_reward else (second, first)
                pairs.append(PreferencePair(prompt, chosen, rejected))
    return pairs


class RewardScorer:
    """Scores (prompt, response) texts with a reward model, batched and without gradients."""

    def __init__(self, model: ScalarModel, tokenizer, max_length: int | None = None, batch_size: int = 32):
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length or model.config.max_position_embeddings
        self.batch_size = batch_size

    def encode(self, prompts: Sequence[str], responses: Sequence[str]) -> dict[str, torch.Tensor]:
        # left truncation keeps the response end, where the score is read
        self.tokenizer.truncation_side = "left"
        return self.tokenizer([p + r for p, r in zip(prompts, responses)], return_tensors="pt", padding=True,
                              truncation=True, max_length=self.max_length)

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        scores = []
        for start in range(0, len(prompts), self.batch_size):
            batch = self.encode(prompts[start:start + self.batch_size], responses[start:start + self.batch_size])
            scores.append(self.model.score(batch["input_ids"], batch["attention_mask"]))
        return torch.cat(scores) if scores else torch.zeros(0)


class PairCollator:
    """Tokenises a list of pairs into one left-padded batch: all chosen texts first, then all rejected."""

    def __init__(self, scorer: RewardScorer):
        self.scorer = scorer

    def __call__(self, pairs: list[PreferencePair]) -> dict[str, torch.Tensor]:
        prompts = [p.prompt for p in pairs]
        return dict(self.scorer.encode(prompts + prompts, [p.chosen for p in pairs] + [p.rejected for p in pairs]))


class RewardModelModule(L.LightningModule):
    """Trains a ScalarModel on preference pairs (batches from `PairCollator`) with the Bradley-Terry loss."""

    def __init__(self, model: ScalarModel, learning_rate: float = 1e-3, weight_decay: float = 0.0):
        super().__init__()
        self.model = model
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay

    def _loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        scores = self.model.score(batch["input_ids"], batch["attention_mask"])
        half = scores.shape[0] // 2
        return bradley_terry_loss(scores[:half], scores[half:])

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, metrics = self._loss(batch)
        pairs = batch["input_ids"].shape[0] // 2
        self.log("reward_model/loss", loss, prog_bar=True, batch_size=pairs)
        self.log("reward_model/accuracy", metrics["accuracy"], prog_bar=True, batch_size=pairs)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        loss, metrics = self._loss(batch)
        pairs = batch["input_ids"].shape[0] // 2
        self.log("reward_model/val_loss", loss, batch_size=pairs)
        self.log("reward_model/val_accuracy", metrics["accuracy"], batch_size=pairs)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.model.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay)


def train_reward_model(pairs: Sequence[PreferencePair], tokenizer, config: ScalarModelConfig, *,
                       validation_pairs: Sequence[PreferencePair] = (), max_epochs: int = 3, batch_size: int = 16,
                       learning_rate: float = 1e-3, max_length: int | None = None, seed: int = 0,
                       trainer_options: dict | None = None) -> ScalarModel:
    """Fit a fresh reward model of `config` on `pairs`; returns it in eval mode."""
    if not pairs:
        raise ValueError("train_reward_model needs at least one preference pair.")
    L.seed_everything(seed, verbose=False)
    model = ScalarModel(config)
    collate = PairCollator(RewardScorer(model, tokenizer, max_length))
    train = DataLoader(list(pairs), batch_size=batch_size, shuffle=True, collate_fn=collate,
                       generator=torch.Generator().manual_seed(seed))
    validation = DataLoader(list(validation_pairs), batch_size=batch_size, collate_fn=collate) if validation_pairs else None
    options = dict(max_epochs=max_epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                   enable_model_summary=False)
    trainer = L.Trainer(**{**options, **(trainer_options or {})})
    trainer.fit(RewardModelModule(model, learning_rate), train, validation)
    return model.eval()
