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
- `ThroughputMonitor`: tokens/s, estimated FLOP/s, MFU, tokens seen, peak memory;
- `DivergenceGuard`: stops on a NaN/Inf loss or gradient before the bad update, and never writes a
  checkpoint holding non-finite weights, so the last checkpoint on disk stays good;
- `ExportOnTrainEnd`: writes export/ (atomically, as a whole) when training ends;
- `read_training_info` / `write_training_info`: the marker file that says which stage produced an
  export, so later stages can refuse the wrong input with one clear sentence;
- `read_metrics`: the CSV logs of a run, all invocations merged.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import resource
import shutil
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import CSVLogger, Logger
from lightning.pytorch.plugins.io import TorchCheckpointIO

from bwarea.checkpoint import CheckpointError, atomic_write, atomic_write_text

TRAINING_INFO_FILE = "training_info.json"


class UserError(Exception):
    """A problem with the user's input or with the run; commands print its message alone, without a traceback."""


class RunDirectoryError(UserError, ValueError):
    """The run directory cannot be used as asked (e.g. it already holds another run)."""


class TrainingDiverged(UserError, RuntimeError):
    """The loss, a gradient or the weights became NaN/Inf."""


@dataclass
class RunSettings:
    """Where and how a training run records itself.

    Args:
        name: Run directory name under `root`. Default: "<stage>-<hash of the configuration>", so re-running
            the same command (with --ckpt_path last) finds the same run.
        root: Parent directory of the run directories.
        overwrite: Start afresh in a run directory that already holds a run, deleting its checkpoints, logs and export.
        checkpoint_every_n_steps: Save a checkpoint every this many optimizer steps (and keep last.ckpt current).
        keep_checkpoints: Periodic checkpoints to keep, newest first; -1 keeps all. last.ckpt is always kept.
        wandb: Also log to Weights & Biases: offline by default, online when WANDB_MODE=online; WANDB_MODE=disabled
            turns it off. Credentials come only from wandb's own environment variables or login.
        wandb_project: Weights & Biases project name.
        peak_flops_per_device: Peak FLOP/s of one device, to report model FLOPs utilisation (e.g. 989e12 for an
            H100 in bf16). Unset: FLOP/s are logged but no MFU.
    """

    name: str | None = None
    root: str = "runs"
    overwrite: bool = False
    checkpoint_every_n_steps: int = 100
    keep_checkpoints: int = 3
    wandb: bool = True
    wandb_project: str = "bwarea"
    peak_flops_per_device: float | None = None

    def __post_init__(self) -> None:
        if self.checkpoint_every_n_steps < 1:
            raise RunDirectoryError(f"run.checkpoint_every_n_steps must be at least 1, got {self.checkpoint_every_n_steps}.")
        if self.keep_checkpoints == 0 or self.keep_checkpoints < -1:
            raise RunDirectoryError(f"run.keep_checkpoints must be -1 (keep all) or at least 1, got {self.keep_checkpoints}.")


class RunDirectory:
    """The layout of one run directory (see the module docstring)."""

    def __init__(self, path: str | os.PathLike):
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
        if not Path(path).is_file():
            raise CheckpointError(f"checkpoint {path} does not exist; pass a .ckpt file of this run or 'last'.")
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)


