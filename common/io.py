"""Atomic file writes and run directories.

A run directory is complete when its ``summary.json`` exists; that file is always written last and
atomically, so a crashed run never looks finished. An existing run directory is never overwritten
unless the caller asks for it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

SUMMARY = "summary.json"


def default_file_mode() -> int:
    """0o666 minus the process umask: the mode ``open()`` gives a new file (``mkstemp`` would give 0o600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def publish(path: Path) -> Path:
    """Give ``path`` (a file, or a directory and everything under it) the modes any new file or folder gets under the
    umask: writers such as safetensors' ``save_file`` and ``tempfile.mkdtemp`` create 0600 files and 0700 folders,
    which collaborators on a cluster cannot read. Returns ``path``."""
    path = Path(path)
    file_mode = default_file_mode()
    dir_mode = file_mode | ((file_mode & 0o444) >> 2)  # rw-r--r-- -> rwxr-xr-x: readable folders are traversable
    for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
        if not p.is_symlink():
            os.chmod(p, dir_mode if p.is_dir() else file_mode)
    return path


@contextlib.contextmanager
def atomic_open(path: Path, suffix: str = ".tmp") -> Iterator[BinaryIO]:
    """A binary file that becomes ``path`` only when the block completes: written to a temporary file in the same
    folder (same filesystem, so the rename is atomic), fsynced, then renamed over ``path``. On any failure the
    temporary file is removed and ``path`` keeps its previous content. The file gets the mode any new file would (the
    umask is respected, so collaborators can read results)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    try:
        os.fchmod(fd, default_file_mode())
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (:func:`atomic_open`)."""
    with atomic_open(path) as f:
        f.write(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


def git_revision(start: Path | None = None) -> str:
    """The git revision of the code (``+dirty`` when the tree has changes), or ``unknown``."""
    here = Path(start or Path(__file__).resolve().parent)
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class RunDirExistsError(FileExistsError):
    pass


def check_run_dir(path: Path, overwrite: bool = False) -> None:
    """Refuse an existing non-empty run directory unless ``overwrite`` (without touching anything)."""
    path = Path(path)
    if path.exists() and any(path.iterdir()) and not overwrite:
        state = "a complete run" if (path / SUMMARY).exists() else "an incomplete run"
        raise RunDirExistsError(f"run directory {path} already holds {state}; pass --overwrite to replace it")


def prepare_run_dir(path: Path, overwrite: bool = False) -> Path:
    """Create ``path`` as a fresh run directory; refuse an existing non-empty one unless ``overwrite``."""
    path = Path(path)
    check_run_dir(path, overwrite)
    if path.exists() and any(path.iterdir()):
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


class RunDirLockedError(RuntimeError):
    """Another live process holds the run directory (the message names its host and pid)."""


def lock_path(run_dir: Path) -> Path:
    """The lock of a run directory: a hidden file beside it (``.NAME.lock``), so ``--overwrite`` never removes it and
    the run directory itself is not created before the start-up checks pass."""
    run_dir = Path(run_dir)
    return run_dir.parent / f".{run_dir.name}.lock"


@contextlib.contextmanager
def run_dir_lock(run_dir: Path, wait_seconds: float = 0.0) -> Iterator[None]:
    """One process per run directory, for the whole run: an exclusive ``flock`` on :func:`lock_path`. A second process
    waits up to ``wait_seconds`` (a requeued SLURM job starting while the first is still being stopped), then is
    refused in one line naming the holder (host, pid, start time). The kernel releases the lock when its holder dies
    (``kill -9`` too), so a dead holder never blocks the next job; the holder's identity in the file is informative."""
    import fcntl
    import socket
    import time

    path = lock_path(run_dir)
    for parent in [path.parent, *path.parent.parents]:  # a file where a folder must be: ENOTDIR, not "File exists"
        if parent.exists():
            if not parent.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(parent))
            break
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, default_file_mode())
    deadline = time.monotonic() + max(0.0, wait_seconds)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "another process"
                    raise RunDirLockedError(
                        f"run directory {run_dir} is in use by {holder} (lock {path}); wait for it or stop it"
                    ) from None
                time.sleep(0.5)
        os.ftruncate(fd, 0)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()} since {stamp}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the flock


def is_complete(path: Path) -> bool:
    return (Path(path) / SUMMARY).is_file()
