"""BIG-Bench Hard: 27 reasoning tasks as one-step environments, with answer extraction and normalisation.

Data: a local directory in the original release layout, `tasks/<task>.json` (`{"examples": [{"input",
"target"}]}`) and `cot-prompts/<task>.txt` (the 3-shot chain-of-thought prompt). Its location is the
`data_dir` argument, else the environment variable BWAREA_BBH_DIR; there is no default.

    env = envs.make("bbh/boolean_expressions", data_dir="/path/to/bbh", split="test", shots=3)
    prompt, info = env.reset(seed=0)                  # item 0 of the test split
    _, reward, terminated, _, info = env.step("... So the answer is True.")
    info["target"]                                    # only after the step

Prompts. Zero-shot (default): the task description, a blank line, "Q: <input>" and "A:". Three-shot
chain of thought (`shots=3`): the description, the task's three worked examples, "Q: <input>" and
"A: Let's think step by step." Answers are read from the last "answer is ..." in the reply (else the
last thing of the right type), normalised by answer type, and compared by exact match.

Split. `split(task, "train"|"test", seed=0)` is a fixed function of (task, seed): a seeded permutation
of the task's items, the first half (rounded down) train, the rest test. Fine-tune on train, report
on test; `split="all"` gives every item in file order.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import InvalidInput, UserError
from common.stats import Estimate, estimate, macro_average
from envs.base import TextEnv, text_space
from envs.family import Aggregate, Column, EnvFamily

DATA_ENV_VAR = "BWAREA_BBH_DIR"

# Task -> answer type. Types: choice "(A)".., true_false, yes_no, valid_invalid, number, words, brackets.
ANSWER_TYPES: dict[str, str] = {
    "boolean_expressions": "true_false",
    "causal_judgement": "yes_no",
    "date_understanding": "choice",
    "disambiguation_qa": "choice",
    "dyck_languages": "brackets",
    "formal_fallacies": "valid_invalid",
    "geometric_shapes": "choice",
    "hyperbaton": "choice",
    "logical_deduction_five_objects": "choice",
    "logical_deduction_seven_objects": "choice",
    "logical_deduction_three_objects": "choice",
    "movie_recommendation": "choice",
    "multistep_arithmetic_two": "number",
    "navigate": "yes_no",
    "object_counting": "number",
    "penguins_in_a_table": "choice",
    "reasoning_about_colored_objects": "choice",
    "ruin_names": "choice",
    "salient_translation_error_detection": "choice",
    "snarks": "choice",
    "sports_understanding": "yes_no",
    "temporal_sequences": "choice",
    "tracking_shuffled_objects_five_objects": "choice",
    "tracking_shuffled_objects_seven_objects": "choice",
    "tracking_shuffled_objects_three_objects": "choice",
    "web_of_lies": "yes_no",
    "word_sorting": "words",
}
TASKS: tuple[str, ...] = tuple(ANSWER_TYPES)
SPLITS = ("train", "test", "all")
TRAIN_FRACTION = 0.5

LAYOUT_HELP = (
    "expected the BIG-Bench Hard release layout: <dir>/tasks/<task>.json (a JSON object with "
    '"examples": [{"input": ..., "target": ...}]) and <dir>/cot-prompts/<task>.txt for the 27 tasks; '
    f"pass data_dir=<dir> or set {DATA_ENV_VAR}=<dir>"
)


class BBHDataError(UserError, FileNotFoundError):
    """The BIG-Bench Hard directory is missing or not in the expected layout."""


@dataclass(frozen=True)
class Item:
    index: int      # position in tasks/<task>.json
    input: str
    target: str


def _check_task(task: str) -> str:
    if task not in ANSWER_TYPES:
        raise InvalidInput(f"unknown BIG-Bench Hard task {task!r}; choose one of: {', '.join(TASKS)}.")
    return task


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The BBH directory from the argument or $BWAREA_BBH_DIR, checked for the expected layout."""
    given = data_dir if data_dir is not None else os.environ.get(DATA_ENV_VAR)
    if not given:
        raise BBHDataError(f"no BIG-Bench Hard directory given; {LAYOUT_HELP}.")
    path = Path(given).expanduser().resolve()
    if not (path / "tasks").is_dir() or not (path / "cot-prompts").is_dir():
        raise BBHDataError(f"BIG-Bench Hard data not found in {path}; {LAYOUT_HELP}.")
    return path


def _task_file(root: Path, folder: str, task: str, suffix: str) -> Path:
    path = root / folder / f"{task}{suffix}"
    if not path.is_file():
        raise BBHDataError(f"missing {path}; {LAYOUT_HELP}.")
    return path


