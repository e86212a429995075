"""`bwarea pretrain`: stage 1, stage 2 and the AR baseline through the real Lightning loop on a generated
TextWorld corpus; exact resume after SIGKILL; DDP (2 CPU processes, gloo) = one process with the same
global batch; config round trip; the 1b preset; one clear error per bad input.

Models are tiny (width 64, 1-2 layers, 64-token blocks) and runs are 60 steps, in fp32 so that
equality checks are tight. Torch uses one thread per process (faster than two for models this small,
and immune to other processes competing for the cores).
"""

from __future__ import annotations

import csv
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch.strategies import FSDPStrategy
from safetensors.torch import load_file

import bwarea
from bwarea import BWAreaConfig, BWAreaModel, CheckpointError, train_tokenizer
from bwarea.transformer import Block
from cli import main as cli
from common.logs import read_metrics
from tests.training.test_data import textworld_corpus
from training.data import DataError
from training.pretrain import PretrainCLI, PretrainError, run
from training.runs import RunDirectoryError, TrainingDiverged, read_training_info

REPO = Path(__file__).resolve().parents[2]
STEPS, BATCH, BLOCK = 60, 8, 64
ARCHITECTURE = {"hidden_size": 64, "num_heads": 2, "num_kv_heads": 1, "intermediate_size": 128, "world_layers": 2,
                "inverse_layers": 1, "policy_layers": 1, "code_dim": 16,
                # fast usage decay so that dead-code restarts really happen within a short run
                "usage_decay": 0.8, "dead_code_threshold": 0.3}


def config(corpus: Path, root: Path, stage: str = "WorldModelStage", **model_args) -> dict:
    init_args = {"stage1": model_args.pop("stage1")} if stage == "PolicyStage" else {"preset": "tiny", "architecture": ARCHITECTURE}
    if stage == "WorldModelStage":
        init_args["restart_dead_codes_every"] = 10
    init_args["optimizer"] = {"lr": 3e-3, "warmup_steps": 5}
    init_args.update(model_args)
    return {
        "seed_everything": 0,
        "run": {"root": str(root / "runs"), "checkpoint_every_n_steps": 10, "wandb": False, "peak_flops_per_device": 1e12},
        "model": {"class_path": f"training.pretrain.{stage}", "init_args": init_args},
        "data": {"corpus": str(corpus), "vocab_size": 512, "block_size": BLOCK, "batch_size": BATCH, "val_fraction": 0.2,
                 "val_blocks": 16, "cache_dir": str(root / "cache"), "progress": False},
        "trainer": {"max_steps": STEPS, "val_check_interval": 20, "log_every_n_steps": 5, "precision": "32-true",
                    "enable_progress_bar": False, "enable_model_summary": False, "num_sanity_val_steps": 0},
    }


def write_config(path: Path, settings: dict) -> str:
    path.write_text(yaml.safe_dump(settings))
    return str(path)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("pretrain")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, tw_cache) -> Path:
    return textworld_corpus(tmp_path_factory.getbasetemp(), tw_cache)


@pytest.fixture(scope="module")
def stage1_config(corpus, root) -> str:
    return write_config(root / "stage1.yaml", config(corpus, root))


@pytest.fixture(scope="module")
def stage1(stage1_config, monkeypatch_module) -> Path:
    monkeypatch_module.setenv("WANDB_API_KEY", "secret-key-never-written")
    return run(["--config", stage1_config, "--run.name", "world"])


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def rows_with(run_dir: Path, key: str) -> list[dict]:
    return [row for row in read_metrics(run_dir) if key in row]


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "export" / "model.safetensors"))


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[name] - b[name]).abs().max()) for name in a)


def subprocess_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}


def pretrain_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli.main", "pretrain", *args]


# ----------------------------------------------------------------------------------------------
# The three stages

