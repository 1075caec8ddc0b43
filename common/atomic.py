"""Atomic file writes: a temp file in the same directory, fsync, then rename over the target.
An interrupted run leaves either the old file or the new one, never a torn one."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def write_with(path: str | Path, write: Callable[[BinaryIO], object], fsync: bool = False) -> None:
    """Atomically replace `path` with what `write(file)` writes (e.g. lambda f: torch.save(obj, f))."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_bytes(path: str | Path, data: bytes, fsync: bool = False) -> None:
    write_with(path, lambda f: f.write(data), fsync=fsync)


def fsync_dir(d: str | Path) -> None:
    """Make a rename inside `d` durable (best effort: some filesystems refuse directory fsync)."""
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_durable(path: str | Path, data: bytes, mode: int = 0o644) -> None:
    """Replace `path` with `data`, file mode `mode`, fsynced and the folder too: a power cut leaves
    the old file or the new one. The temp file is mkstemp's (0600) until fchmod, so a private
    file is never readable by others, not even for a moment."""

    def write(f: BinaryIO) -> None:
        os.fchmod(f.fileno(), mode)
        f.write(data)

    write_with(path, write, fsync=True)
    fsync_dir(Path(path).parent)


def write_private(path: str | Path, data: bytes) -> None:
    """A secret (a private key: signing or CurveZMQ), mode 0600 from its first byte, durably."""
    write_durable(path, data, 0o600)


def write_json(path: str | Path, obj: object, fsync: bool = True) -> None:
    write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode(), fsync=fsync)
