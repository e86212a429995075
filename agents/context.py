"""SPRING's reading step: a language model turns a document about the game into a compact context.

    result = build_context(load_document("crafter_manual"), backend, ContextConfig())
    result.text            # the context every DAG node sees

Steps (each one batched backend call over all paragraphs or questions, so reading costs 3 rounds):
1. split the document into paragraphs (blank lines; long ones cut at line ends, keeping their heading);
2. relevance filter: two yes/no questions per paragraph; a paragraph stays if either answer is yes
   (if none stays, all are kept, so the agent never plays without a context);
3. four extraction questions per relevant paragraph (helpful facts; objects to interact with or avoid;
   goals and their requirements; actions and their requirements);
4. per question, the answers of all paragraphs are merged by the model into one list without repeats.
The context is the four merged lists under headings, capped at `max_chars`.

Documents: "crafter_manual" (default) is the manual generated from crafter's own rules
(`envs.crafter_manual.build_manual`); any other value is a path to a text or LaTeX (.tex) file.
LaTeX is reduced to plain text first (comments, preamble, figures, tables and math environments
dropped; sectioning kept as headings; citations and references removed).

Results are cached on disk as JSON under `<cache_dir>/<key>.json`, key = hash of the document text,
the backend's name and every reading setting; runs with a failed request are not cached. Default
cache_dir: `$BWAREA_CACHE_DIR/spring_context`, else `~/.cache/bwarea/spring_context`.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agents.llm import Backend, CompletionRequest, Message
from common.errors import MissingInput
from common.files import atomic_write_text

MANUAL = "crafter_manual"
READER_SYSTEM = "You read the documentation of a game and answer questions about one paragraph of it, briefly."
RELEVANCE_QUESTIONS = (
    "Does this paragraph tell a player something useful for doing well in the game? Answer yes or no.",
    "Does this paragraph describe rules, mechanics or strategies of the game? Answer yes or no.",
)
EXTRACTION_QUESTIONS = (
    ("Helpful facts", "List the facts in this paragraph that would help a player, as short bullet points."),
    ("Objects", "Which objects should the player interact with or stay away from? "
                "Write one line per object: 'I would like to <verb> <object>'."),
    ("Goals and requirements", "Which goals or achievements does this paragraph mention, and what does each require?"),
    ("Actions and requirements", "Which actions does this paragraph mention, and what does each action require?"),
)
MERGE_INSTRUCTION = ("These notes were collected from several paragraphs of a game manual. Rewrite them as one "
                     "list, keeping every distinct fact once and dropping repeats.")


@dataclass
class ContextConfig:
    """document: "crafter_manual" or a path to a .txt/.md/.tex file. read: False uses the document text
    itself (capped) instead of the reading step. max_chars: cap on the final context.
    max_paragraph_chars: longer paragraphs are cut at line ends. max_tokens: per reading answer
    (relevance answers get 4). cache_dir: None = default location (see module docstring)."""

    document: str = MANUAL
    read: bool = True
    max_chars: int = 2000
    max_paragraph_chars: int = 1200
    max_tokens: int = 96
    temperature: float = 0.0
    cache_dir: str | None = None


@dataclass
class ContextResult:
    text: str
    paragraphs: list[str]
    relevant: list[bool]
    extractions: dict[str, list[str]] = field(default_factory=dict)   # heading -> answer per relevant paragraph
    errors: list[str] = field(default_factory=list)
    from_cache: bool = False

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("from_cache")
        return data


# ----------------------------------------------------------------------------------------------
# Documents

def load_document(document: str) -> str:
    if document == MANUAL:
        from envs.crafter_manual import build_manual
        return build_manual()
    path = Path(document).expanduser()
    if not path.is_file():
        raise MissingInput(f"context document {path} does not exist; give a text or LaTeX file, "
                           f"or {MANUAL!r} for the manual generated from crafter's rules.")
    text = path.read_text(encoding="utf-8", errors="replace")
    return latex_to_text(text) if path.suffix == ".tex" else text


_LATEX_DROPPED_ENVIRONMENTS = r"(figure|table|tabular|equation|align|algorithm|lstlisting|verbatim|thebibliography)\*?"
_LATEX_SECTION = re.compile(r"\\(?:sub)*section\*?\{([^}]*)\}")
_LATEX_DROPPED_COMMANDS = re.compile(r"[~ ]?\\(?:cite[tp]?|ref|eqref|label|url|footnote|vspace|hspace|includegraphics)\*?"
                                     r"(?:\[[^\]]*\])?\{[^}]*\}")
_LATEX_WRAPPER = re.compile(r"\\[a-zA-Z]+\*?(?:\[[^\]]*\])?\{([^{}]*)\}")
_LATEX_BARE_COMMAND = re.compile(r"\\[a-zA-Z]+\*?")


def latex_to_text(latex: str) -> str:
    """Plain text of a LaTeX document, good enough for a language model to read."""
    text = re.sub(r"(?<!\\)%.*", "", latex)
    if r"\begin{document}" in text:
        text = text.split(r"\begin{document}", 1)[1].split(r"\end{document}", 1)[0]
    text = re.sub(rf"\\begin\{{{_LATEX_DROPPED_ENVIRONMENTS}\}}.*?\\end\{{\1\}}", "", text, flags=re.S)
    text = re.sub(r"\\begin\{abstract\}", "## Abstract\n", text)
    text = _LATEX_SECTION.sub(lambda m: f"\n\n## {m.group(1)}\n", text)
    text = _LATEX_DROPPED_COMMANDS.sub("", text)
    for _ in range(3):  # nested wrappers: \textbf{\emph{x}}
        text = _LATEX_WRAPPER.sub(r"\1", text)
    text = _LATEX_BARE_COMMAND.sub("", text).replace("~", " ").replace("{", "").replace("}", "")
    text = text.replace("\\\\", "\n").replace("\\", "")
    text = "\n".join(" ".join(line.split()) for line in text.split("\n"))
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def split_paragraphs(text: str, max_chars: int) -> list[str]:
    """Blank-line separated paragraphs; longer ones cut at line ends, each piece keeping the heading line."""
    pieces = []
    for block in re.split(r"\n\s*\n", text.strip()):
        lines = [line.rstrip() for line in block.strip().split("\n") if line.strip()]
        if not lines:
            continue
        heading = lines[0] if lines[0].lstrip().startswith("#") and len(lines) > 1 else None
        body = lines[1:] if heading else lines
        current: list[str] = []
        for line in body:
            size = sum(len(x) + 1 for x in current) + len(heading or "")
            if current and size + len(line) > max_chars:
                pieces.append("\n".join(([heading] if heading else []) + current))
                current = []
            current.append(line[:max_chars])
        if current:
            pieces.append("\n".join(([heading] if heading else []) + current))
    return pieces


# ----------------------------------------------------------------------------------------------
# Reading

def _ask(paragraph: str, question: str, max_tokens: int, temperature: float) -> CompletionRequest:
    return CompletionRequest(messages=(Message("system", READER_SYSTEM),
                                       Message("user", f"Paragraph:\n{paragraph}\n\nQuestion: {question}")),
                             max_tokens=max_tokens, temperature=temperature)


def said_yes(answer: str) -> bool:
    """A yes/no answer read as yes: its first yes/no word is yes."""
    match = re.search(r"\b(yes|no)\b", answer.lower())
    return bool(match) and match.group(1) == "yes"


def cache_key(document: str, backend: Backend, config: ContextConfig) -> str:
    settings = {key: value for key, value in asdict(config).items() if key not in ("document", "cache_dir")}
    spec = {"document_sha256": hashlib.sha256(document.encode()).hexdigest(), "model": backend.name,
            "settings": settings, "questions": [RELEVANCE_QUESTIONS, EXTRACTION_QUESTIONS, MERGE_INSTRUCTION,
                                                READER_SYSTEM]}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:24]


def cache_directory(config: ContextConfig) -> Path:
    if config.cache_dir:
        return Path(config.cache_dir).expanduser()
    from common.files import cache_root
    return cache_root() / "spring_context"


def read_document(document: str, backend: Backend, config: ContextConfig) -> ContextResult:
    """Run the reading step (3 batched backend calls) without the cache."""
    paragraphs = split_paragraphs(document, config.max_paragraph_chars)
    if not paragraphs:
        return ContextResult("", [], [])
    errors: list[str] = []

    def answers(requests: list[CompletionRequest]) -> list[str]:
        completions = backend.complete(requests)
        errors.extend(c.error for c in completions if c.error)
        return [c.text.strip() for c in completions]

    votes = answers([_ask(p, q, 4, config.temperature) for p in paragraphs for q in RELEVANCE_QUESTIONS])
    relevant = [any(said_yes(v) for v in votes[i * 2:i * 2 + 2]) for i in range(len(paragraphs))]
    if not any(relevant):
        relevant = [True] * len(paragraphs)
    kept = [p for p, keep in zip(paragraphs, relevant) if keep]
    extracted = answers([_ask(p, q, config.max_tokens, config.temperature) for p in kept for _, q in EXTRACTION_QUESTIONS])
    per_question = {heading: extracted[j::len(EXTRACTION_QUESTIONS)] for j, (heading, _) in enumerate(EXTRACTION_QUESTIONS)}
    # the instruction comes last: a prompt too long for a local model loses its oldest notes, not the instruction
    merges = [CompletionRequest(messages=(Message("system", READER_SYSTEM), Message(
        "user", "Notes:\n" + "\n".join(f"- {a}" for a in notes if a) + "\n\n" + MERGE_INSTRUCTION)),
        max_tokens=config.max_tokens, temperature=config.temperature) for notes in per_question.values()]
    merged = answers(merges)
    sections = [f"{heading}:\n{text}" for heading, text in zip(per_question, merged) if text]
    return ContextResult("\n\n".join(sections)[:config.max_chars], paragraphs, relevant, per_question, errors)


def build_context(document: str, backend: Backend, config: ContextConfig) -> ContextResult:
    """The context for `document`: from the cache when this document was read by this model with these
    settings before, else read now and cached (unless a request failed). With read=False: the capped text."""
    if not config.read:
        return ContextResult(document.strip()[:config.max_chars], [document], [True])
    path = cache_directory(config) / f"{cache_key(document, backend, config)}.json"
    if path.is_file():
        data = json.loads(path.read_text(encoding="utf-8"))
        return ContextResult(**data, from_cache=True)
    result = read_document(document, backend, config)
    if not result.errors:
        atomic_write_text(path, json.dumps(result.to_dict(), indent=1))
    return result