@functools.lru_cache(maxsize=None)
def _load_items(root: Path, task: str) -> tuple[Item, ...]:
    data = json.loads(_task_file(root, "tasks", task, ".json").read_text(encoding="utf-8"))
    return tuple(Item(i, example["input"], example["target"]) for i, example in enumerate(data["examples"]))


@functools.lru_cache(maxsize=None)
def _load_prompt(root: Path, task: str) -> tuple[str, str]:
    """(one-line description, the worked examples) from cot-prompts/<task>.txt, without the canary header."""
    text = _task_file(root, "cot-prompts", task, ".txt").read_text(encoding="utf-8")
    if "-----\n" in text:
        text = text.split("-----\n", 1)[1]
    description, _, examples = text.strip().partition("\n")
    description = description.strip().removeprefix("Task description:").strip()
    return description, examples.strip()


def items(task: str, data_dir: str | os.PathLike | None = None) -> tuple[Item, ...]:
    """All items of a task in file order."""
    return _load_items(resolve_data_dir(data_dir), _check_task(task))


def description(task: str, data_dir: str | os.PathLike | None = None) -> str:
    """The task's one-line description (from its chain-of-thought prompt file)."""
    return _load_prompt(resolve_data_dir(data_dir), _check_task(task))[0]


def split(task: str, part: str, seed: int = 0, data_dir: str | os.PathLike | None = None) -> list[Item]:
    """Items of the train or test part (or "all") of a task: a fixed, seeded function of (task, seed)."""
    if part not in SPLITS:
        raise InvalidInput(f"unknown split {part!r}; choose one of: {', '.join(SPLITS)}.")
    every = items(task, data_dir)
    if part == "all":
        return list(every)
    digest = hashlib.sha256(f"bbh-split:{task}:{seed}".encode()).digest()
    order = np.random.default_rng(int.from_bytes(digest[:8], "little")).permutation(len(every))
    n_train = int(len(every) * TRAIN_FRACTION)
    chosen = order[:n_train] if part == "train" else order[n_train:]
    return [every[i] for i in sorted(chosen.tolist())]


_split_items = split  # BBHEnv's `split` argument shadows the function's name


def prompt(task: str, question: str, shots: int = 0, data_dir: str | os.PathLike | None = None) -> str:
    """Zero-shot (shots=0) or 3-shot chain-of-thought (shots=3) prompt for one question."""
    task_description, examples = _load_prompt(resolve_data_dir(data_dir), _check_task(task))
    if shots == 0:
        return f"{task_description}\n\nQ: {question}\nA:"
    if shots == 3:
        return f"{task_description}\n\n{examples}\n\nQ: {question}\nA: Let's think step by step."
    raise InvalidInput(f"shots must be 0 (zero-shot) or 3 (the task's three chain-of-thought examples), got {shots}.")


def answer_text(target: str) -> str:
    """How a zero-shot answer is written (the corpus format): " The answer is <target>." """
    return f" The answer is {target}."


# ----------------------------------------------------------------------------------------------
# Answer extraction and normalisation

_ANSWER_IS = re.compile(r"answer is\s*:?", re.IGNORECASE)
_NEXT_QUESTION = re.compile(r"(?:^|\n)\s*Q:")
_OPTION = re.compile(r"\(([A-Z])\)")
_OPTION_LINE = re.compile(r"^\(([A-Z])\)\s*(.*?)\s*$", re.MULTILINE)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_BRACKETS = set("()[]{}<>")
_WORD_PATTERNS = {
    "true_false": re.compile(r"\b(true|false)\b", re.IGNORECASE),
    "yes_no": re.compile(r"\b(yes|no)\b", re.IGNORECASE),
    "valid_invalid": re.compile(r"\b(invalid|valid)\b", re.IGNORECASE),
}
_NUMBER_WORDS = {word: str(i) for i, word in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split())}
_EDGE_JUNK = " \t\"'`*_.:;!"


def _last_match(pattern: re.Pattern, text: str) -> str | None:
    matches = list(pattern.finditer(text))
    return matches[-1].group(0) if matches else None


def _fits(span: str, task: str, question: str | None) -> bool:
    """Whether a span can be an answer of a task with a fixed answer set (types other than words/brackets)."""
    answer_type = ANSWER_TYPES[task]
    if answer_type == "choice":
        return normalise(span, task, question).startswith("(")   # a letter, or an option's text
    if answer_type in _WORD_PATTERNS:
        return bool(_WORD_PATTERNS[answer_type].search(span))
    if answer_type == "number":
        return bool(_NUMBER.search(span)) or _plain(span) in _NUMBER_WORDS
    return True


