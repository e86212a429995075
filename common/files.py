"""Writing files so that nothing half-written is ever visible: a temporary sibling, then one rename."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common.errors import UserError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call write(temp_path) and move the result onto `path` in one rename (the file keeps normal permissions)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(temp)
        os.chmod(temp, 0o666 & ~_umask())  # mkstemp makes owner-only files; results are ordinary files
        os.replace(temp, path)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda temp: Path(temp).write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def replace_directory(target: Path, write: Callable[[Path], None]) -> None:
    """Call write(staging) on an empty sibling directory, then swap it in for `target` by renames."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    retired = target.parent / f".{target.name}.old-{os.getpid()}"
    try:
        write(staging)
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes an owner-only directory
        if target.exists():
            os.replace(target, retired)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(retired, ignore_errors=True)


def cache_root() -> Path:
    """Root of all bwarea caches: $BWAREA_CACHE_DIR, else ~/.cache/bwarea."""
    if os.environ.get("BWAREA_CACHE_DIR"):
        return Path(os.environ["BWAREA_CACHE_DIR"]).expanduser()
    return Path.home() / ".cache" / "bwarea"


class DirectoryInUse(UserError, RuntimeError):
    """Another running command holds the lock of an output directory."""


class NotWritable(UserError, PermissionError):
    """An output directory that cannot be written."""


class DirectoryLock:
    """An exclusive lock on an output directory, held while one command writes into it, so that a second command
    aimed at the same directory stops at once instead of interleaving its files.

    The lock file sits beside the directory (`.<name>.lock`), so taking it writes nothing inside the directory;
    it holds the owner's process id and is removed on release. The operating system drops the lock when its
    process dies, so a killed run never leaves a stale lock behind.
    """

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory).expanduser()
        self.path = self.directory.parent / f".{self.directory.name}.lock"
        self._fd: int | None = None

    def __enter__(self) -> "DirectoryLock":
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise DirectoryInUse(f"{self.directory} is in use by another running command (process {owner}); "
                                     "wait for it to finish or choose another output directory.") from None
            try:   # the holder before us may have removed the file between our open and our lock: lock it anew
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(self._fd)   # closing releases the lock
            self._fd = None


def check_writable(directory: str | os.PathLike) -> None:
    """Raise NotWritable naming `directory` when it (or, if it does not exist yet, the nearest existing folder
    above it) cannot be written, so a command can refuse before it does any work."""
    path = Path(directory).expanduser().absolute()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise NotWritable(f"cannot write to {path}: {existing} is not a writable folder; choose another output "
                              "directory.")
