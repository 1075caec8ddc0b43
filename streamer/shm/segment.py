"""The life cycle of a POSIX shared-memory segment, shared by the ring buffer (streamer/shm/ringbuffer.py)
and the pair store (streamer/shm/pairbuffer.py).

A segment holds page-aligned arrays: a header (magic, version, owner_pid, created, size and the
kind's own fields), a table of counter rows (pid, counts), one per attached process, and the data.
One process creates it and unlinks it on close; the others attach by name and only unmap. Each
process holds the segment through a `Segment`: its own flock descriptor (flock belongs to the open
file description, so a forked child must not share its parent's), thread locks and counter row.
"""

from __future__ import annotations

import _posixshmem  # the module multiprocessing.shared_memory is built on; gives us the fd
import errno
import fcntl
import mmap
import os
import threading
import time
from collections.abc import Callable
from dataclasses import InitVar, dataclass, field
from multiprocessing import resource_tracker
from typing import Any

import numpy as np

from common.errors import UserError
from common.pids import pid_alive

HEADER_BYTES = 4096  # the header's page; anything smaller is not one of our segments
_ALIGN = 4096

Layout = tuple[dict[str, tuple[int, Any, tuple]], int]  # name -> (offset, dtype, shape); total bytes


@dataclass(frozen=True)
class Format:
    """A kind of segment: `kind` names it in messages ("ring buffer"); `header` is a numpy record
    with at least magic, version, owner_pid, created and size."""

    kind: str
    magic: bytes
    version: int
    header: np.dtype = field(repr=False)


def aligned(n: int, a: int = _ALIGN) -> int:
    return (n + a - 1) // a * a


def layout(parts: list[tuple[str, np.dtype, tuple]]) -> Layout:
    """Offsets of the arrays (name, dtype, shape) in a segment; creator and attacher both derive it
    from the header, so it must depend on nothing else."""
    out, off = {}, 0
    for name, dt, shape in parts:
        out[name] = (off, dt, shape)
        nbytes = dt.itemsize * int(np.prod(shape))
        off = aligned(off + (max(nbytes, HEADER_BYTES) if name == "header" else nbytes))
    return out, off


def shm_free_bytes() -> int | None:
    try:
        st = os.statvfs("/dev/shm")
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def create_segment(
    fmt: Format,
    name: str,
    size: int,
    fields: dict[str, Any],
    *,
    setting: str,
    mb: float,
    on_exists: Callable[[], None] | None = None,
    reserve: bool = False,
) -> mmap.mmap:
    """Create and map segment `name` of `size` bytes and write its header: `fields`, the common
    ones, the magic last. resource_tracker unlinks it if this process dies without closing it.

    setting=mb is the config value that sized it, named in the errors that ask to lower it. A name
    already taken: on_exists() frees it (or raises) for one more try; without it, UserError.
    reserve: allocate the pages now, so that a full /dev/shm fails here, not with SIGBUS mid-run."""
    free = shm_free_bytes()
    if free is not None and size > free:
        raise UserError(
            f"{setting}={mb:g} needs {size / 2**20:.0f} MB but /dev/shm has "
            f"{free / 2**20:.0f} MB free; lower {setting} (in Docker: --shm-size)"
        )
    path, flags = "/" + name, os.O_CREAT | os.O_EXCL | os.O_RDWR
    try:
        fd = _posixshmem.shm_open(path, flags, mode=0o600)
    except FileExistsError:
        if on_exists is None:
            raise UserError(f"shared memory {name!r} already exists; delete /dev/shm/{name}") from None
        on_exists()
        fd = _posixshmem.shm_open(path, flags, mode=0o600)
    try:
        os.ftruncate(fd, size)
        if reserve:
            try:
                os.posix_fallocate(fd, 0, size)
            except OSError as e:
                if e.errno == errno.ENOSPC:
                    raise UserError(
                        f"/dev/shm is full: cannot reserve {size / 2**20:.0f} MB for "
                        f"{fmt.kind} {name!r}; lower {setting}"
                    ) from None
                if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                    raise
        mm = mmap.mmap(fd, size)
    except BaseException:
        os.close(fd)
        _posixshmem.shm_unlink(path)
        raise
    os.close(fd)
    resource_tracker.register(path, "shared_memory")
    hdr = np.frombuffer(mm, fmt.header, 1, 0)
    for key, value in fields.items():
        hdr[key] = value
    hdr["version"], hdr["owner_pid"], hdr["created"], hdr["size"] = fmt.version, os.getpid(), time.time(), size
    hdr["magic"] = fmt.magic  # last: an attacher racing the creation sees no magic yet
    del hdr
    return mm


def attach_segment(fmt: Format, name: str) -> mmap.mmap:
    """Map a segment another process created, once its magic and version say it is `fmt`."""
    try:
        fd = _posixshmem.shm_open("/" + name, os.O_RDWR, mode=0o600)
    except FileNotFoundError:
        raise UserError(
            f"no {fmt.kind} named {name!r} (is the process that creates it running? segments are listed in /dev/shm)"
        ) from None
    try:
        size = os.fstat(fd).st_size
        if size < HEADER_BYTES:
            raise UserError(f"shared memory {name!r} is not a motionmask {fmt.kind}")
        # Mapped directly, not through SharedMemory: on Python < 3.13 that registers the
        # attacher with resource_tracker, which would unlink the segment when it exits.
        mm = mmap.mmap(fd, size)
    finally:
        os.close(fd)
    hdr = np.frombuffer(mm, fmt.header, 1, 0)
    magic, version = bytes(hdr["magic"][0]), int(hdr["version"][0])
    del hdr
    if magic != fmt.magic or version != fmt.version:
        mm.close()
        raise UserError(
            f"shared memory {name!r} is not a motionmask {fmt.kind} of version "
            f"{fmt.version} (magic {magic!r}); was it created by another program?"
        )
    return mm


