"""SPRING's reading step: documents, paragraphs, relevance filter, extraction, merging, disk cache."""

from __future__ import annotations

import json

import pytest

from envs.crafter_manual import build_manual
from agents.context import (EXTRACTION_QUESTIONS, MANUAL, ContextConfig, build_context, latex_to_text, load_document,
                            said_yes, split_paragraphs)
from agents.http_backend import OpenAIBackend, OpenAIConfig

LATEX = r"""\documentclass{article}
\usepackage{amsmath}
\begin{document}
\section{Gathering}
Trees give \textbf{wood}~\cite{hafner2021}. % a comment that must vanish
See Figure~\ref{fig:map}.
\begin{figure}\includegraphics{map.png}\caption{The map}\end{figure}

\subsection{Tools}
A \emph{wood pickaxe} needs a table nearby.
\end{document}
"""


def test_latex_is_reduced_to_readable_text():
    text = latex_to_text(LATEX)
    assert "## Gathering" in text and "## Tools" in text
    assert "Trees give wood." in text and "A wood pickaxe needs a table nearby." in text
    for gone in ("comment", "hafner", "fig:map", "map.png", "The map", "\\", "{", "usepackage"):
        assert gone not in text


def test_documents_load_from_the_manual_or_a_file(tmp_path):
    assert load_document(MANUAL) == build_manual()
    (tmp_path / "paper.tex").write_text(LATEX)
    assert "Trees give wood." in load_document(str(tmp_path / "paper.tex"))
    with pytest.raises(FileNotFoundError, match="crafter_manual"):
        load_document(str(tmp_path / "missing.txt"))


def test_long_sections_are_split_at_line_ends_and_keep_their_heading():
    manual = build_manual()
    pieces = split_paragraphs(manual, max_chars=500)
    assert len(pieces) > manual.count("## ")
    for piece in pieces:
        assert piece.startswith("## ") and len(piece) <= 500 + 80
    body_lines = [line for line in manual.split("\n") if line.strip() and not line.startswith("## ")]
    kept = [line for piece in pieces for line in piece.split("\n")[1:]]
    assert kept == body_lines                          # nothing lost, nothing duplicated, order kept


@pytest.mark.parametrize("answer, yes", [("Yes.", True), ("yes, it does", True), ("No, it does not.", False),
                                         ("Not really. No.", False), ("", False), ("Nope", False)])
def test_yes_no_answers(answer, yes):
    assert said_yes(answer) is yes


def scripted_reader(body: dict) -> str:
    """A deterministic reader: survival paragraphs are irrelevant; extractions quote the paragraph's heading."""
    user = body["messages"][-1]["content"]
    if "Answer yes or no" in user:
        return "No." if "## Survival" in user else "Yes, it does."
    if user.endswith("dropping repeats."):
        notes = [line[2:] for line in user.split("\n") if line.startswith("- ")]
        return "\n".join(dict.fromkeys(notes))     # drop repeats, keep order
    heading = user.split("\n")[1]
    question = user.rsplit("Question: ", 1)[1]
    return f"{EXTRACTION_QUESTIONS[[q for _, q in EXTRACTION_QUESTIONS].index(question)][0]} from {heading}"


def test_reading_filters_extracts_merges_and_caches(chat_server, tmp_path):
    chat_server.reply = scripted_reader
    backend = OpenAIBackend(OpenAIConfig(base_url=chat_server.base_url, model="reader", max_retries=0))
    config = ContextConfig(document=MANUAL, cache_dir=str(tmp_path), max_chars=10_000, max_paragraph_chars=100_000)
    result = build_context(build_manual(), backend, config)
    assert not result.from_cache and not result.errors
    assert backend.rounds == 3                          # relevance, extraction, merging: one batched call each
    headings = [p.split("\n")[0] for p in result.paragraphs]
    assert headings[-1] == "## Survival" and result.relevant == [h != "## Survival" for h in headings]
    assert len(chat_server.requests) == 2 * len(headings) + 4 * (len(headings) - 1) + 4
    kept = headings[:-1]
    assert result.text == "\n\n".join(f"{title}:\n" + "\n".join(f"{title} from {h}" for h in kept)
                                      for title, _ in EXTRACTION_QUESTIONS)
    [cached] = list(tmp_path.glob("*.json"))
    assert json.loads(cached.read_text())["text"] == result.text

    again = build_context(build_manual(), backend, config)
    assert again.from_cache and again.text == result.text and backend.rounds == 3   # no model call

    other_model = OpenAIBackend(OpenAIConfig(base_url=chat_server.base_url, model="another", max_retries=0))
    assert not build_context(build_manual(), other_model, config).from_cache
    assert not build_context(build_manual() + "\nExtra line.", backend, config).from_cache
    assert len(list(tmp_path.glob("*.json"))) == 3


def test_failed_reading_is_not_cached(chat_server, tmp_path):
    chat_server.fault = lambda body: "500"
    backend = OpenAIBackend(OpenAIConfig(base_url=chat_server.base_url, model="reader", max_retries=0))
    result = build_context("## A\nTrees give wood.", backend, ContextConfig(cache_dir=str(tmp_path)))
    assert result.errors and result.text == "" and not list(tmp_path.glob("*.json"))


def test_reading_with_an_in_process_model(tiny_backend, tmp_path):
    config = ContextConfig(cache_dir=str(tmp_path), max_tokens=8, max_chars=300)
    rounds = tiny_backend.rounds
    result = build_context("## Trees\nTrees give wood.\n\n## Water\nWater gives drink.", tiny_backend, config)
    assert tiny_backend.rounds - rounds == 3 and len(result.paragraphs) == 2 and len(result.text) <= 300
    assert build_context("## Trees\nTrees give wood.\n\n## Water\nWater gives drink.", tiny_backend, config).from_cache


def test_unread_documents_are_used_as_they_are():
    result = build_context(build_manual(), backend=None, config=ContextConfig(read=False, max_chars=200))
    assert result.text == build_manual()[:200]
