"""training.runs pieces used by pretraining (and later by RL fine-tuning), checked on their own."""

from __future__ import annotations

import csv
import os

import pytest
import torch
from lightning.pytorch import Trainer

from training.runs import (AtomicCheckpointIO, DivergenceGuard, RunDirectory, RunDirectoryError, TrainingDiverged,
                           read_metrics, read_training_info, replace_directory, write_training_info)


def test_checkpoints_with_non_finite_weights_are_never_written():
    trainer = Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    guard = DivergenceGuard()
    guard.on_save_checkpoint(trainer, None, {"state_dict": {"w": torch.ones(3), "step": torch.tensor(3)}})
    with pytest.raises(TrainingDiverged, match="the weights hold NaN/Inf values, so no checkpoint was written"):
        guard.on_save_checkpoint(trainer, None, {"state_dict": {"w": torch.tensor([1.0, float("inf")])}})


def test_a_failed_checkpoint_write_leaves_nothing_behind(tmp_path):
    io = AtomicCheckpointIO()
    target = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(2)}}, target)
    before = target.read_bytes()
    with pytest.raises(Exception):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(2)}, "unpicklable": lambda: None}, target)
    assert target.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["last.ckpt"]
    assert torch.equal(io.load_checkpoint(target)["state_dict"]["w"], torch.ones(2))


def test_replace_directory_swaps_whole_directories(tmp_path):
    target = tmp_path / "export"
    replace_directory(target, lambda staging: (staging / "a.txt").write_text("one"))
    with pytest.raises(RuntimeError):
        def broken(staging):
            (staging / "a.txt").write_text("half")
            raise RuntimeError("interrupted")
        replace_directory(target, broken)
    assert (target / "a.txt").read_text() == "one" and sorted(os.listdir(tmp_path)) == ["export"]


def test_training_info_marks_exports(tmp_path):
    write_training_info(tmp_path, {"stage": "world", "global_step": 3})
    assert read_training_info(tmp_path)["stage"] == "world"
    (tmp_path / "training_info.json").write_text("{broken")
    with pytest.raises(ValueError, match="is not valid JSON"):
        read_training_info(tmp_path)


def test_run_directory_refuses_to_start_over_an_existing_run(tmp_path):
    run = RunDirectory.open(tmp_path, "r", resuming=False, overwrite=False)
    run.checkpoints.mkdir()
    (run.checkpoints / "step=000010.ckpt").write_bytes(b"x")
    with pytest.raises(RunDirectoryError, match="already holds a run"):
        RunDirectory.open(tmp_path, "r", resuming=False, overwrite=False)
    assert RunDirectory.open(tmp_path, "r", resuming=True, overwrite=False).latest_checkpoint().name == "step=000010.ckpt"
    RunDirectory.open(tmp_path, "r", resuming=False, overwrite=True)
    assert not run.checkpoints.exists()


def test_read_metrics_drops_the_steps_a_resumed_run_redid(tmp_path):
    for version, steps in ((0, [4, 9, 14]), (1, [14, 19])):
        path = tmp_path / "logs" / "csv" / f"version_{version}" / "metrics.csv"
        path.parent.mkdir(parents=True)
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, ["step", "train/loss"])
            writer.writeheader()
            writer.writerows({"step": s, "train/loss": 10 * version + s} for s in steps)
    assert [(r["step"], r["train/loss"]) for r in read_metrics(tmp_path)] == [(4, 4), (9, 9), (14, 24), (19, 29)]
