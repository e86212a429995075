"""Progress that reads well on a terminal and in a log file.

On a terminal a tqdm bar redraws in place. When the output is a file or a pipe (a cluster job, `nohup`, CI) a
redrawn bar writes nothing useful, so `ProgressLines` prints one plain line every BWAREA_PROGRESS_EVERY seconds
(default 30) instead: done/total, rate, ETA and the caller's key numbers, then a closing line.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, TextIO


def every_s() -> float:
    """Seconds between progress lines: $BWAREA_PROGRESS_EVERY, else 30."""
    value = os.environ.get("BWAREA_PROGRESS_EVERY", "30")
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if seconds <= 0:
        raise ValueError(f"BWAREA_PROGRESS_EVERY must be a positive number of seconds, got {value!r}.")
    return seconds


def duration(seconds: float) -> str:
    """'1:02:03' or '2:03'."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def progress_line(desc: str, done: int, total: int | None, unit: str, rate: float, extra: str = "") -> str:
    """'evaluate: 12/40 episodes (30%), 0.52 episodes/s, ETA 0:54, step 310, faults 0'."""
    parts = [f"{desc}: {done}/{total} {unit}s ({100.0 * done / total:.0f}%)" if total else f"{desc}: {done} {unit}s",
             f"{rate:.3g} {unit}s/s"]
    if total and rate > 0:
        parts.append(f"ETA {duration((total - done) / rate)}")
    if extra:
        parts.append(extra)
    return ", ".join(parts)


class ProgressLines:
    """The part of tqdm's interface evaluation uses (update, set_postfix_str, close), printed as plain lines."""

    def __init__(self, total: int | None, desc: str, unit: str, initial: int = 0, stream: TextIO | None = None) -> None:
        self.total, self.desc, self.unit, self.n, self.initial = total, desc, unit, initial, initial
        self.stream = stream if stream is not None else sys.stderr
        self.postfix = ""
        self.every = every_s()
        self.started = self.last = time.monotonic()

    def update(self, count: int = 1) -> None:
        self.n += count
        self._maybe_print()

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        self.postfix = text
        self._maybe_print()

    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return (self.n - self.initial) / elapsed if elapsed > 0 else 0.0

    def _maybe_print(self) -> None:
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            print(progress_line(self.desc, self.n, self.total, self.unit, self.rate(), self.postfix),
                  file=self.stream, flush=True)

    def close(self) -> None:
        elapsed = duration(time.monotonic() - self.started)
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        print(f"{self.desc}: {done} {self.unit}s after {elapsed}"
              + (f", {self.postfix}" if self.postfix else ""), file=self.stream, flush=True)


def progress(total: int | None, desc: str, unit: str, initial: int = 0, enabled: bool = True,
             stream: TextIO | None = None) -> Any:
    """A tqdm bar on a terminal, ProgressLines when `stream` (default stderr) is a file or a pipe; nothing shown
    when not `enabled`."""
    from tqdm.auto import tqdm

    stream = stream if stream is not None else sys.stderr
    if enabled and not stream.isatty():
        return ProgressLines(total, desc, unit, initial, stream)
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=not enabled, file=stream)