def unmap(mm: mmap.mmap) -> None:
    try:
        mm.close()
    except BufferError:
        pass  # a view is still referenced somewhere; the mapping goes when it does


def unlink_segment(name: str) -> None:
    """Remove the name (mappings stay valid) and take it off resource_tracker's list."""
    try:
        _posixshmem.shm_unlink("/" + name)
    except FileNotFoundError:
        pass
    resource_tracker.unregister("/" + name, "shared_memory")


def lock_segment(tlock: threading.Lock, fd: int, timeout_s: float) -> bool:
    """A segment's allocation lock: the thread lock (flock is per process), then flock on the
    process's own descriptor, both within timeout_s (0: one try). False when either is busy."""
    deadline = time.monotonic() + timeout_s
    got = tlock.acquire(timeout=timeout_s) if timeout_s > 0 else tlock.acquire(False)
    if not got:
        return False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            pass
        if time.monotonic() >= deadline:
            tlock.release()
            return False
        time.sleep(50e-6)


def unlock_segment(tlock: threading.Lock, fd: int) -> None:
    fcntl.flock(fd, fcntl.LOCK_UN)
    tlock.release()


def claim_client_row(clients: np.ndarray, pid: int, what: str) -> int:
    """Under the segment lock: a counter row (1 .. len - 1) for process pid in a clients table
    (fields pid, counts); a departed process's row is reused, its counts added to row 0 first."""
    pids, counts = clients["pid"], clients["counts"]
    empty = np.flatnonzero(pids[1:] == 0)
    if empty.size:
        row = int(empty[0]) + 1
    else:
        gone = [i for i in range(1, len(pids)) if pids[i] < 0 or not pid_alive(int(pids[i]))]
        if not gone:
            raise UserError(f"{what}: more than {len(pids) - 1} processes attached")
        row = gone[0]
        counts[0] += counts[row]  # keep the departed process's counts in the totals
        counts[row] = 0
    pids[row] = pid
    return row


@dataclass(eq=False)
class Segment:
    """This process's hold on a mapped segment: views of its arrays, and a lock descriptor, thread
    locks and counter row of its own, taken again in a forked child (see `check`).

    `columns` maps counter names to columns of the clients table's counts."""

    fmt: Format
    name: str
    mm: mmap.mmap = field(repr=False)
    parts: InitVar[Layout]
    owner: bool  # created it: unlinks it on close
    columns: dict[str, int] = field(repr=False)
    arrays: dict[str, np.ndarray] = field(init=False, repr=False)
    pid: int = field(init=False, default=-1)
    fd: int = field(init=False, default=-1)
    row: int = field(init=False, default=-1)
    closed: bool = field(init=False, default=False)

    def __post_init__(self, parts: Layout) -> None:
        offsets, size = parts
        if size > len(self.mm):
            raise UserError(
                f"{self.what} is truncated ({len(self.mm)} < {size} bytes); remove /dev/shm/{self.name} and restart"
            )
        self.arrays = {
            k: np.frombuffer(self.mm, dt, int(np.prod(shape)), off).reshape(shape)
            for k, (off, dt, shape) in offsets.items()
        }
        self.bind()

    @property
    def what(self) -> str:
        return f"{self.fmt.kind} {self.name!r}"

    def bind(self) -> None:
        """Take this process's lock descriptor, thread locks and counter row."""
        if self.fd >= 0:
            os.close(self.fd)  # the parent's description; the parent's lock stays with the parent
        if self.row >= 0:
            self.owner = False  # a forked child of the owner must not unlink the parent's segment
        self.pid = os.getpid()
        self.fd = _posixshmem.shm_open("/" + self.name, os.O_RDWR, mode=0o600)
        self.tlock, self.count_lock = threading.Lock(), threading.Lock()
        self.row = -1
        if not self.acquire(5.0):
            raise UserError(f"{self.what}: lock held for more than 5 s; is a process stuck?")
        try:
            self.row = claim_client_row(self.arrays["clients"], self.pid, self.what)
        finally:
            self.release()

    def check(self) -> None:
        """Before any use: ValueError once closed; in a forked child, bind first."""
        if self.closed:
            raise ValueError(f"{self.what} is closed")
        if os.getpid() != self.pid:
            self.bind()

    def acquire(self, timeout_s: float) -> bool:
        return lock_segment(self.tlock, self.fd, timeout_s)

    def release(self) -> None:
        unlock_segment(self.tlock, self.fd)

    def count(self, name: str, k: int = 1) -> None:
        with self.count_lock:
            self.arrays["clients"]["counts"][self.row, self.columns[name]] += k

    def close(self) -> bool:
        """Leave the segment and unmap it (the caller drops its own views first, or the mapping
        stays until they go); the owner also unlinks it. True when it did."""
        if self.closed:
            return False
        forked = os.getpid() != self.pid
        if not forked and self.row > 0:
            self.arrays["clients"]["pid"][self.row] = -self.pid  # closed: counts kept until the row is reused
        self.closed = True
        self.arrays.clear()
        unmap(self.mm)
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if not self.owner or forked:
            return False
        unlink_segment(self.name)
        return True
