"""Dirty data for the robustness experiment: documents damaged in one of three ways.

- random_tokens: each word is replaced, with probability `rate`, by a random string of letters,
  digits and punctuation.
- shuffled_words: each line has its words shuffled, with probability `rate`.
- foreign_text: each line is replaced, with probability `rate`, by made-up words of about the same
  length written in another script (Cyrillic, Greek, Latin with diacritics or Hiragana). It is
  synthetic text that looks foreign to the model, not a real language.

Every function is a pure function of (text, rng state): the same seed gives the same corruption.
"""

from __future__ import annotations

import string

import numpy as np

from common.errors import InvalidInput

CORRUPTIONS = ("random_tokens", "shuffled_words", "foreign_text")

_TOKEN_CHARS = string.ascii_letters + string.digits + "!#$%&*+-/<=>?@^_|~"
_SCRIPTS = {
    "cyrillic": ["ка", "ро", "ви", "ны", "ст", "ла", "же", "ду", "мо", "пре", "ть", "ий", "щу", "ёл"],
    "greek": ["κα", "λο", "πη", "ρι", "στ", "μέ", "νω", "θυ", "ξα", "φί", "χο", "ψε", "ου", "γή"],
    "latin": ["ça", "ñe", "ør", "ük", "ßa", "ée", "ąg", "ił", "ôn", "ừu", "dž", "åm", "öy", "ġi"],
    "hiragana": ["か", "の", "し", "て", "に", "と", "ま", "ら", "す", "ゆ", "ひ", "ろ", "ね", "を"],
}


def _random_token(rng: np.random.Generator) -> str:
    length = int(rng.integers(1, 9))
    return "".join(_TOKEN_CHARS[i] for i in rng.integers(len(_TOKEN_CHARS), size=length))


def _foreign_line(length: int, rng: np.random.Generator) -> str:
    syllables = list(_SCRIPTS.values())[int(rng.integers(len(_SCRIPTS)))]
    words, size = [], 0
    while size < max(length, 1):
        word = "".join(syllables[i] for i in rng.integers(len(syllables), size=int(rng.integers(1, 5))))
        words.append(word)
        size += len(word) + 1
    return " ".join(words)


def corrupt(text: str, kind: str, rng: np.random.Generator, rate: float = 0.5) -> str:
    """`text` damaged by corruption `kind` (see the module docstring), line structure kept."""
    if kind not in CORRUPTIONS:
        raise InvalidInput(f"unknown corruption {kind!r}; choose one of: {', '.join(CORRUPTIONS)}.")
    if not 0.0 <= rate <= 1.0:
        raise InvalidInput(f"corruption rate must be in [0, 1], got {rate}.")
    lines = text.split("\n")
    if kind == "random_tokens":
        return "\n".join(" ".join(_random_token(rng) if rng.random() < rate else word for word in line.split(" "))
                         for line in lines)
    if kind == "shuffled_words":
        out = []
        for line in lines:
            words = line.split(" ")
            if rng.random() < rate:
                words = [words[i] for i in rng.permutation(len(words))]
            out.append(" ".join(words))
        return "\n".join(out)
    return "\n".join(_foreign_line(len(line), rng) if rng.random() < rate else line for line in lines)
