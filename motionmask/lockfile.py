"""One daemon per folder: an flock(2) on a lock file, held for the life of the process.

    fd = hold_lock(run_dir / "daemon.lock", "learner.run_dir", run_dir)   # UserError when taken

flock rather than a pid file: the kernel drops the lock when the holder exits, SIGKILL included,
so a crash never leaves a stale lock behind, and a pid file's "is that pid still us?" guess is
never needed. The file itself stays (removing it would race with the next daemon taking it); it
holds the holder's pid, for the message.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from common.errors import UserError


def hold_lock(path: str | Path, key: str, what: str | Path) -> int:
    """Take the lock or raise UserError naming `key` (the config key), `what` (its value) and the
    pid holding it. Returns the descriptor: keep it open while the lock must hold (close-on-exec,
    so children never inherit it)."""
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise UserError(
            f"{key} {what}: cannot create {p.name} there ({e.strerror}); choose a folder you can write to"
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        except OSError:
            holder = "?"
        os.close(fd)
        raise UserError(
            f"{key} {what} is in use by another motionmask daemon (pid {holder}); stop that one "
            f"or set {key} to another path"
        ) from None
    except OSError as e:  # a file system without locks (some network mounts)
        os.close(fd)
        raise UserError(f"{key} {what}: cannot lock {p} ({e.strerror}); use a local folder") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def release(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)
