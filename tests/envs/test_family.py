"""A fourth environment family, declared in this file alone and registered at run time, works everywhere the three
built-in ones do: names and `make`, evaluation (metrics, aggregate, report table, plots), terminal play with its
own status line, and fine-tuning's training environments. No file outside this test changes to support it."""

from __future__ import annotations

import io
import json
import random
from types import SimpleNamespace

import pytest

import envs
from common.stats import Estimate, estimate, macro_average
from envs.base import TextEnv
from envs.family import Aggregate, Column, EnvFamily
from evaluation.play import PlayConfig, Session
from evaluation.run import evaluate
from training.finetune import FinetuneModule

SIZES = {"small": 3, "large": 5}


class GuessEnv(TextEnv):
    """Guess the hidden number (1..n, fixed by the episode seed) in one try."""

    def __init__(self, size: str, split: str = "test", max_steps: int = 1) -> None:
        super().__init__()
        self.size, self.split, self.max_steps = SIZES[size], split, max_steps
        self._info: dict = {}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.target = random.Random(f"{self.split}:{seed}").randint(1, self.size)
        choices = [str(k) for k in range(1, self.size + 1)]
        self._info = {"task": f"guess a number from 1 to {self.size}", "score": 0, "max_score": 1, "won": False,
                      "lost": False, "invalid_action": False, "admissible_actions": choices, "steps": 0,
                      "max_steps": self.max_steps, "target": self.target}
        return f"I think of a number from 1 to {self.size}.", dict(self._info)

    def step(self, action):
        won = str(action).strip() == str(self.target)
        self._info.update(score=int(won), won=won, lost=not won, steps=1, guess=str(action))
        return ("Right!" if won else "Wrong."), float(won), True, False, dict(self._info)


def guess_accuracy(episodes):
    return {"guess_accuracy": estimate([100.0 * e["won"] for e in episodes], "%"),
            "episode_steps": estimate([e["steps"] for e in episodes], "steps")}


def macro(by_env) -> Estimate:
    return macro_average([guess_accuracy(records)["guess_accuracy"] for records in by_env.values()], "%")


GUESS = EnvFamily(
    name="guess",
    title="Number guessing",
    make=lambda size, **options: GuessEnv(size, **options),
    variants=lambda: list(SIZES),
    variant_kind="size",
    options=lambda settings: {"split": settings.get("split", "test")},
    resolved_options=lambda env: {"max_steps": env.max_steps},
    recorded_info=("target", "guess"),
    metrics=guess_accuracy,
    columns=(Column("guess_accuracy"), Column("episode_steps", 1, "steps")),
    row_label="size",
    note=lambda options: f"One guess per episode ({options['split']} split).",
    aggregate=Aggregate("guess_macro_accuracy", "guess_accuracy", macro),
    status=lambda action, reward, info: f"You guessed {action}; the number was {info['target']}.",
    answers_questions=True,
)


@pytest.fixture
def guess_family(monkeypatch):
    monkeypatch.setattr(envs.registry, "_loaded", dict(envs.registry._loaded))   # registered for this test only
    envs.register_family(GUESS)
    return GUESS


def test_a_registered_family_is_named_made_and_refused_like_the_others(guess_family):
    assert {"guess/small", "guess/large"} <= set(envs.names()) and "guess/<size>" in envs.patterns()
    env = envs.make("guess/large", split="train")
    assert isinstance(env, GuessEnv) and env.size == 5 and env.split == "train"
    with pytest.raises(ValueError, match="unknown environment 'guess/huge'.*<size> of guess: small, large"):
        envs.make("guess/huge")
    with pytest.raises(ValueError, match="one word"):
        envs.register_family(EnvFamily(name="a/b", title="x", make=GuessEnv, metrics=guess_accuracy, columns=()))


def test_evaluation_reports_and_plots_the_new_family_by_its_own_declaration(guess_family, tmp_path):
    summary = evaluate("random", ["guess/*"], episodes=6, seeds=[0, 1], out_dir=tmp_path / "eval", progress=False)
    records = [json.loads(line) for line in (tmp_path / "eval" / "episodes.jsonl").read_text().splitlines()]
    assert len(records) == 24 and all(r["family"] == "guess" and "target" in r and "guess" in r for r in records)
    for name in ("guess/small", "guess/large"):
        won = [r["won"] for r in records if r["env"] == name]
        metric = summary["environments"][name]["metrics"]["guess_accuracy"]
        assert metric["n"] == 12 and metric["mean"] == pytest.approx(100.0 * sum(won) / 12)
    aggregate = summary["aggregates"]["guess_macro_accuracy"]
    means = [summary["environments"][name]["metrics"]["guess_accuracy"]["mean"] for name in ("guess/small", "guess/large")]
    assert aggregate["mean"] == pytest.approx(sum(means) / 2) and aggregate["sizes"] == 2
    assert summary["settings"]["environments"]["guess/small"]["options"] == {"split": "test", "max_steps": 1}

    report = (tmp_path / "eval" / "report.md").read_text()
    assert "## Number guessing" in report and "| size | n | guess_accuracy (%) | steps |" in report
    assert "| small | 12 |" in report and "| **guess_macro_accuracy** (2 sizes) | 24 |" in report
    assert "One guess per episode (test split)." in report
    assert (tmp_path / "eval" / "plots" / "guess_sizes.png").is_file()


def test_play_shows_the_family_status_line_and_saves_the_episode(guess_family, tmp_path):
    output = io.StringIO()
    session = Session(PlayConfig(env="guess/small", seed=4, out=str(tmp_path / "play")), io.StringIO("2\n"), output)
    assert session.run() == 0
    text = output.getvalue()
    target = GuessEnv("small").reset(seed=4)[1]["target"]
    assert f"You guessed 2; the number was {target}." in text
    assert "Objective:" not in text   # a question-answering family: the question is the observation
    episode = json.loads((tmp_path / "play" / "episode.json").read_text())
    assert episode["env"] == "guess/small" and episode["won"] == (target == 2) and episode["trajectory"][0]["action"] == "2"


def test_fine_tuning_draws_its_tasks_from_the_family_training_split(guess_family):
    env = FinetuneModule.make_env(SimpleNamespace(env_options={}), "guess/small")
    assert isinstance(env, GuessEnv) and env.split == "train"