def extract_answer(text: str, task: str, question: str | None = None) -> str:
    """The answer span of a reply (up to any line starting "Q:", a prompt echo): what follows the last "answer
    is" on its line, up to the end of that sentence, else the last thing that looks like an answer of the task's
    type. Tasks with a fixed answer set (options, True/False, yes/no, valid/invalid, numbers) only accept a span
    holding such an answer ("the answer is so that ..." is not one); with the question, an option's text counts
    for its letter. "" if none."""
    answer_type = ANSWER_TYPES[_check_task(task)]
    text = _NEXT_QUESTION.split(text, maxsplit=1)[0]  # a model that runs on into a new question stops here
    spans = []
    for found in _ANSWER_IS.finditer(text):
        span = text[found.end():].split("\n", 1)[0]
        span = re.split(r"\.\s|\s+Q:", span, maxsplit=1)[0]
        spans.append(span.strip(_EDGE_JUNK + " "))
    for span in reversed(spans):
        if _fits(span, task, question):
            return span
    if answer_type == "choice":
        return _last_match(_OPTION, text) or ""
    if answer_type in _WORD_PATTERNS:
        return _last_match(_WORD_PATTERNS[answer_type], text) or ""
    if answer_type == "number":
        return _last_match(_NUMBER, text) or ""
    lines = [line.strip(_EDGE_JUNK + " ") for line in text.strip().split("\n")]
    return lines[-1] if lines else ""


def options(question: str) -> dict[str, str]:
    """Option letter -> option text of a multiple-choice question ("(A) circle" lines)."""
    return {letter: text for letter, text in _OPTION_LINE.findall(question)}


def _plain(text: str) -> str:
    return " ".join(text.strip(_EDGE_JUNK).lower().split())


def normalise(answer: str, task: str, question: str | None = None) -> str:
    """Canonical form of an answer (or a target) for exact match: "(B)", "True", "yes", "invalid", "-12",
    "apple banana", "] ) >". With the question, a multiple-choice answer given as an option's text maps to
    its letter. What does not fit the type is compared as lower-case text."""
    answer_type = ANSWER_TYPES[_check_task(task)]
    text = answer.strip()
    if answer_type == "choice":
        if match := _OPTION.search(text):
            return f"({match.group(1)})"
        if match := re.fullmatch(r"(?:option\s+)?([A-Z])[.):]?", text.strip(_EDGE_JUNK + " "), re.IGNORECASE):
            return f"({match.group(1).upper()})"
        if question is not None:
            letters = [letter for letter, option in options(question).items() if _plain(option) == _plain(text)]
            if len(letters) == 1:
                return f"({letters[0]})"
        return _plain(text)
    if answer_type in _WORD_PATTERNS:
        if match := _WORD_PATTERNS[answer_type].search(text):
            word = match.group(1).lower()
            return word.capitalize() if answer_type == "true_false" else word
        return _plain(text)
    if answer_type == "number":
        plain = _plain(text)
        if plain in _NUMBER_WORDS:
            return _NUMBER_WORDS[plain]
        if match := _NUMBER.search(text):
            value = float(match.group(0).replace(",", ""))
            return str(int(value)) if value.is_integer() else repr(value)
        return plain
    if answer_type == "brackets":
        return " ".join(char for char in text if char in _BRACKETS)
    words = re.sub(r"[,\s]+", " ", text.lower()).split()
    return " ".join(word.strip("\"'`*.:;!") for word in words if word.strip("\"'`*.:;!"))


def score(reply: str, item: Item, task: str) -> tuple[bool, str]:
    """(exact match, normalised prediction) of a reply to an item."""
    prediction = normalise(extract_answer(reply, task, item.input), task, item.input)
    return prediction == normalise(item.target, task, item.input), prediction


def admissible_answers(task: str, question: str) -> list[str] | None:
    """The possible answers when the task fixes them (options, True/False, ...); None for open answers."""
    answer_type = ANSWER_TYPES[_check_task(task)]
    if answer_type == "choice":
        return [f"({letter})" for letter in options(question)] or None
    return {"true_false": ["True", "False"], "yes_no": ["Yes", "No"],
            "valid_invalid": ["valid", "invalid"]}.get(answer_type)


# ----------------------------------------------------------------------------------------------
# Environment

