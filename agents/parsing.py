"""From a model's free-text answer to one of the admissible actions.

`parse_action(answer, actions, aliases=None)` tries, in order:
0. **exact**: the whole answer or its final answer (see 1; case, surrounding space, quotes and a final
   full stop aside) is an action name or one of its `aliases` (alias -> action, e.g. Crafter's old name "move_left" for
   "move west"); aliases of two or more words also count as mentions in steps 1-2;
1. **final**: the final answer — the text after the last marker such as "final answer", "action:",
   "answer is", else the answer's last non-empty line — searched for action names on word boundaries
   (so "don't" is not "do" and "down" is not "do"); the earliest mention there wins;
2. **earliest**: the earliest mention of an action name anywhere in the answer, on word boundaries;
3. **fuzzy**: the closest action name to a same-length window of words (final answer first, then the
   whole answer), if it is similar enough (difflib ratio >= `cutoff`) and the text searched is about as
   short as the name (at most one word more): a typo in a short answer ("Action: mvoe west") is fixed,
   common words inside a sentence ("helps most right now") never become an action ("move right").
Mentions that follow a negation within three words ("not", "never", "avoid", "don't", ...) are skipped
in steps 1-2, and so is a mention directly followed by one ("do not ..."), and one inside a sentence of
three or more words copied from `echo` (the observation: TextWorld's "Look around you." read back by
a small model is not the command `look`). Names match case-insensitively with underscores and spaces
interchangeable, and at each position the longest name wins ("open wooden door" over "open door"). If
nothing matches, the result has `action=None` and method "failed"; the caller falls back and counts it.

`parse_action_faithful` reproduces the original SPRING rule for comparison: the first action in list
order whose name occurs anywhere in the answer as a plain substring, else "do" — which reads
"don't" and "down" as "do".

`PROVENANCE` names how every action of an agent was obtained, for the statistics: exact, word (final or
earliest), fuzzy, choice (picked by likelihood among the valid options), fallback (a fault or an
unparseable answer), and for other agents text / random / walkthrough / typed.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

FINAL_MARKERS = ("final answer", "best action is", "action is", "answer is", "action:", "answer:", "choose:",
                 "choice:", "command:")
# besides these, every word ending in "n't" (don't, shouldn't, ...) negates
NEGATIONS = frozenset({"not", "no", "never", "avoid", "avoiding", "without", "cannot", "dont", "doesnt", "shouldnt",
                       "cant", "wont", "isnt", "neither", "nor"})
NEGATION_WINDOW = 3
FAITHFUL_DEFAULT = "do"
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_CLAUSE_BREAK = re.compile(r"[.;,:!?()\n]")
_SENTENCE_END = (".", "!", "?", "\n", ":")


PROVENANCE = {"exact": "exact", "final": "word", "earliest": "word", "faithful": "word", "fuzzy": "fuzzy",
              "choice": "choice", "failed": "fallback"}
_EDGE = " \t\n\"'`*.!"


@dataclass(frozen=True)
class ParsedAction:
    action: str | None     # one of the admissible actions; None when parsing failed (faithful: its default)
    method: str            # exact / final / earliest / fuzzy / faithful / failed

    @property
    def failed(self) -> bool:
        return self.method == "failed"


def _readable(name: str) -> str:
    return " ".join(name.lower().replace("_", " ").split())


def _pattern(names: Iterable[str]) -> re.Pattern:
    names = sorted(set(names), key=len, reverse=True)
    alternatives = "|".join(r"[\s_]+".join(re.escape(word) for word in name.split()) for name in names)
    return re.compile(rf"(?<![a-z0-9_])({alternatives})(?![a-z0-9_]|'[a-z])", re.IGNORECASE)


def final_segment(answer: str) -> str:
    """The part of an answer that states the conclusion (see module docstring)."""
    lower = answer.lower()
    ends = [lower.rfind(marker) + len(marker) for marker in FINAL_MARKERS if marker in lower]
    if ends:
        return answer[max(ends):]
    lines = [line for line in answer.strip().split("\n") if line.strip()]
    return lines[-1] if lines else ""


def _is_negation(word: str) -> bool:
    return word.endswith("n't") or word in NEGATIONS


def _negated(text: str, start: int) -> bool:
    """A negation among the few words before `start`, within the same clause."""
    clause = _CLAUSE_BREAK.split(text[:start].lower())[-1]
    return any(_is_negation(word) for word in _WORD.findall(clause)[-NEGATION_WINDOW:])


def _auxiliary(text: str, end: int) -> bool:
    """The mention is the auxiliary of a negation ("do not ...", "do n't")."""
    following = _WORD.findall(text[end:end + 12].lower())
    return bool(following) and _is_negation(following[0])


def _echoed(text: str, start: int, end: int, echo: str) -> bool:
    """The mention sits in a sentence of three or more words copied from `echo` (e.g. the observation's
    "Look around you." read back by the model is not the command `look`)."""
    if not echo:
        return False
    left = max(text.rfind(mark, 0, start) for mark in _SENTENCE_END) + 1
    rights = [i for i in (text.find(mark, end) for mark in _SENTENCE_END) if i >= 0]
    words = _WORD.findall(text[left:min(rights, default=len(text))].lower().replace("_", " "))
    return len(words) >= 3 and f" {' '.join(words)} " in f" {' '.join(_WORD.findall(echo.lower()))} "


def _earliest(text: str, pattern: re.Pattern, by_name: dict[str, str], echo: str = "") -> str | None:
    for match in pattern.finditer(text):
        if not _negated(text, match.start()) and not _auxiliary(text, match.end()) \
                and not _echoed(text, match.start(), match.end(), echo):
            return by_name[_readable(match.group(1))]
    return None


def _fuzzy(text: str, by_name: dict[str, str], cutoff: float) -> str | None:
    text = text.lower().replace("_", " ")
    found = [(match.group(0), match.start()) for match in _WORD.finditer(text)]
    words = [word for word, start in found if not _negated(text, start)]
    best, best_score = None, cutoff
    for name, action in by_name.items():
        size = len(name.split())
        if len(words) > size + 1:   # a sentence, not a misspelt name
            continue
        for i in range(max(1, len(words) - size + 1)):
            score = difflib.SequenceMatcher(None, " ".join(words[i:i + size]), name).ratio()
            if score > best_score or (score == best_score and best is None):
                best, best_score = action, score
    return best


def parse_action(answer: str, actions: Sequence[str], cutoff: float = 0.8,
                 aliases: Mapping[str, str] | None = None, echo: str = "") -> ParsedAction:
    """One of `actions` read from `answer` (see module docstring), or a failed ParsedAction. `echo`: text the
    model saw and may copy (the observation); mentions inside sentences copied from it do not count."""
    by_name = {_readable(a): a for a in reversed(actions) if _readable(a)}  # first listed wins among duplicates
    if not by_name or not answer.strip():
        return ParsedAction(None, "failed")
    known = {_readable(alias): action for alias, action in (aliases or {}).items() if action in actions}
    segment = final_segment(answer)
    for text in (answer, segment):
        stated = _readable(text.strip(_EDGE))
        if stated in by_name or stated in known:
            return ParsedAction(by_name.get(stated) or known[stated], "exact")
    names = {**{name: action for name, action in known.items() if len(name.split()) > 1}, **by_name}
    pattern = _pattern(names)
    if action := _earliest(segment, pattern, names, echo):
        return ParsedAction(action, "final")
    if action := _earliest(answer, pattern, names, echo):
        return ParsedAction(action, "earliest")
    for text in (segment, answer):
        if action := _fuzzy(text, names, cutoff):
            return ParsedAction(action, "fuzzy")
    return ParsedAction(None, "failed")


def parse_action_faithful(answer: str, actions: Sequence[str]) -> ParsedAction:
    """The original SPRING mapping: first action (list order) found as a substring, else "do" (a failure)."""
    lower = answer.lower()
    for action in actions:
        if _readable(action) and (_readable(action) in lower or action.lower() in lower):
            return ParsedAction(action, "faithful")
    return ParsedAction(next((a for a in actions if a.lower() == FAITHFUL_DEFAULT), None), "failed")
