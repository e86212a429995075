"""Run directories, loggers and callbacks shared by the training commands (pretraining, RL fine-tuning).

One training run writes everything under one directory:

    <root>/<name>/
        config.yaml                       resolved configuration of the latest invocation (no secrets)
        checkpoints/step=000100.ckpt ...  periodic checkpoints (the newest `keep_checkpoints` kept)
        checkpoints/last.ckpt             a copy of the newest; `--ckpt_path last` resumes from the newest checkpoint
        logs/csv/version_<n>/metrics.csv  one CSV per invocation (a resumed run adds a version)
        logs/wandb/                       Weights & Biases files (offline unless WANDB_MODE says otherwise)
        export/                           `save_pretrained` model + tokenizer + training_info.json

Pieces, each usable on its own with a Lightning `Trainer`:
- `RunSettings` (the `run:` section of a config) and `RunDirectory` (layout, refusal to start over
  an existing run by accident, config file);
- `build_loggers`: CSV always, wandb unless disabled;
- `AtomicCheckpointIO`: checkpoints written to a temp file and renamed, read with weights_only=True,
  so a killed run never leaves a truncated checkpoint and loading never unpickles code;
- `ThroughputMonitor`: steps/s, tokens/s, estimated FLOP/s, MFU, tokens seen, peak memory;
- `DivergenceGuard`: stops on a NaN/Inf loss or gradient before the bad update, and never writes a
  checkpoint holding non-finite weights, so the last checkpoint on disk stays good;
- `ExportOnTrainEnd`: writes export/ (atomically, as a whole) when training ends;
- `read_training_info` / `write_training_info`: the marker file that says which stage produced an
  export, so later stages can refuse the wrong input with one clear sentence;
- `read_metrics`: the CSV logs of a run, all invocations merged.

And the command line that wires them together: `RunCLI`, a LightningCLI base class (the `run:` section,
`--ckpt_path last`, run directory, loggers, checkpoints, callbacks, export) that a training command
subclasses with its module (and data module) class; `run_cli(cli_class, args) -> run directory` trains
from Python and `cli_main(cli_class, argv) -> exit code` is a command's `main`. `bwarea pretrain`
(training/pretrain.py) is one such command.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import pickle
import re
import resource
import shutil
import sys
import time
import warnings
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterator, Literal

import torch
from lightning.fabric.utilities.rank_zero import rank_zero_only, rank_zero_warn
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import CSVLogger, Logger
from lightning.pytorch.plugins.io import TorchCheckpointIO

from bwarea.checkpoint import TRAINING_INFO_FILE, CheckpointError, read_training_info, write_training_info  # noqa: F401
from common.errors import OptionError, UserError, option_error_message, report_errors
from common.files import atomic_write, atomic_write_text, check_writable, replace_directory
from common.progress import every_s, progress_line
from training.hardware import AUTO, configure_threads, probe, resolve_precision, runtime_line, uses_gpu


class RunDirectoryError(UserError, ValueError):
    """The run directory cannot be used as asked (e.g. it already holds another run)."""


class TrainingDiverged(UserError, RuntimeError):
    """The loss, a gradient or the weights became NaN/Inf (exit status 1: the run failed, the input was readable)."""

    exit_code = 1


@dataclass
class RunSettings:
    """Where and how a training run records itself.

    Args:
        name: Run directory name under `root`. Default: "<stage or command>-<hash of the configuration>", so
            re-running the same command (with --ckpt_path last) finds the same run.
        root: Parent directory of the run directories.
        overwrite: Start afresh in a run directory that already holds a run, deleting its checkpoints, logs and export.
        checkpoint_every_n_steps: Save a checkpoint every this many training steps (and keep last.ckpt current): optimizer
            steps when pretraining, updates (rollout batches) when fine-tuning.
        keep_checkpoints: Periodic checkpoints to keep, newest first; -1 keeps all. last.ckpt is always kept.
        wandb: Also log to Weights & Biases: offline by default, online when WANDB_MODE=online; WANDB_MODE=disabled
            turns it off. Credentials come only from wandb's own environment variables or login.
        wandb_project: Weights & Biases project name.
        peak_flops_per_device: Peak FLOP/s of one device, to report model FLOPs utilisation (e.g. 989e12 for an
            H100 in bf16). Unset: FLOP/s are logged but no MFU.
        threads: torch CPU threads per process. Default: the cores this process may use (affinity mask, container
            quota) divided by the training processes on this machine.
    """

    name: str | None = None
    root: str = "runs"
    overwrite: bool = False
    checkpoint_every_n_steps: int = 100
    keep_checkpoints: int = 3
    wandb: bool = True
    wandb_project: str = "bwarea"
    peak_flops_per_device: float | None = None
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.threads is not None and self.threads < 1:
            raise RunDirectoryError(f"run.threads must be at least 1 (or null for all cores), got {self.threads}.")
        if self.checkpoint_every_n_steps < 1:
            raise RunDirectoryError(f"run.checkpoint_every_n_steps must be at least 1, got {self.checkpoint_every_n_steps}.")
        if self.keep_checkpoints == 0 or self.keep_checkpoints < -1:
            raise RunDirectoryError(f"run.keep_checkpoints must be -1 (keep all) or at least 1, got {self.keep_checkpoints}.")


class RunDirectory:
    """The layout of one run directory (see the module docstring)."""

    def __init__(self, path: str | os.PathLike):
        self.created = False   # whether this invocation made the directory (open): removed if the run fails before training
        self.path = Path(path)

    @property
    def config_file(self) -> Path:
        return self.path / "config.yaml"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    @property
    def export(self) -> Path:
        return self.path / "export"

    def latest_checkpoint(self) -> Path | None:
        """The most recently written checkpoint (checkpoints are written whole, so any that exists is complete).

        Periodic checkpoints and last.ckpt hold the same step when both are written; a run killed between
        the two writes still resumes from the newer one.
        """
        candidates = list(self.checkpoints.glob("*.ckpt"))
        return max(candidates, key=lambda path: path.stat().st_mtime_ns) if candidates else None

    def holds_a_run(self) -> bool:
        return any(self.checkpoints.glob("*.ckpt")) or self.export.exists()

    @classmethod
    def open(cls, root: str | os.PathLike, name: str, *, resuming: bool, overwrite: bool,
             is_main_process: bool = True) -> "RunDirectory":
        """The run directory root/name, created if needed.

        A directory that already holds checkpoints or an export is only reused when resuming (or, with
        `overwrite`, emptied first), so a new run never mixes its checkpoints with an old one's.
        Only the main process checks and changes the disk.
        """
        run = cls(Path(root).expanduser() / name)
        if not is_main_process:
            return run
        check_writable(run.path)
        run.created = not run.path.exists()
        if run.holds_a_run() and not resuming:
            if not overwrite:
                raise RunDirectoryError(
                    f"run directory {run.path} already holds a run; resume it with --ckpt_path last, choose another "
                    "--run.name, or pass --run.overwrite true to start it afresh."
                )
            for part in (run.checkpoints, run.logs, run.export):
                shutil.rmtree(part, ignore_errors=True)
        run.path.mkdir(parents=True, exist_ok=True)
        return run

    def write_config(self, text: str) -> None:
        atomic_write_text(self.config_file, text)


def build_loggers(run: RunDirectory, settings: RunSettings, run_name: str) -> list[Logger]:
    """CSV logger (always) and, unless turned off, a wandb logger writing under run/logs/wandb."""
    loggers: list[Logger] = [CSVLogger(save_dir=str(run.logs), name="csv")]
    mode = os.environ.get("WANDB_MODE", "offline")
    if settings.wandb and mode != "disabled":
        from lightning.pytorch.loggers import WandbLogger

        # a stable id per run directory, so a resumed run continues the same wandb run
        run_id = f"{run_name}-{hashlib.sha256(str(run.path.resolve()).encode()).hexdigest()[:8]}"
        loggers.append(WandbLogger(name=run_name, project=settings.wandb_project, save_dir=str(run.logs),
                                   offline=mode == "offline", id=run_id, resume="allow"))
    return loggers


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save into a temp file in the same directory, then rename; load with weights_only=True."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        atomic_write(Path(path), lambda temp: torch.save(checkpoint, temp))

    def load_checkpoint(self, path: str | os.PathLike, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"checkpoint {path} does not exist; pass a .ckpt file of this run or 'last'.")
        try:
            return torch.load(path, map_location=map_location or "cpu", weights_only=True)
        except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as error:
            others = sorted((other for other in path.parent.glob("*.ckpt")
                             if other.resolve() != path.resolve() and other.stat().st_size > 0),
                            key=lambda other: other.stat().st_mtime)
            offer = (f"resume from the previous one with --ckpt_path {others[-1]}" if others
                     else "no other checkpoint of this run exists; start afresh without --ckpt_path")
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise CheckpointError(f"checkpoint {path} cannot be read ({reason}): it is truncated or damaged; "
                                  f"{offer}.") from None


class ProgressReport(Callback):
    """What a run shows besides Lightning's bar: each validation's metrics as one line when they are computed, and,
    when the output is not a terminal (`lines`: Lightning's bar is then off), one progress line every
    BWAREA_PROGRESS_EVERY seconds (common/progress.py): step/total, steps/s, ETA and the bar's metrics."""

    def __init__(self, prog: str, lines: bool) -> None:
        self.prog, self.lines = prog, lines
        self.every = every_s()
        self.started = self.last = 0.0
        self.first_step = 0

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.started = self.last = time.monotonic()
        self.first_step = trainer.global_step

    @rank_zero_only
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        now = time.monotonic()
        if not self.lines or now - self.last < self.every:
            return
        self.last = now
        total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        rate = (trainer.global_step - self.first_step) / max(now - self.started, 1e-9)
        shown = ", ".join(f"{key} {_number(value)}" for key, value in list(trainer.progress_bar_metrics.items())[:4])
        print(progress_line(self.prog, trainer.global_step, total, "step", rate, shown), flush=True)

    @rank_zero_only
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = {key: value for key, value in trainer.callback_metrics.items() if key.startswith("val")}
        if metrics:
            print(f"{self.prog}: validation at step {trainer.global_step}: "
                  + ", ".join(f"{key} {_number(value)}" for key, value in sorted(metrics.items())), flush=True)


class StepProgressBar(TQDMProgressBar):
    """Lightning's terminal bar counted in optimizer steps (updates, for fine-tuning) of the whole run, named after
    the command: "bwarea finetune: 60/100" — not per epoch ("Epoch 0/-2", "6/--" for runs bounded by max_steps, or
    "60/39" after a resume)."""

    def __init__(self, prog: str) -> None:
        super().__init__()
        self.prog = prog

    def on_train_epoch_start(self, trainer: Trainer, *_: Any) -> None:
        if self._leave:
            self.train_progress_bar = self.init_train_tqdm()
        bar = self.train_progress_bar
        bar.reset()
        bar.total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        bar.initial, bar.n = 0, trainer.global_step
        bar.set_description(self.prog)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *_: Any) -> None:
        bar = self.train_progress_bar
        if bar is not None and not bar.disable:
            bar.n = trainer.global_step
            bar.set_postfix(self.get_metrics(trainer, pl_module))