class BBHEnv(TextEnv):
    """One task of BIG-Bench Hard as a one-step environment; `reset(seed=i)` poses item i of the split."""

    def __init__(self, task: str, split: str = "test", shots: int = 0, data_dir: str | os.PathLike | None = None,
                 split_seed: int = 0, render_mode: str | None = None) -> None:
        super().__init__(render_mode)
        self.task = _check_task(task)
        if shots not in (0, 3):
            raise InvalidInput(f"shots must be 0 or 3, got {shots}.")
        self.shots = shots
        self.data_dir = resolve_data_dir(data_dir)
        self.split = split
        self.items = _split_items(task, split, split_seed, self.data_dir)
        self.description = description(task, self.data_dir)
        prompts = [prompt(task, item.input, shots, self.data_dir) for item in self.items]
        self.observation_space = text_space(max(map(len, prompts), default=1), "".join(set("".join(prompts))))
        self._item: Item | None = None
        self._next_index = 0
        self._info: dict[str, Any] = {}
        self._done = False

    def __len__(self) -> int:
        return len(self.items)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[str, dict[str, Any]]:
        super().reset(seed=seed)
        index = self._next_index if seed is None else int(seed)
        if not 0 <= index < len(self.items):
            raise InvalidInput(f"item {index} is outside the {self.split} split of {self.task} (0..{len(self.items) - 1}).")
        self._next_index = (index + 1) % len(self.items)
        self._item = self.items[index]
        self._done = False
        self._last_observation = prompt(self.task, self._item.input, self.shots, self.data_dir)
        self._info = {"task": self.description, "bbh_task": self.task, "answer_type": ANSWER_TYPES[self.task],
                      "question": self._item.input, "split": self.split, "index": index, "item": self._item.index,
                      "shots": self.shots, "score": 0, "max_score": 1, "won": False, "lost": False,
                      "correct": False, "invalid_action": False}
        allowed = admissible_answers(self.task, self._item.input)
        if allowed is not None:
            self._info["admissible_actions"] = allowed
        return self._last_observation, dict(self._info)

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        if self._item is None:
            raise RuntimeError("call reset() before step().")
        if self._done:
            return self._last_observation, 0.0, True, False, dict(self._info)
        extracted = extract_answer(str(action), self.task, self._item.input)
        correct, prediction = score(str(action), self._item, self.task)
        self._done = True
        self._info.update(target=self._item.target, extracted_answer=extracted, prediction=prediction,
                          score=int(correct), won=correct, lost=not correct, correct=correct,
                          invalid_action=not extracted)
        return self._last_observation, float(correct), True, False, dict(self._info)


# ----------------------------------------------------------------------------------------------
# What evaluation, play and fine-tuning know about BIG-Bench Hard

def bbh_accuracy(correct: Sequence[bool]) -> Estimate:
    """% of items answered correctly (exact match after the environment's normalisation)."""
    return estimate([100.0 * bool(c) for c in correct], "%")


def bbh_metrics(correct_by_task: Mapping[str, Sequence[bool]]) -> tuple[dict[str, Estimate], Estimate]:
    """(accuracy per task, macro average over tasks: the unweighted mean, standard error sqrt(sum se_t^2) / T)."""
    if not correct_by_task:
        raise InvalidInput("BIG-Bench Hard metrics need at least one task with answered items.")
    per_task = {task: bbh_accuracy(correct) for task, correct in sorted(correct_by_task.items())}
    return per_task, macro_average(list(per_task.values()), "%")


def _status(action: str, reward: float, info: Mapping[str, Any]) -> str:
    verdict = "correct" if info.get("won") else f"wrong; the answer is {info.get('target')}"
    return f"Answer: {info.get('extracted_answer') or action!r} -> {verdict}."


FAMILY = EnvFamily(
    name="bbh",
    title="BIG-Bench Hard",
    make=lambda task, **options: BBHEnv(task=task, **options),
    variants=lambda: list(TASKS),
    variant_kind="task",
    splits=("train", "test", "all"),
    options=lambda settings: {"split": settings.get("split", "test"), "data_dir": settings.get("bbh_data_dir"),
                              "shots": settings.get("bbh_shots", 0), "split_seed": settings.get("bbh_split_seed", 0)},
    resolved_options=lambda env: {"data_dir": str(env.data_dir)},
    finite=True,
    recorded_info=("bbh_task", "item", "target", "prediction", "extracted_answer", "correct"),
    metrics=lambda episodes: {"bbh_accuracy": bbh_accuracy([e["correct"] for e in episodes])},
    columns=(Column("bbh_accuracy"),),
    row_label="task",
    note=lambda options: (f"BBH: {options.get('shots', 0)}-shot prompts, exact match after normalisation; the macro "
                          "average weighs every task equally."),
    aggregate=Aggregate("bbh_macro_accuracy", "bbh_accuracy", lambda by_task: bbh_metrics(
        {task: [e["correct"] for e in episodes] for task, episodes in by_task.items()})[1]),
    status=_status,
    answers_questions=True,
)