def peak_memory_mb() -> float:
    """Peak resident memory of this process in MiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class ThroughputMonitor(Callback):
    """Logs training throughput at every step, averaged over the last `window` optimizer steps.

    - perf/tokens_per_sec: input tokens of all processes per second of training (data loading and the
      optimizer included, validation excluded);
    - perf/flops_per_sec: tokens/s x the module's `flops_per_token()` (6 N + attention, see pretrain.py);
    - perf/mfu: flops_per_sec / (peak_flops_per_device x processes), when the peak is given;
    - perf/tokens_seen: input tokens consumed since the start of the run (resumes included);
    - perf/peak_rss_mb (and perf/peak_gpu_mem_mb on GPU): peak memory of this process.

    The module must provide `flops_per_token() -> float` and `tokens_per_step() -> int` (global batch tokens).
    """

    def __init__(self, peak_flops_per_device: float | None = None, window: int = 20):
        self.peak_flops_per_device = peak_flops_per_device
        self.window: deque[tuple[int, float]] = deque(maxlen=window)
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
        self.window.append((pl_module.tokens_per_step(), now - (self._last_end or now)))
        self._last_end = now
        tokens = sum(count for count, _ in self.window)
        seconds = sum(duration for _, duration in self.window)
        metrics = {"perf/tokens_seen": float(trainer.global_step * pl_module.tokens_per_step()),
                   "perf/peak_rss_mb": peak_memory_mb()}
        if torch.cuda.is_available():
            metrics["perf/peak_gpu_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
        if seconds > 0:
            rate = tokens / seconds
            metrics["perf/tokens_per_sec"] = rate
            metrics["perf/flops_per_sec"] = rate * pl_module.flops_per_token()
            if self.peak_flops_per_device:
                metrics["perf/mfu"] = metrics["perf/flops_per_sec"] / (self.peak_flops_per_device * trainer.world_size)
        pl_module.log_dict(metrics, on_step=True, on_epoch=False, rank_zero_only=True)
        pl_module.log("tok/s", metrics.get("perf/tokens_per_sec", 0.0), prog_bar=True, logger=False, rank_zero_only=True)


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
        norm = torch.nn.utils.get_total_norm(grads).float() if grads else torch.zeros(())
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


def write_training_info(directory: str | os.PathLike, info: dict[str, Any]) -> None:
    atomic_write_text(Path(directory) / TRAINING_INFO_FILE, json.dumps(info, indent=2, sort_keys=True) + "\n")


def read_training_info(directory: str | os.PathLike, purpose: str = "this run") -> dict[str, Any]:
    """The training_info.json of an export directory; CheckpointError naming `purpose` if it is not one."""
    directory = Path(directory).expanduser()
    path = directory / TRAINING_INFO_FILE
    if not directory.is_dir():
        raise CheckpointError(f"{directory} does not exist; {purpose} needs the export/ directory of a finished bwarea training run.")
    if not path.is_file():
        raise CheckpointError(f"{directory} has no {TRAINING_INFO_FILE}, so it is not the export/ directory of a bwarea "
                              f"training run; {purpose} needs one (runs/<name>/export).")
    try:
        info = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path} is not valid JSON ({error}); re-export the run.") from None
    if not isinstance(info, dict) or "stage" not in info:
        raise CheckpointError(f"{path} does not name the stage that produced the export; re-export the run.")
    return info


def replace_directory(target: Path, write: Callable[[Path], None]) -> None:
    """Call write(staging) on an empty sibling directory, then swap it in for `target` by renames."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    retired = target.parent / f".{target.name}.old-{os.getpid()}"
    try:
        write(staging)
        if target.exists():
            os.replace(target, retired)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(retired, ignore_errors=True)


class ExportOnTrainEnd(Callback):
    """When training ends, writes `directory` as a whole: the module's `export_pretrained(staging, state_dict)`
    (weights, config, tokenizer) and training_info.json from its `training_info()`.

    The full state dict is gathered on every process (needed under FSDP); only the main process writes.
    """

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        state = trainer.strategy.lightning_module_state_dict()
        if trainer.is_global_zero:
            def write(staging: Path) -> None:
                pl_module.export_pretrained(staging, state)
                write_training_info(staging, pl_module.training_info())
            replace_directory(self.directory, write)
        trainer.strategy.barrier("export")


def read_metrics(run_path: str | os.PathLike) -> list[dict[str, float]]:
    """All CSV rows logged by a run, oldest invocation first, numbers as floats (empty cells dropped).

    When a run was resumed, rows of an earlier invocation at or after the step the next one resumed
    from are dropped (that invocation was cut off and its later steps were redone).
    """
    versions = sorted((Path(run_path) / "logs" / "csv").glob("version_*/metrics.csv"),
                      key=lambda path: int(path.parent.name.split("_")[1]))
    runs = []
    for path in versions:
        with path.open(newline="") as handle:
            rows = [{key: float(value) for key, value in row.items() if value not in ("", None)} for row in csv.DictReader(handle)]
        runs.append(rows)
    merged: list[dict[str, float]] = []
    for index, rows in enumerate(runs):
        later = [row["step"] for following in runs[index + 1:] for row in following if "step" in row]
        cutoff = min(later) if later else math.inf
        merged += [row for row in rows if row.get("step", -1) < cutoff]
    return merged
