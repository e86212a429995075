"""training.runs pieces used by pretraining (and by RL fine-tuning), checked on their own, and RunCLI driving
a module that is not a pretraining stage: manual optimization, its own dataloader, no data module."""

from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule, Trainer
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, TensorDataset

from common.files import replace_directory
from common.logs import read_metrics
from training.runs import (LIGHTNING_LOGGERS, AtomicCheckpointIO, DivergenceGuard, ExportOnTrainEnd, RunCLI,
                           RunDirectory, RunDirectoryError, TrainingDiverged, cli_main, read_training_info, run_cli,
                           write_training_info)


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


# ----------------------------------------------------------------------------------------------
# RunCLI with a module of another command

class Regression(LightningModule):
    """Linear regression trained with manual optimization on its own data (no data module, no export).

    Args:
        batches: Batches of 8 samples in the module's dataloader.
        lr: SGD learning rate.
    """

    def __init__(self, batches: int = 12, lr: float = 0.05):
        super().__init__()
        self.automatic_optimization = False
        self.batches, self.lr = batches, lr
        self.layer = torch.nn.Linear(4, 1)

    def train_dataloader(self) -> DataLoader:
        inputs = torch.randn(self.batches * 8, 4, generator=torch.Generator().manual_seed(0))
        targets = inputs @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
        return DataLoader(TensorDataset(inputs, targets), batch_size=8)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        inputs, targets = batch
        loss = F.mse_loss(self.layer(inputs), targets)
        optimizer = self.optimizers()
        optimizer.zero_grad()
        self.manual_backward(loss)
        optimizer.step()
        self.log("train/loss", loss)


class ExportingRegression(Regression):
    """Regression that implements the export protocol of ExportOnTrainEnd."""

    def export_pretrained(self, directory: Path, state_dict: dict[str, torch.Tensor]) -> None:
        save_file({name: tensor.contiguous() for name, tensor in state_dict.items()}, str(directory / "model.safetensors"))

    def training_info(self) -> dict:
        return {"stage": "regression", "global_step": self.global_step}


class RegressionCLI(RunCLI):
    prog = "bwarea regress"
    description = "Fit a linear regression (a RunCLI test command)."
    model_class = Regression
    trainer_defaults = {"max_steps": 12, "enable_progress_bar": False, "enable_model_summary": False, "log_every_n_steps": 1}


class ExportingRegressionCLI(RegressionCLI):
    model_class = ExportingRegression


def regression_args(root: Path, *extra: str) -> list[str]:
    return ["--run.root", str(root), "--run.wandb", "false", "--run.checkpoint_every_n_steps", "5", *extra]


def test_run_cli_trains_a_manual_optimization_module_without_a_data_module(tmp_path, capsys):
    run_dir = run_cli(RegressionCLI, regression_args(tmp_path, "--model.lr", "0.1"))
    assert run_dir.parent == tmp_path and run_dir.name.startswith("regress-")  # default name: prefix + config digest
    resolved = (run_dir / "config.yaml").read_text()
    assert "\n  lr: 0.1\n" in resolved and "\ndata: null\n" in resolved  # no data module: the module's own dataloader
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("*.ckpt")) == ["last.ckpt", "step=000005.ckpt", "step=000010.ckpt"]
    assert not (run_dir / "export").exists()  # the module has no export protocol, so nothing is exported
    rows = read_metrics(run_dir)
    losses = [row for row in rows if "train/loss" in row]
    assert losses[-1]["step"] == 11 and losses[-1]["train/loss"] < losses[0]["train/loss"] / 4
    keys = set().union(*rows)
    assert {"perf/steps_per_sec", "perf/peak_rss_mb", "train/grad_norm", "lr-SGD"} <= keys  # the callbacks ran
    assert "perf/tokens_per_sec" not in keys  # no tokens_per_step(): no token throughput

    # the same command finds the same run: refused without --ckpt_path, resumed with it
    assert cli_main(RegressionCLI, regression_args(tmp_path, "--model.lr", "0.1")) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"bwarea regress: run directory {run_dir} already holds a run") and "\n" not in error
    resumed = run_cli(RegressionCLI, regression_args(tmp_path, "--model.lr", "0.1", "--trainer.max_steps", "14",
                                                      "--run.name", run_dir.name, "--ckpt_path", "last"))
    assert resumed == run_dir
    assert [row["step"] for row in read_metrics(run_dir) if "train/loss" in row][-3:] == [11, 12, 13]
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 14

    assert cli_main(RegressionCLI, ["--help"]) == 0
    help_text = capsys.readouterr().out
    assert "--model.lr" in help_text and "--run.checkpoint_every_n_steps" in help_text and "--ckpt_path" in help_text