def _number(value: Any) -> str:
    return f"{float(value):.4g}"


def peak_memory_mb() -> float:
    """Peak resident memory of this process in MiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class ThroughputMonitor(Callback):
    """Logs training throughput at every training batch, averaged over the last `window` batches.

    - perf/steps_per_sec: training batches per second (data loading and the optimizer included, validation
      excluded): optimizer steps for automatic optimization; for a manually optimized module (fine-tuning)
      one batch is one update, whatever number of optimizer steps it takes;
    - perf/tokens_per_sec: input tokens of all processes per second, when the module has `tokens_per_step()`
      (global batch tokens per optimizer step);
    - perf/flops_per_sec: tokens/s x the module's `flops_per_token()` (6 N + attention, see pretrain.py), when it has one;
    - perf/mfu: flops_per_sec / (peak_flops_per_device x processes), when the peak is given;
    - perf/tokens_seen: input tokens consumed since the start of the run (resumes included);
    - perf/peak_rss_mb (and perf/peak_gpu_mem_mb on GPU): peak memory of this process.
    """

    def __init__(self, peak_flops_per_device: float | None = None, window: int = 20):
        self.peak_flops_per_device = peak_flops_per_device
        self.window: deque[float] = deque(maxlen=window)
        self._last_end: float | None = None

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._last_end = None

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if self._last_end is None:
            self._last_end = time.perf_counter()

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._last_end = None  # the next training batch restarts the clock: validation time is not training time

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if (batch_idx + 1) % trainer.accumulate_grad_batches:
            return
        now = time.perf_counter()
        self.window.append(now - (self._last_end or now))
        self._last_end = now
        seconds = sum(self.window)
        metrics = {"perf/peak_rss_mb": peak_memory_mb()}
        if torch.cuda.is_available():
            metrics["perf/peak_gpu_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
        tokens_per_step = pl_module.tokens_per_step() if hasattr(pl_module, "tokens_per_step") else None
        if tokens_per_step is not None:
            metrics["perf/tokens_seen"] = float(trainer.global_step * tokens_per_step)
        if seconds > 0:
            metrics["perf/steps_per_sec"] = len(self.window) / seconds
            if tokens_per_step is not None:
                rate = metrics["perf/tokens_per_sec"] = metrics["perf/steps_per_sec"] * tokens_per_step
                if hasattr(pl_module, "flops_per_token"):
                    metrics["perf/flops_per_sec"] = rate * pl_module.flops_per_token()
                    if self.peak_flops_per_device:
                        metrics["perf/mfu"] = metrics["perf/flops_per_sec"] / (self.peak_flops_per_device * trainer.world_size)
        pl_module.log_dict(metrics, on_step=True, on_epoch=False, rank_zero_only=True)
        if "perf/tokens_per_sec" in metrics:
            pl_module.log("tok/s", metrics["perf/tokens_per_sec"], prog_bar=True, logger=False, rank_zero_only=True)


def _last_checkpoint(trainer: Trainer) -> str:
    path = getattr(trainer.checkpoint_callback, "last_model_path", "") or ""
    return f"the last good checkpoint is {path}" if path else "no checkpoint had been saved yet"


def _tensors_finite(state: dict[str, Any]) -> bool:
    for tensor in state.values():
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point():
            local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
            if not bool(torch.isfinite(local).all()):
                return False
    return True


class DivergenceGuard(Callback):
    """Stops training with `TrainingDiverged` when the loss or the gradients are NaN/Inf.

    The check runs after backward and before the optimizer step, so the weights in memory never take
    the bad update; a checkpoint whose weights are not finite is never written. The last checkpoint on
    disk is therefore always a good one to resume from. The decision is shared by all processes (any
    rank seeing a bad value stops them all). Logs train/grad_norm (this process's gradients, before clipping).
    The module may expose `last_loss` (a detached tensor) for the message.
    """

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: torch.optim.Optimizer) -> None:
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if not grads:  # a step that moves nothing (fine-tuning counts its updates this way): nothing to check
            return
        norm = torch.nn.utils.get_total_norm(grads).float()
        loss = getattr(pl_module, "last_loss", None)
        pl_module.log("train/grad_norm", norm, on_step=True, on_epoch=False)
        bad = not bool(torch.isfinite(norm)) or (loss is not None and not bool(torch.isfinite(loss)))
        if trainer.strategy.reduce_boolean_decision(bad, all=False):
            loss_text = f"loss {float(loss):.4g}, " if loss is not None else ""
            raise TrainingDiverged(
                f"training diverged at step {trainer.global_step}: {loss_text}gradient norm {float(norm):.4g} (NaN/Inf); "
                f"stopped before applying the update and {_last_checkpoint(trainer)} — resume from it with "
                "--ckpt_path last after lowering model.optimizer.lr or setting trainer.gradient_clip_val."
            )

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        bad = not _tensors_finite(checkpoint.get("state_dict", {}))
        if trainer.strategy.reduce_boolean_decision(bad, all=False):
            raise TrainingDiverged(
                f"training diverged at step {trainer.global_step}: the weights hold NaN/Inf values, so no checkpoint "
                f"was written and {_last_checkpoint(trainer)} — resume from it with --ckpt_path last after lowering "
                "model.optimizer.lr or setting trainer.gradient_clip_val."
            )


EXPORT_PROTOCOL = ("export_pretrained", "training_info")


def can_export(module: LightningModule) -> bool:
    """Whether `module` implements the export protocol of ExportOnTrainEnd."""
    return all(callable(getattr(module, name, None)) for name in EXPORT_PROTOCOL)


class ExportOnTrainEnd(Callback):
    """When training ends, writes `directory` as a whole: the module's `export_pretrained(staging, state_dict)`
    (weights, config, tokenizer: a `save_pretrained` directory) and training_info.json from its
    `training_info()` (a JSON-able dict holding at least "stage", which later commands check).

    The full state dict is gathered on every process (needed under FSDP); only the main process writes.
    A run that stops with an error (divergence, interruption) writes no export.
    """

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if not can_export(pl_module):
            raise TypeError(f"ExportOnTrainEnd needs {type(pl_module).__name__} to define "
                            f"{' and '.join(f'{name}()' for name in EXPORT_PROTOCOL)}; implement them or drop the callback.")

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        state = trainer.strategy.lightning_module_state_dict()
        if trainer.is_global_zero:
            def write(staging: Path) -> None:
                pl_module.export_pretrained(staging, state)
                write_training_info(staging, pl_module.training_info())
            replace_directory(self.directory, write)
        trainer.strategy.barrier("export")


# ----------------------------------------------------------------------------------------------
# The command line of a training command

PrecisionSetting = Literal["auto", "64-true", "32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true",
                           "transformer-engine", "transformer-engine-float16"]


class AutoPrecisionTrainer(Trainer):
    """Lightning's Trainer whose `precision` may also be "auto", the default of every command: bf16-mixed where the
    hardware computes bf16 natively (GPUs that support it, CPUs with AMX / AVX512-BF16), else 32-true
    (training/hardware.py). Any explicit precision is passed on unchanged."""

    def __init__(self, *, precision: PrecisionSetting | int | None = AUTO, **kwargs: Any):
        super().__init__(precision=resolve_precision(precision, str(kwargs.get("accelerator", AUTO))).value, **kwargs)


def _processes_per_machine(trainer: dict[str, Any]) -> int:
    devices = trainer.get("devices", AUTO)
    if isinstance(devices, (list, tuple)):
        return len(devices)
    return int(devices) if str(devices).isdigit() and int(devices) > 0 else 1


# Lightning's info lines that say again what the runtime line says ("GPU available: False", "Using bfloat16
# Automatic Mixed Precision"), advertise ("Tip: ... try installing litlogger") or repeat the obvious at the end
# ("`Trainer.fit` stopped: `max_steps=12` reached"); hidden by RunCLI.quiet where they are logged, nothing else
LIGHTNING_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                     "lightning.fabric.utilities.seed")
LIGHTNING_REPEATS = re.compile(r"^(\N{ELECTRIC LIGHT BULB} Tip:|(GPU|TPU|HPU) available:|Using .*(Automatic Mixed "
                               r"Precision|precision)|`Trainer\.fit` stopped:|Seed set to )")


def _drop_lightning_repeats(record: logging.LogRecord) -> bool:
    return not LIGHTNING_REPEATS.match(record.getMessage())


class RunCLI(LightningCLI):
    """LightningCLI for a training command whose every invocation trains (or resumes) one run directory.

    A command subclasses it and sets class attributes (all optional except `model_class` and `prog`):

        prog                 command name for --help and error messages, e.g. "bwarea finetune"
        description          first line of --help
        model_class          the LightningModule class (a class, not a factory function)
        subclass_mode_model  True: the config picks any subclass with `model.class_path` (as `bwarea pretrain`
                             does for its stages); False: `model:` holds model_class's own arguments
        datamodule_class     a LightningDataModule class, or None: the module brings its own train_dataloader()
                             (LightningCLI then keeps `data:` as an optional section, null by default)
        subclass_mode_data   like subclass_mode_model, for the data module
        trainer_defaults     Trainer defaults of this command (still overridable under `trainer:`); note that
                             manual optimization refuses gradient_clip_val
        seed_everything_default  seed when the config gives none
            ignored_warnings     regular expressions of warnings hidden while parsing and training (noise that
                             this command's design makes harmless)

    and may override these hooks (calling super() where they extend):

        add_arguments_to_parser(parser)  more top-level options; super() adds `run:` and `--ckpt_path`
        before_instantiate_classes()     check or complete self.config before anything is built; with
                                         self.parse_only nothing will be built (config tests)
        run_name_prefix()                default run name = "<prefix>-<digest of the config>"; default prefix:
                                         the last word of `prog`
        run_callbacks(settings, run)     the callbacks every run gets, see below

    What every run gets on top of LightningCLI:
    - `trainer.precision: auto` by default, resolved for the machine before anything is built (bf16-mixed where
      bf16 is native, else 32-true: training/hardware.py), torch threads set (`run.threads`), and one printed
      line saying what runs where;
    - the `run:` section (RunSettings: name, root, overwrite, checkpoint cadence, wandb, peak FLOP/s) and
      `--ckpt_path` (a checkpoint file, or 'last' = the newest checkpoint of the run directory);
    - the run directory root/name opened (RunDirectory.open: an existing run is only reused when resuming or
      with run.overwrite) and config.yaml = the resolved configuration, written by the main process;
      the Trainer's default_root_dir is the run directory;
    - loggers: CSV always, wandb unless disabled (build_loggers); hyperparameters = the resolved configuration;
    - AtomicCheckpointIO (checkpoints written whole, loaded with weights_only=True);
    - callbacks (after any under trainer.callbacks): ModelCheckpoint every run.checkpoint_every_n_steps
      optimizer steps into checkpoints/ (+ last.ckpt, the newest run.keep_checkpoints kept),
      ThroughputMonitor, DivergenceGuard, LearningRateMonitor, and ExportOnTrainEnd(run/export) when the
      module implements the export protocol.

    Module protocol (every method optional; a module with none of them still trains):
    - export_pretrained(directory: Path, state_dict: dict[str, Tensor]) -> None and training_info() -> dict
      (with a "stage" entry): both present -> run/export is written when training ends (ExportOnTrainEnd);
      otherwise the command writes its own outputs, if any (trainer.default_root_dir is the run directory);
    - tokens_per_step() -> int and flops_per_token() -> float: tokens/s, FLOP/s and MFU (ThroughputMonitor);
      without them only steps/s and memory are logged;
    - last_loss (a detached tensor): quoted by DivergenceGuard when it stops a diverging run.
    DivergenceGuard works under manual optimization too (it runs inside optimizer.step()).

    Construct with `Subclass(args, parse_only=False, exit_on_error=True)`; train with `run_cli(Subclass, args)`
    (returns the run directory) and give the command its `main` with `cli_main(Subclass, argv)`.
    """

    prog: ClassVar[str] = "bwarea"
    description: ClassVar[str] = ""
    model_class: ClassVar[type[LightningModule] | None] = None
    subclass_mode_model: ClassVar[bool] = False
    datamodule_class: ClassVar[type[LightningDataModule] | None] = None
    subclass_mode_data: ClassVar[bool] = False
    trainer_defaults: ClassVar[dict[str, Any]] = {}
    seed_everything_default: ClassVar[int | bool] = 0
    ignored_warnings: ClassVar[tuple[str, ...]] = (
        # `args` given from Python (run_cli, tests) while sys.argv holds the caller's own arguments
        "LightningCLI's args parameter is intended",
        # RunDirectory.open already refuses to mix a new run into an old one's directory; resuming reuses it on purpose
        "Checkpoint directory .* exists and is not empty",
        # under manual optimization a checkpoint holds the state after the step together with the incremented
        # global_step, which is exactly what an exact resume needs
        "Using ModelCheckpoint with manual optimization and every_n_train_steps",
        # torch deprecates an API that Lightning 2.6's pytree helper still calls on every fit; not ours to change
        r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    )

    def __init__(self, args: list[str] | dict[str, Any] | None = None, parse_only: bool = False, exit_on_error: bool = True):
        if self.model_class is None:
            raise TypeError(f"{type(self).__name__} must set the class attribute model_class.")
        self.parse_only = parse_only
        self.run_dir: RunDirectory | None = None
        with self.quiet():
            super().__init__(
                model_class=self.model_class, subclass_mode_model=self.subclass_mode_model,
                datamodule_class=self.datamodule_class, subclass_mode_data=self.subclass_mode_data,
                save_config_callback=None, trainer_class=AutoPrecisionTrainer,
                trainer_defaults={"precision": AUTO, "enable_model_summary": False, **self.trainer_defaults},
                seed_everything_default=self.seed_everything_default,
                parser_kwargs={"prog": self.prog, "description": self.description, "default_env": False,
                               "exit_on_error": exit_on_error},
                args=args, run=False, auto_configure_optimizers=False, load_from_checkpoint_support=False,
            )

    @classmethod
    @contextmanager
    def quiet(cls) -> Iterator[None]:
        """Hide `ignored_warnings` (pytest and other callers reset module-level filters, so they are set here) and
        Lightning's start-up lines that the command's own runtime line replaces (LIGHTNING_REPEATS)."""
        loggers = [logging.getLogger(name) for name in LIGHTNING_LOGGERS]
        with warnings.catch_warnings():
            for message in cls.ignored_warnings:
                warnings.filterwarnings("ignore", message=message)
            for logger in loggers:
                logger.addFilter(_drop_lightning_repeats)
            try:
                yield
            finally:
                for logger in loggers:
                    logger.removeFilter(_drop_lightning_repeats)

    def setup_parser(self, add_subcommands: bool, main_kwargs: dict[str, Any], subparser_kwargs: dict[str, Any]) -> None:
        super().setup_parser(add_subcommands, main_kwargs, subparser_kwargs)
        # --help: the command's own options (model, data, run) first, Lightning's many trainer options behind them
        groups = self.parser._action_groups
        trainer = [group for group in groups if any(action.dest.startswith("trainer") for action in group._group_actions)]
        self.parser._action_groups = [group for group in groups if group not in trainer] + trainer

    def add_arguments_to_parser(self, parser: Any) -> None:
        parser.add_class_arguments(RunSettings, "run", fail_untyped=True)
        parser.add_argument("--ckpt_path", type=str | None, default=None,
                            help="Resume: a checkpoint file of this run, or 'last' for the newest one in run/checkpoints.")

    def instantiate_classes(self) -> None:
        if not self.parse_only:
            self.resolve_runtime()
            super().instantiate_classes()

    def resolve_runtime(self) -> None:
        """Precision "auto" resolved for this machine (config.yaml records the value and the reason), torch threads
        set, and one line saying what runs where."""
        trainer = self.config.trainer
        hardware = probe()
        self.requested_precision = trainer.precision
        accelerator = str(trainer.get("accelerator") or AUTO)
        self.precision = resolve_precision(trainer.precision, accelerator, hardware)
        trainer.precision = self.precision.value
        processes = _processes_per_machine(trainer)
        if self.config.run.threads is not None and processes > 1:
            os.environ["OMP_NUM_THREADS"] = str(self.config.run.threads)  # Lightning's DDP set-up keeps it
        threads = configure_threads(self.config.run.threads, processes, hardware)
        device = f"GPU {hardware.cuda_device}" if uses_gpu(accelerator, hardware) else f"CPU {hardware.cpu_name}"
        if rank_zero_only.rank == 0:
            print(f"{self.prog}: {runtime_line(device, self.precision, threads)}", flush=True)

    def run_name_prefix(self) -> str:
        return self.prog.split()[-1]

    def default_run_name(self) -> str:
        """<prefix>-<digest of the configuration without the run section>: the same command finds the same run."""
        config = self.config.clone().as_dict()
        for key in ("run", "ckpt_path", "config"):
            config.pop(key, None)
        # the precision as asked for, so that `auto` names the same run whatever it resolved to
        config["trainer"]["precision"] = getattr(self, "requested_precision", config["trainer"]["precision"])
        digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:8]
        return f"{self.run_name_prefix()}-{digest}"

    def run_callbacks(self, settings: RunSettings, run: RunDirectory) -> list[Callback]:
        """The callbacks every run of this command gets (see the class docstring)."""
        keep = settings.keep_checkpoints
        callbacks: list[Callback] = [
            ModelCheckpoint(dirpath=run.checkpoints, filename="step={step:06d}", auto_insert_metric_name=False,
                            save_last=True, every_n_train_steps=settings.checkpoint_every_n_steps, save_top_k=keep,
                            monitor="step" if keep > 0 else None, mode="max", enable_version_counter=False),
            ThroughputMonitor(settings.peak_flops_per_device),
            DivergenceGuard(),
            LearningRateMonitor(logging_interval="step"),
            ProgressReport(self.prog, lines=not sys.stdout.isatty()),
        ]
        if can_export(self.model):
            callbacks.append(ExportOnTrainEnd(run.export))
        return callbacks

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        settings: RunSettings = self.config_init.run
        name = settings.name or self.default_run_name()
        main_process = rank_zero_only.rank == 0
        run = RunDirectory.open(settings.root, name, resuming=self.config.ckpt_path is not None,
                                overwrite=settings.overwrite, is_main_process=main_process)
        if main_process:
            choice = getattr(self, "precision", None)
            header = "" if choice is None else f"# trainer.precision {choice.value}: {choice.reason}\n"
            run.write_config(header + self.parser.dump(self.config, skip_unset=False))
        self.run_dir = run
        trainer_config = self._get(self.config_init, "trainer", default={})
        callbacks = [*_as_list(trainer_config.get("callbacks")), *self.run_callbacks(settings, run)]
        plugins = [*_as_list(trainer_config.get("plugins")), AtomicCheckpointIO()]
        if not sys.stdout.isatty():   # a redrawn bar is noise in a file: ProgressReport prints lines instead
            kwargs["enable_progress_bar"] = False
        elif trainer_config.get("enable_progress_bar") is not False:
            callbacks.append(StepProgressBar(self.prog))
        trainer = super().instantiate_trainer(callbacks=callbacks, plugins=plugins, logger=build_loggers(run, settings, name),
                                              default_root_dir=str(run.path), **kwargs)
        for logger in trainer.loggers:
            logger.log_hyperparams(self.config.clone().as_dict())
        return trainer

    def checkpoint_to_resume(self) -> str | None:
        """--ckpt_path, with 'last' meaning the newest checkpoint of the run directory (None: start afresh)."""
        path = self.config.ckpt_path
        if path != "last":
            return path
        latest = self.run_dir.latest_checkpoint()
        if latest is None:
            rank_zero_warn(f"--ckpt_path last: {self.run_dir.checkpoints} holds no checkpoint yet; starting from scratch.")
            return None
        return str(latest)


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def run_cli(cli_class: type[RunCLI], args: list[str] | dict[str, Any] | None = None, exit_on_error: bool = False) -> Path:
    """Parse `args` with `cli_class`, train (fit, resuming per --ckpt_path) and return the run directory.

    `args` are command-line style (["--config", "x.yaml", "--trainer.max_steps", "10"]) or a nested dict of the
    same options; None reads sys.argv. Errors raise instead of exiting (unless exit_on_error, which only
    concerns option errors).
    """
    cli = cli_class(args, exit_on_error=exit_on_error)
    try:
        with cli_class.quiet():
            cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=cli.checkpoint_to_resume())
    except BaseException:
        run = cli.run_dir
        if run is not None and run.created and cli.trainer.global_step == 0 and not run.holds_a_run():
            shutil.rmtree(run.path, ignore_errors=True)   # failed before training: nothing worth keeping
        raise
    return cli.run_dir.path


def cli_main(cli_class: type[RunCLI], argv: list[str] | None = None) -> int:
    """A training command's `main(argv) -> int`: run_cli under the one error policy of every command
    (common.errors.report_errors): an option error or a UserError is one line and exit status 2 (a diverged run: 1),
    --help exits 0; a finished run ends with one line naming its export (or run directory)."""

    args = list(sys.argv[1:] if argv is None else argv)

    def body() -> None:
        try:
            run_dir = run_cli(cli_class, args, exit_on_error=False)
        except argparse.ArgumentError as error:
            raise OptionError(option_error_message(error, tuple(args)) + " (--help lists all options)") from None
        if rank_zero_only.rank == 0:
            export = run_dir / "export"
            where = f"the export is {export}" if export.is_dir() else f"the run directory is {run_dir}"
            print(f"{cli_class.prog}: finished; {where}", flush=True)

    return report_errors(cli_class.prog, body)