def test_stage1_lowers_validation_loss_and_logs_codebook_health(stage1):
    val = rows_with(stage1, "val/loss")
    assert [row["step"] for row in val] == [19, 39, 59]
    vocab = read_training_info(stage1 / "export")["vocabulary"]
    assert val[-1]["val/loss"] < val[0]["val/loss"] - 0.3 and val[-1]["val/loss"] < math.log(vocab) - 2
    assert math.isclose(val[-1]["val/perplexity"], math.exp(val[-1]["val/loss"]), rel_tol=1e-4)
    assert 8 < val[-1]["val/alive_codes"] <= 64 and 0 < val[-1]["val/code_entropy"] <= math.log(64)

    train = rows_with(stage1, "train/lm_loss")
    assert {"train/perplexity", "train/alive_codes", "train/code_entropy", "train/codebook_loss", "train/commitment_loss",
            "train/grad_norm", "perf/tokens_per_sec", "perf/flops_per_sec", "perf/tokens_seen"} <= train[-1].keys()
    assert train[-1]["perf/tokens_per_sec"] > 0 and train[-1]["perf/flops_per_sec"] > 1e3 * train[-1]["perf/tokens_per_sec"]
    assert train[-1]["perf/mfu"] == pytest.approx(train[-1]["perf/flops_per_sec"] / 1e12, rel=1e-5)
    assert sum(row.get("train/restarted_codes", 0) for row in read_metrics(stage1)) > 0  # dead codes were restarted

    info = read_training_info(stage1 / "export")
    assert info["stage"] == "world" and info["global_step"] == STEPS and info["tokens_seen"] == STEPS * BATCH * BLOCK
    assert info["val_metrics"]["val/loss"] == pytest.approx(val[-1]["val/loss"])
    model = bwarea.load_pretrained(stage1 / "export")
    assert isinstance(model, BWAreaModel) and model.config.hidden_size == 64 and len(bwarea.load_tokenizer(stage1 / "export")) == vocab
    assert (stage1 / "checkpoints" / "last.ckpt").is_file() and (stage1 / "config.yaml").is_file()
    written = "".join(path.read_text() for path in stage1.rglob("*.yaml"))
    assert "secret-key-never-written" not in written and "WANDB_API_KEY" not in written


def test_stage2_clones_actions_far_above_chance_and_simulates_an_llm_better_than_unigrams(stage1, corpus, root):
    # with Adam-mini (stage 1 and the AR baseline train with AdamW): its blocks' second moments are in the checkpoint
    adam_mini = {"algorithm": "adam_mini", "lr": 3e-3, "warmup_steps": 5}
    policy = run(["--config", write_config(root / "stage2.yaml", config(corpus, root, "PolicyStage", stage1=str(stage1 / "export"),
                                                                        optimizer=adam_mini)),
                  "--run.name", "policy"])
    state = torch.load(policy / "checkpoints" / "last.ckpt", weights_only=True)["optimizer_states"][0]["state"]
    assert state and all("block_exp_avg_sq" in entry and "exp_avg_sq" not in entry for entry in state.values())
    val = rows_with(policy, "val/bc_top1")
    last = val[-1]
    assert last["val/bc_top1"] > 4 / 64 and last["val/bc_top5"] > last["val/bc_top1"] and last["val/loss"] < val[0]["val/loss"]
    assert last["val/sim_greedy_perplexity"] < last["val/unigram_perplexity"]
    assert last["val/id_perplexity"] < last["val/sim_greedy_perplexity"]
    assert last["val/sim_sampled_perplexity"] > 0

    before, after = weights(stage1), weights(policy)
    assert max_difference({k: v for k, v in before.items() if not k.startswith("policy.")},
                          {k: v for k, v in after.items() if not k.startswith("policy.")}) == 0.0  # stage 1 frozen
    assert max_difference({k: v for k, v in before.items() if k.startswith("policy.")},
                          {k: v for k, v in after.items() if k.startswith("policy.")}) > 1e-3
    info = read_training_info(policy / "export")
    assert info["stage"] == "policy" and info["stage1"] == str(stage1 / "export")


@pytest.fixture(scope="module")
def ar(corpus, root) -> Path:
    return run(["--config", write_config(root / "ar.yaml", config(corpus, root, "ARBaseline")), "--run.name", "ar"])


def test_ar_baseline_trains_on_the_same_blocks_with_the_same_budget(stage1, ar):
    val = rows_with(ar, "val/perplexity")
    assert val[-1]["val/loss"] < val[0]["val/loss"] - 0.3
    world, baseline = read_training_info(stage1 / "export"), read_training_info(ar / "export")
    assert baseline["stage"] == "ar" and baseline["model_type"] == "bwarea-ar"
    for key in ("tokens_seen", "global_step", "data_fingerprint", "tokenizer_fingerprint"):
        assert baseline[key] == world[key]
    world_model = bwarea.load_pretrained(stage1 / "export").world
    assert abs(baseline["parameters"] - sum(p.numel() for p in world_model.parameters())) < 0.1 * baseline["parameters"]


# ----------------------------------------------------------------------------------------------
# Resume and distribution