def test_run_cli_exports_a_module_with_the_export_protocol(tmp_path):
    run_dir = run_cli(ExportingRegressionCLI, regression_args(tmp_path, "--run.name", "exported"))
    assert read_training_info(run_dir / "export") == {"stage": "regression", "global_step": 12}
    assert set(load_file(str(run_dir / "export" / "model.safetensors"))) == {"layer.weight", "layer.bias"}
    assert json.loads((run_dir / "export" / "training_info.json").read_text())["stage"] == "regression"

    trainer = Trainer(callbacks=[ExportOnTrainEnd(tmp_path / "export")], max_steps=1, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(TypeError, match="ExportOnTrainEnd needs Regression to define export_pretrained"):
        trainer.fit(Regression())


def test_precision_auto_is_resolved_for_the_machine_printed_and_recorded(tmp_path, capsys, monkeypatch):
    import training.runs
    from training.hardware import Hardware

    avx2 = Hardware(cpu_name="AMD EPYC 7B13", cpu_flags=frozenset({"avx2"}), cuda_device=None, cuda_bf16=False, cores=2)
    monkeypatch.setattr(training.runs, "probe", lambda: avx2)
    monkeypatch.setattr(torch, "set_num_threads", lambda count: None)  # the test process keeps its own threads
    run_dir = run_cli(RegressionCLI, regression_args(tmp_path, "--trainer.max_steps", "2", "--run.threads", "1"))
    config = (run_dir / "config.yaml").read_text()
    assert config.startswith("# trainer.precision 32-true: CPU AMD EPYC 7B13 has no native bf16")
    assert "\n  precision: 32-true\n" in config
    printed = capsys.readouterr().out
    assert "bwarea regress: running on CPU AMD EPYC 7B13 with precision 32-true" in printed and "torch threads: 1" in printed
    # the run's name comes from the precision as asked for ("auto"), so the same command finds it on any machine
    amx = Hardware(cpu_name="Xeon", cpu_flags=frozenset({"amx_bf16"}), cuda_device=None, cuda_bf16=False, cores=2)
    monkeypatch.setattr(training.runs, "probe", lambda: amx)
    assert cli_main(RegressionCLI, regression_args(tmp_path, "--trainer.max_steps", "2", "--run.threads", "1")) == 2
    assert "already holds a run" in capsys.readouterr().err


class FailingSetupRegression(Regression):
    """Fails while the Trainer sets it up, before its first training step."""

    def setup(self, stage: str) -> None:
        raise RunDirectoryError("the data this module needs is missing (a test failure before training).")


class FailingSetupCLI(RegressionCLI):
    model_class = FailingSetupRegression


def one_line_error(capsys) -> str:
    captured = capsys.readouterr().err.strip()
    assert "\n" not in captured and "Traceback" not in captured, captured
    return captured


def test_training_command_errors_are_one_line_and_leave_nothing_behind(tmp_path, capsys):
    assert cli_main(RegressionCLI, regression_args(tmp_path, "--run.name", "cut")) == 0
    printed = capsys.readouterr()
    run_dir = tmp_path / "cut"
    assert printed.out.splitlines()[-1] == f"bwarea regress: finished; the run directory is {run_dir}"
    with RunCLI.quiet():   # Lightning's repeats of the runtime line are dropped where they are logged, nothing else
        lightning = logging.getLogger(LIGHTNING_LOGGERS[0])
        kept = [lightning.filter(logging.LogRecord("x", logging.INFO, "", 0, message, None, None)) for message in
                ("\N{ELECTRIC LIGHT BULB} Tip: try installing litlogger", "GPU available: False, used: False",
                 "`Trainer.fit` stopped: `max_steps=12` reached.", "Restoring states from the checkpoint path")]
    assert [bool(k) for k in kept] == [False, False, False, True]

    # a truncated last.ckpt: named, and the previous checkpoint offered
    last = run_dir / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:100])
    args = regression_args(tmp_path, "--run.name", "cut", "--trainer.max_steps", "14", "--ckpt_path", "last")
    assert cli_main(RegressionCLI, args) == 2
    error = one_line_error(capsys)
    assert f"checkpoint {last} cannot be read" in error and "--ckpt_path " in error and "step=000010.ckpt" in error

    # a run that fails before training removes the run directory it created
    assert cli_main(FailingSetupCLI, regression_args(tmp_path, "--run.name", "early")) == 2
    assert "the data this module needs is missing" in one_line_error(capsys)
    assert not (tmp_path / "early").exists()

    # an output folder that cannot be written, an unknown option, a malformed config file
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert cli_main(RegressionCLI, regression_args(blocker / "runs")) == 2
    assert "cannot write to" in one_line_error(capsys)
    assert cli_main(RegressionCLI, regression_args(tmp_path, "--model.learning_rate", "1")) == 2
    assert "--model.learning_rate" in one_line_error(capsys)
    config = tmp_path / "broken.yaml"
    config.write_text("model: {lr: [1\n")
    assert cli_main(RegressionCLI, ["--config", str(config)]) == 2
    assert str(config) in one_line_error(capsys)


