import json

import numpy as np
import pytest

from cli import main as cli
from envs import bbh
from envs.corpus import read_documents, textworld_walkthrough
from envs.corruption import CORRUPTIONS, corrupt
from envs.textworld import TextWorldEnv, split_of

REFUSALS = ("You can't", "That's not a verb I recognise.", "I only understood", "You can't see any such thing")


def _manifest(directory):
    return json.loads((directory / "manifest.json").read_text())


def test_textworld_corpus_from_train_games(tw_cache, tmp_path, capsys):
    out = tmp_path / "tw"
    args = ["data", "textworld", "--games", "2", "--presets", "[coin-easy]", "--out", str(out),
            "--cache_dir", str(tw_cache), "--progress", "false", "--exploratory_per_game", "3"]
    assert cli.main(args) == 0
    assert "wrote 8 documents" in capsys.readouterr().out
    manifest = _manifest(out)
    documents = read_documents(out)
    assert manifest["documents"] == len(documents) == 8 and manifest["kinds"] == {"exploratory": 6, "walkthrough": 2}
    assert manifest["characters"] == sum(len(d["text"]) for d in documents)
    assert manifest["textworld_version"] and {g["seed"] for g in manifest["games"]} == {0, 1}
    assert all(split_of(d["seed"]) == "train" for d in documents)
    for document in documents:
        assert set(document) >= {"text", "source", "kind", "game", "seed", "dirty", "corruption"}
        assert document["source"] == "textworld" and not document["dirty"] and document["corruption"] is None
        assert document["text"].startswith("Objective: ") and "\n> " in document["text"] and "\n\n" not in document["text"]
    # the walkthrough document is exactly what playing the game renders through the shared Transcript
    transcript, _ = textworld_walkthrough(TextWorldEnv("coin-easy", cache_dir=tw_cache), 0)
    assert documents[0]["text"] == transcript.render() and documents[0]["won"]
    exploratory = [d["text"] for d in documents if d["kind"] == "exploratory"]
    assert any(refusal in text for text in exploratory for refusal in REFUSALS)
    commands = {d["game"]: d["text"].count("\n> ") for d in documents if d["kind"] == "walkthrough"}
    longer = [d["text"].count("\n> ") - commands[d["game"]] for d in documents if d["kind"] == "exploratory"]
    assert min(longer) >= 0 and max(longer) > 0
    # same settings, same corpus; an existing corpus is not overwritten by accident
    first = (out / "shard-00000.jsonl").read_text()
    assert cli.main(args) == 2 and "--overwrite true" in capsys.readouterr().err
    assert cli.main(args + ["--overwrite", "true"]) == 0
    assert (out / "shard-00000.jsonl").read_text() == first


def test_bbh_corpus_holds_only_train_items(bbh_dir, tmp_path):
    out = tmp_path / "bbh"
    assert cli.main(["data", "bbh", "--out", str(out), "--data_dir", str(bbh_dir), "--tasks", "[navigate, snarks]",
                     "--progress", "false", "--shard_mb", "0.05"]) == 0
    manifest = _manifest(out)
    documents = read_documents(out)
    assert len(manifest["shards"]) > 1 and manifest["bbh_canary"]
    for task in ("navigate", "snarks"):
        train = {item.index: item for item in bbh.split(task, "train", data_dir=bbh_dir)}
        test = {item.index for item in bbh.split(task, "test", data_dir=bbh_dir)}
        mine = [d for d in documents if d["task"] == task]
        assert {d["item"] for d in mine} == set(train) and not {d["item"] for d in mine} & test
        for document in mine:
            item = train[document["item"]]
            prompt = bbh.prompt(task, item.input, 0, bbh_dir)
            assert document["text"] == prompt + f" The answer is {item.target}."
            assert bbh.extract_answer(document["text"][len(prompt):], task) == item.target


@pytest.mark.slow
def test_crafter_corpus_in_parallel_matches_serial_and_mixes_dirty_data(tmp_path):
    common = ["--episodes", "3", "--max_steps", "25", "--progress", "false", "--dirty_ratio", "0.5",
              "--corruption", "[shuffled_words, foreign_text]"]
    assert cli.main(["data", "crafter", "--out", str(tmp_path / "one"), "--workers", "1", *common]) == 0
    assert cli.main(["data", "crafter", "--out", str(tmp_path / "two"), "--workers", "2", *common]) == 0
    serial, parallel = read_documents(tmp_path / "one"), read_documents(tmp_path / "two")
    assert serial == parallel and len(serial) == 3
    assert [d["seed"] for d in serial] == [0, 1, 2] and all(d["source"] == "crafter" for d in serial)
    manifest = _manifest(tmp_path / "one")
    assert manifest["dirty_documents"] == sum(d["dirty"] for d in serial)
    for document in serial:
        if document["dirty"]:
            assert document["corruption"] in ("shuffled_words", "foreign_text")
        else:
            assert document["text"].startswith("Objective: Survive") and document["text"].count("\n> ") == document["steps"]


def test_dirty_mixing_marks_and_corrupts_a_fraction(tw_cache, tmp_path):
    out = tmp_path / "dirty"
    assert cli.main(["data", "textworld", "--games", "4", "--presets", "[coin-easy, treasure-easy]", "--out", str(out),
                     "--cache_dir", str(tw_cache), "--progress", "false", "--dirty_ratio", "0.5",
                     "--corruption", "random_tokens", "--exploratory_per_game", "4"]) == 0
    clean_out = tmp_path / "clean"
    assert cli.main(["data", "textworld", "--games", "4", "--presets", "[coin-easy, treasure-easy]", "--out",
                     str(clean_out), "--cache_dir", str(tw_cache), "--progress", "false",
                     "--exploratory_per_game", "4"]) == 0
    dirty, clean = read_documents(out), read_documents(clean_out)
    flagged = [d for d in dirty if d["dirty"]]
    assert 4 <= len(flagged) <= 16 and _manifest(out)["corruptions"] == {"random_tokens": len(flagged)}
    for mixed, original in zip(dirty, clean):
        assert (mixed["text"] != original["text"]) == mixed["dirty"]
        assert mixed["text"].count("\n") == original["text"].count("\n")


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_corruptions_are_seeded_and_keep_lines(kind):
    text = "Objective: find the coin\nYou are in a hall with a door.\n> go east\nYou are in a vault."
    first = corrupt(text, kind, np.random.default_rng(3), rate=1.0)
    assert first == corrupt(text, kind, np.random.default_rng(3), rate=1.0) != text
    assert first.count("\n") == text.count("\n")
    assert corrupt(text, kind, np.random.default_rng(3), rate=0.0) == text
    with pytest.raises(ValueError, match="unknown corruption"):
        corrupt(text, "typos", np.random.default_rng(0))


def test_bad_options_fail_with_a_message(tmp_path, capsys):
    assert cli.main(["data", "textworld", "--games", "1", "--presets", "[coin-impossible]", "--out", str(tmp_path),
                     "--progress", "false"]) == 2
    assert "coin-easy" in capsys.readouterr().err


@pytest.mark.parametrize("source", ["textworld", "crafter", "bbh"])
def test_shipped_configs_parse(source):
    from pathlib import Path

    from cli.data import build_parser

    config = Path(__file__).resolve().parents[2] / "configs" / "data" / f"{source}.yaml"
    args = build_parser().parse_args([source, "--config", str(config), "--out", "elsewhere"])
    assert args.source == source and args[source].out == "elsewhere" and args[source].dirty_ratio == 0.0