def test_sigkilled_run_resumed_from_last_checkpoint_ends_where_an_uninterrupted_run_ends(stage1, stage1_config, root):
    name = "killed"
    process = subprocess.Popen(pretrain_command("--config", stage1_config, "--run.name", name), env=subprocess_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    checkpoint = root / "runs" / name / "checkpoints" / "step=000010.ckpt"
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert process.poll() is None, f"the run ended before it could be killed: {process.stderr.read().decode()[-2000:]}"
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed = root / "runs" / name
    assert not (killed / "export").exists()
    newest = max((killed / "checkpoints").glob("*.ckpt"), key=lambda path: path.stat().st_mtime_ns)
    resume_step = torch.load(newest, weights_only=True)["global_step"]
    assert 10 <= resume_step < STEPS

    resumed = run(["--config", stage1_config, "--run.name", name, "--ckpt_path", "last"])
    with sorted((resumed / "logs" / "csv").glob("version_*/metrics.csv"))[-1].open() as handle:
        assert min(int(row["step"]) for row in csv.DictReader(handle)) >= resume_step  # continued, not restarted
    assert max_difference(weights(resumed), weights(stage1)) < 1e-6
    final = rows_with(resumed, "train/loss")[-1]
    reference = rows_with(stage1, "train/loss")[-1]
    assert final["step"] == reference["step"] and final["train/loss"] == pytest.approx(reference["train/loss"], abs=1e-6)
    assert len({row["step"] for row in rows_with(resumed, "train/loss")}) == len(rows_with(resumed, "train/loss"))


def test_ddp_on_two_cpu_processes_matches_one_process_with_the_same_global_batch(stage1, stage1_config, root):
    result = subprocess.run(
        pretrain_command("--config", stage1_config, "--run.name", "ddp", "--trainer.strategy", "ddp",
                         "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--data.batch_size", str(BATCH // 2)),
        env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ddp = root / "runs" / "ddp"
    # dead-code restarts happened in both runs, from the features of the whole global batch
    assert sum(row.get("train/restarted_codes", 0) for row in read_metrics(ddp)) > 0
    # all-reduced gradients round differently from one process's sums; Adam turns that noise into steps of
    # up to ~lr on codebook rows whose gradient is nearly zero, hence a relative tolerance per tensor
    reference = weights(stage1)
    for name, tensor in weights(ddp).items():
        assert float((tensor - reference[name]).abs().max()) <= 1e-3 * float(reference[name].abs().max()), name
    assert rows_with(ddp, "train/loss")[-1]["train/loss"] == pytest.approx(rows_with(stage1, "train/loss")[-1]["train/loss"], abs=1e-4)
    assert rows_with(ddp, "val/loss")[-1]["val/loss"] == pytest.approx(rows_with(stage1, "val/loss")[-1]["val/loss"], abs=1e-4)
    assert read_training_info(ddp / "export")["tokens_seen"] == STEPS * BATCH * BLOCK


# ----------------------------------------------------------------------------------------------
# Configuration

def parsed(args: list[str]) -> dict:
    settings = PretrainCLI(args, parse_only=True).config.as_dict()
    settings.pop("config", None)
    return settings


def test_resolved_config_round_trips_and_every_option_is_documented(stage1, stage1_config, capsys):
    assert parsed(["--config", str(stage1 / "config.yaml")]) == parsed(["--config", stage1_config, "--run.name", "world"])

    assert cli.main(["pretrain", "--help"]) == 0
    help_text = capsys.readouterr().out
    for option in ("--data.corpus", "--data.block_size", "--data.dirty.ratio", "--run.checkpoint_every_n_steps",
                   "--run.peak_flops_per_device", "--ckpt_path", "--trainer.max_steps", "--model.help"):
        assert option in help_text
    parser = PretrainCLI(["--config", stage1_config], parse_only=True).parser
    own = [action for action in parser._actions if action.dest.startswith(("data.", "run.")) and not action.dest.endswith(".help")]
    assert len(own) > 20 and all(action.help and len(action.help) > 15 for action in own)

    assert cli.main(["pretrain", "--model.help", "WorldModelStage"]) == 0
    model_help = capsys.readouterr().out
    assert "--model.restart_dead_codes_every" in model_help and "--model.optimizer.warmup_steps" in model_help


def test_presets_parse_and_the_1b_model_builds_on_the_meta_device():
    for preset in ("tiny", "tiny-policy", "tiny-ar", "tiny-dirty", "small", "small-policy", "small-ar", "1b", "1b-policy", "1b-ar"):
        settings = parsed(["--config", str(REPO / "configs" / "pretrain" / f"{preset}.yaml")])
        assert settings["trainer"]["max_steps"] > 0
    settings = parsed(["--config", str(REPO / "configs" / "pretrain" / "1b.yaml")])
    strategy = settings["trainer"]["strategy"]
    assert strategy["class_path"].endswith("FSDPStrategy") and settings["trainer"]["precision"] == "auto"  # bf16 on GPUs
    assert Block in FSDPStrategy(**strategy["init_args"]).kwargs["auto_wrap_policy"]._module_classes

    model_args = settings["model"]["init_args"]
    with torch.device("meta"):
        model = BWAreaModel(BWAreaConfig.preset(model_args["preset"], **(model_args["architecture"] or {})))
    assert 2.6e9 < model.num_parameters() < 2.8e9 and model.config.world_layers == 22


# ----------------------------------------------------------------------------------------------
# Bad input: one clear error each

def test_stage2_refuses_anything_but_a_stage1_export(stage1, ar, corpus, root, capsys):
    bare = root / "bare"
    bwarea.load_pretrained(stage1 / "export").save_pretrained(bare)
    for target, error, message in ((bare, CheckpointError, "has no training_info.json"),
                                   (ar / "export", PretrainError, "is the export of the AR baseline"),
                                   (root / "missing", CheckpointError, "does not exist")):
        with pytest.raises(error, match=message):
            run(["--config", write_config(root / "bad-stage2.yaml", config(corpus, root, "PolicyStage", stage1=str(target)))])
    code = cli.main(["pretrain", "--config", str(root / "bad-stage2.yaml")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("bwarea pretrain: ") and "\n" not in err


def test_vocabulary_mismatches_are_refused(stage1, corpus, root):
    other = root / "other-tokenizer"
    train_tokenizer(["Objective: find the coin. > take coin"] * 50, vocab_size=300).save_pretrained(other)
    stage2 = config(corpus, root, "PolicyStage", stage1=str(stage1 / "export"))
    stage2["data"]["tokenizer"] = str(other)
    with pytest.raises(PretrainError, match="is not the tokenizer stage 1 was trained with"):
        run(["--config", write_config(root / "mismatch.yaml", stage2), "--run.name", "mismatch"])

    small = config(corpus, root)
    small["model"]["init_args"]["architecture"] = {**ARCHITECTURE, "vocab_size": 100}
    with pytest.raises(PretrainError, match="smaller than the tokenizer's"):
        run(["--config", write_config(root / "small-vocab.yaml", small), "--run.name", "small-vocab"])

    # resuming stage 1's checkpoint with another tokenizer
    resume = config(corpus, root)
    resume["data"]["tokenizer"] = str(other)
    resume["trainer"]["max_steps"] = STEPS + 10
    with pytest.raises(PretrainError, match="trained with another tokenizer"):
        run(["--config", write_config(root / "resume-other.yaml", resume), "--run.name", "world",
             "--ckpt_path", str(stage1 / "checkpoints" / "last.ckpt")])


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(corpus, root):
    diverging = config(corpus, root, optimizer={"lr": 1e30, "warmup_steps": 0})
    diverging["run"]["checkpoint_every_n_steps"] = 1
    diverging["trainer"]["gradient_clip_val"] = None
    with pytest.raises(TrainingDiverged, match=r"training diverged at step \d+: loss nan.*last good checkpoint is .*last.ckpt"):
        run(["--config", write_config(root / "nan.yaml", diverging), "--run.name", "nan"])
    run_dir = root / "runs" / "nan"
    assert not (run_dir / "export").exists()
    checkpoints = sorted((run_dir / "checkpoints").glob("*.ckpt"))
    assert checkpoints
    for path in checkpoints:
        state = torch.load(path, weights_only=True)["state_dict"]
        assert all(bool(torch.isfinite(t).all()) for t in state.values() if t.is_floating_point())


def test_an_existing_run_is_never_overwritten_by_accident(stage1, stage1_config, corpus, root):
    with pytest.raises(RunDirectoryError, match="already holds a run; resume it with --ckpt_path last"):
        run(["--config", stage1_config, "--run.name", "world"])
    with pytest.raises(DataError, match="does not exist"):
        run(["--config", stage1_config, "--run.name", "nowhere", "--data.corpus", str(root / "no-corpus")])