def test_a_run_writing_to_a_file_prints_progress_lines_instead_of_a_bar(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("BWAREA_PROGRESS_EVERY", "0.000001")   # a line after every step
    assert cli_main(RegressionCLI, regression_args(tmp_path, "--run.name", "lines")) == 0
    lines = capsys.readouterr().out.splitlines()
    steps = [line for line in lines if line.startswith("bwarea regress: ") and " steps (" in line]
    assert len(steps) >= 10 and steps[-1].startswith("bwarea regress: 12/12 steps (100%), ") and "steps/s" in steps[-1]
    assert "ETA" in steps[0] and not any("\r" in line or "Epoch" in line for line in lines)


def test_validation_metrics_are_printed_when_computed(capsys):
    from types import SimpleNamespace

    from training.runs import ProgressReport

    trainer = SimpleNamespace(sanity_checking=False, global_step=40,
                              callback_metrics={"val/loss": torch.tensor(1.23456), "train/loss": torch.tensor(2.0)})
    ProgressReport("bwarea pretrain", lines=False).on_validation_end(trainer, None)
    assert capsys.readouterr().out == "bwarea pretrain: validation at step 40: val/loss 1.235\n"


def test_the_terminal_bar_counts_the_run_in_steps_after_a_resume():
    from types import SimpleNamespace

    from training.runs import StepProgressBar

    bar = StepProgressBar("bwarea finetune")
    bar._train_progress_bar = bar.init_train_tqdm()
    bar.on_train_epoch_start(SimpleNamespace(max_steps=100, global_step=60))   # resumed at update 60 of 100
    shown = bar.train_progress_bar
    assert (shown.total, shown.n, shown.desc) == (100, 60, "bwarea finetune: ")
    bar.on_train_epoch_start(SimpleNamespace(max_steps=-1, global_step=3))     # unbounded: no "3/--"-like total
    assert shown.total is None and shown.n == 3
    shown.close()
