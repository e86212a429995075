"""`bwarea convert`: pretrained Hugging Face LMs (and the release) into save_pretrained directories."""

from __future__ import annotations

import pytest
import torch

import bwarea
from bwarea import ARLanguageModel, BWAreaModel
from cli.convert import main
from tests.bwarea.test_pretrained_lm import CASES, CHAT_TEMPLATE, batch, hf_logits, save_hf_model
from training.runs import read_training_info

CORPUS = "You are in a kitchen. There is a closed door to the east. > go east\n" * 40


@pytest.fixture(scope="module")
def tokenizer():
    trained = bwarea.train_tokenizer([CORPUS, "The quick brown fox jumps over the lazy dog."] * 8, vocab_size=300)
    trained.chat_template = CHAT_TEMPLATE
    return trained


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory, tokenizer):
    directory = tmp_path_factory.mktemp("hf-llama")
    return directory, save_hf_model(directory, CASES["llama"](), tokenizer)


def convert(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["hf", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_bwarea_conversion_loads_and_speaks_like_the_lm(hf_dir, tmp_path, capsys, tokenizer):
    source, reference = hf_dir
    out = tmp_path / "bwarea"
    code, stdout, _ = convert(capsys, "--model", str(source), "--out", str(out), "--num_actions", "16")
    assert code == 0
    assert f"to {out}: world " in stdout and "inverse " in stdout and "policy " in stdout and "codebook " in stdout

    model = bwarea.load_pretrained(out)
    assert isinstance(model, BWAreaModel) and model.config.num_actions == 16 and model.config.injection_layer == 2
    ids, mask = batch()
    with torch.no_grad():
        world = model.world_logits(ids, torch.randint(0, 16, ids.shape), mask)
    assert (world - hf_logits(reference, ids, mask))[mask.bool()].abs().max() < 1e-4
    loaded = bwarea.load_tokenizer(out)
    assert loaded("go east")["input_ids"] == tokenizer("go east")["input_ids"] and loaded.chat_template == CHAT_TEMPLATE
    info = read_training_info(out)
    assert info["stage"] == "converted" and info["variant"] == "bwarea" and info["codebook_init"] == "random"
    assert info["source"] == str(source.resolve()) and info["vocabulary"] == 300
    assert info["parameters"] == model.num_parameters()


def test_ar_variant_and_kmeans_codebook(hf_dir, tmp_path, capsys):
    source, reference = hf_dir
    code, _, _ = convert(capsys, "--model", str(source), "--out", str(tmp_path / "ar"), "--variant", "ar")
    assert code == 0
    model = bwarea.load_pretrained(tmp_path / "ar")
    ids, mask = batch()
    assert isinstance(model, ARLanguageModel) and read_training_info(tmp_path / "ar")["variant"] == "ar"
    assert (model(ids, mask).detach() - hf_logits(reference, ids, mask))[mask.bool()].abs().max() < 1e-4

    (tmp_path / "corpus.txt").write_text(CORPUS)
    code, stdout, _ = convert(capsys, "--model", str(source), "--out", str(tmp_path / "kmeans"), "--num_actions", "8",
                              "--corpus", str(tmp_path / "corpus.txt"), "--kmeans_tokens", "300")
    assert code == 0 and "codebook: k-means on" in stdout
    info = read_training_info(tmp_path / "kmeans")
    assert info["codebook_init"] == "kmeans" and info["kmeans"]["alive_codes"] == 8
    assert info["kmeans"]["features"] == 2 * 127  # two full blocks of the model's 128-token context, T-1 features each
    model = bwarea.load_pretrained(tmp_path / "kmeans")
    corpus_ids = bwarea.load_tokenizer(tmp_path / "kmeans")(CORPUS, return_tensors="pt")["input_ids"][:, :128]
    assert model.label_actions(corpus_ids).unique().numel() > 1  # the corpus's own transitions use several codes


def test_user_errors_exit_2_with_one_line(hf_dir, tmp_path, capsys):
    source, _ = hf_dir
    code, stdout, stderr = convert(capsys, "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "out"))
    assert code == 2 and stdout == "" and stderr.startswith("bwarea convert: ") and stderr.count("\n") == 1
    assert "neither a Hugging Face model directory nor a .gguf file" in stderr and not (tmp_path / "out").exists()

    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("keep me")
    code, _, stderr = convert(capsys, "--model", str(source), "--out", str(occupied), "--variant", "ar")
    assert code == 2 and "already exists and is not empty" in stderr and (occupied / "notes.txt").read_text() == "keep me"
    code, _, _ = convert(capsys, "--model", str(source), "--out", str(occupied), "--variant", "ar", "--overwrite")
    assert code == 0 and not (occupied / "notes.txt").exists() and isinstance(bwarea.load_pretrained(occupied), ARLanguageModel)

    code, _, stderr = convert(capsys, "--model", str(source), "--out", str(tmp_path / "x"), "--variant", "ar",
                              "--corpus", str(tmp_path))
    assert code == 2 and "--corpus applies to --variant bwarea only" in stderr

    code = main(["released", "--source", str(tmp_path / "no-release"), "--out", str(tmp_path / "released")])
    stderr = capsys.readouterr().err
    assert code == 2 and stderr.startswith("bwarea convert: ") and stderr.count("\n") == 1


def test_cola_variant(hf_dir, tmp_path, capsys):
    source, reference = hf_dir
    code, stdout, _ = convert(capsys, "--model", str(source), "--out", str(tmp_path / "cola"), "--variant", "cola",
                              "--num_actions", "8")
    assert code == 0 and "CoLA model" in stdout
    model = bwarea.load_pretrained(tmp_path / "cola")
    assert model.config.model_type == "bwarea-cola" and model.config.num_actions == 8
    ids, mask = batch()
    with torch.no_grad():
        world = model.world_logits(ids, torch.randint(0, 8, ids.shape), mask)
    assert (world - hf_logits(reference, ids, mask))[mask.bool()].abs().max() < 1e-4
