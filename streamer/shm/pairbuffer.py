"""Shared-memory store of tracked-patch pairs (streamer/motion/patches.py), between camera processes
(writers) and the learner (reader), with the guarantees of streamer/shm/ringbuffer.py:

- A writer takes one short lock (flock on the segment, microseconds) only to claim the next slot
  in ring order and mark it odd (being written); it waits at most `lock_timeout_ms`, else it drops
  the pair and counts the drop. It copies the patches after releasing the lock. The oldest pair is
  overwritten: pairs are cheap and come again, so a writer never waits for the reader.
- Each slot has a sequence number (a seqlock), odd while written; a reader keeps a copy only if the
  number was even and unchanged across the copy: never a torn pair, never a wait.
- flock goes with a dead holder; a slot left odd by a dead writer is reclaimed by the next writer
  that comes round to it (its pid is gone, or it has been odd for ABANDON_FORCE_S).
- Counters live in one row per attached process, summed by stats().

Slots hold two P x P x 3 uint8 patches and a metadata row; the number of slots follows from
`memory_mb`. Same memory-ordering caveat as the ring buffer (x86-TSO; best effort on ARM).
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import time
from dataclasses import dataclass

import numpy as np

from common.errors import UserError
from common.log import log_event
from common.pids import pid_alive
from streamer.shm.ringbuffer import (
    ABANDON_CHECK_S,
    ABANDON_FORCE_S,
    CAMERA_BYTES,
    MAX_CLIENTS,
    camera_id_of,
    camera_key,
)
from streamer.shm.segment import Format, Layout, Segment, attach_segment, create_segment, layout

logger = logging.getLogger(__name__)

MAGIC = b"MMPAIR01"
VERSION = 1
FREE, WRITING, READY = 0, 1, 2
COUNTERS = ("puts", "drop_lock_timeout", "drop_busy", "drop_lost_slot", "reclaimed", "drawn", "retries")
_C = {name: i for i, name in enumerate(COUNTERS)}
_HEADER = np.dtype(
    [
        ("magic", "S8"),
        ("version", "<u4"),
        ("patch", "<u4"),
        ("slots", "<u4"),
        ("owner_pid", "<i8"),
        ("created", "<f8"),
        ("put_seq", "<u8"),
        ("size", "<u8"),
    ]
)
_CLIENT = np.dtype([("pid", "<i8"), ("counts", "<i8", (8,))])
_META = np.dtype(
    [
        ("put_seq", "<u8"),
        ("camera_id", "<i8"),
        ("shot", "<i8"),
        ("t0", "<i8"),
        ("t1", "<i8"),
        ("track", "<i8"),
        ("put_time", "<f8"),
        ("write_start", "<f8"),
        ("writer_pid", "<i8"),
        ("state", "u1"),
        ("camera", f"S{CAMERA_BYTES}"),
    ]
)
_FORMAT = Format("pair store", MAGIC, VERSION, _HEADER)
_GROUP_MIX = np.uint64(0x9E3779B97F4A7C15)


def _layout(p: int, n: int) -> Layout:
    return layout(
        [
            ("header", _HEADER, (1,)),
            ("clients", _CLIENT, (MAX_CLIENTS,)),
            ("seq", np.dtype("<u8"), (n,)),
            ("meta", _META, (n,)),
            ("query", np.dtype("u1"), (n, p, p, 3)),
            ("tracked", np.dtype("u1"), (n, p, p, 3)),
        ]
    )


def pair_slots(patch: int, memory_mb: float) -> int:
    """How many pairs of patch x patch fit in memory_mb, metadata included."""
    budget = int(memory_mb * 2**20)
    n = max(0, (budget - _layout(patch, 0)[1]) // (6 * patch * patch + _META.itemsize + 8))
    while n > 0 and _layout(patch, n)[1] > budget:
        n -= 1
    return int(n)


def group_ids(camera_id: np.ndarray, shot: np.ndarray) -> np.ndarray:
    """One non-negative int64 per (camera, shot): pairs of one group may show one object, so a
    negative for the embedding loss must come from another group."""
    with np.errstate(over="ignore"):
        g = camera_id.astype(np.uint64) ^ (shot.astype(np.uint64) * _GROUP_MIX)
    return (g >> np.uint64(1)).astype(np.int64)


@dataclass
class PairRows:
    """Pairs copied out of the store (fresh arrays)."""

    query: np.ndarray  # n x P x P x 3 uint8
    tracked: np.ndarray  # n x P x P x 3 uint8
    group: np.ndarray  # n int64, see group_ids
    shot: np.ndarray  # n int64
    t0: np.ndarray
    t1: np.ndarray
    cameras: list[str]

    def __len__(self) -> int:
        return len(self.group)


class PairBuffer(contextlib.AbstractContextManager["PairBuffer"]):
    """See the module docstring. Use `create` or `attach`."""

    def __init__(self, name: str, mm: mmap.mmap, owner: bool, lock_timeout_ms: float) -> None:
        self.name, self.lock_timeout_ms = name, lock_timeout_ms
        hdr = np.frombuffer(mm, _HEADER, 1, 0)
        self.patch, self.capacity = int(hdr["patch"][0]), int(hdr["slots"][0])
        self._seg = seg = Segment(_FORMAT, name, mm, _layout(self.patch, self.capacity), owner, _C)
        self._acquire, self._release, self._count = seg.acquire, seg.release, seg.count
        v = seg.arrays
        self._hdr, self._clients, self._seq, self._meta = v["header"], v["clients"], v["seq"], v["meta"]
        self._query, self._tracked = v["query"], v["tracked"]
        self._cams: dict[str, tuple[bytes, int]] = {}

    # ---- lifetime -------------------------------------------------------------------------
    @classmethod
    def create(cls, patch: int, memory_mb: float, name: str | None = None, lock_timeout_ms: float = 2.0) -> PairBuffer:
        n = pair_slots(patch, memory_mb)
        if n < 2:
            raise UserError(
                f"streamer.patches.store_mb={memory_mb:g} holds {n} pair(s) of {patch}x{patch}; "
                f"raise it or lower streamer.patches.size"
            )
        name = name or f"motionmask_pairs_{os.getpid()}_{os.urandom(4).hex()}"
        size = _layout(patch, n)[1]
        mm = create_segment(
            _FORMAT, name, size, {"patch": patch, "slots": n}, setting="streamer.patches.store_mb", mb=memory_mb
        )
        pb = cls(name, mm, True, lock_timeout_ms)
        log_event(logger, "pairs_create", name=name, slots=n, patch=patch, mb=round(size / 2**20, 1))
        return pb

    @classmethod
    def attach(cls, name: str, lock_timeout_ms: float = 2.0) -> PairBuffer:
        """Attach to a store another process created; close() only unmaps."""
        return cls(name, attach_segment(_FORMAT, name), False, lock_timeout_ms)

    def __reduce__(self) -> tuple:
        return (PairBuffer.attach, (self.name, self.lock_timeout_ms))

    def close(self) -> None:
        """Unmap; the creator also unlinks the store."""
        if not self._seg.closed:
            del self._hdr, self._clients, self._seq, self._meta, self._query, self._tracked  # views first
            self._seg.close()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- writing --------------------------------------------------------------------------
    def put(self, pair) -> bool:
        """Store one PatchPair (streamer.patches); overwrites the oldest. Never waits longer than
        lock_timeout_ms: False, and counted, when the lock is busy or the slot is mid-write."""
        self._seg.check()
        p = self.patch
        if pair.query.shape != (p, p, 3) or pair.tracked.shape != (p, p, 3):
            raise ValueError(
                f"pair patches are {pair.query.shape}, the store holds {p}x{p}x3; use one streamer.patches.size"
            )
        cam = self._cams.get(pair.camera)
        if cam is None:
            key = camera_key(pair.camera)
            cam = self._cams.setdefault(pair.camera, (key, camera_id_of(key)))
        if not self._acquire(self.lock_timeout_ms / 1000.0):
            self._count("drop_lock_timeout")
            return False
        try:
            slot = int(self._hdr["put_seq"][0]) % self.capacity
            m = self._meta
            if m["state"][slot] == WRITING and not self._abandoned(slot):
                self._count("drop_busy")
                return False
            seq = int(self._seq[slot])
            mine = seq + 1 if seq % 2 == 0 else seq + 2
            self._seq[slot] = mine
            put_seq = int(self._hdr["put_seq"][0]) + 1
            self._hdr["put_seq"] = put_seq
            m["state"][slot], m["put_seq"][slot] = WRITING, put_seq
            m["writer_pid"][slot], m["write_start"][slot] = self._seg.pid, time.monotonic()
        finally:
            self._release()
        self._query[slot] = pair.query
        self._tracked[slot] = pair.tracked
        m["camera"][slot], m["camera_id"][slot] = cam
        m["shot"][slot], m["t0"][slot], m["t1"][slot], m["track"][slot] = pair.shot, pair.t0, pair.t1, pair.track
        m["put_time"][slot] = time.monotonic()
        if int(self._seq[slot]) != mine:  # this writer stalled past ABANDON_FORCE_S and lost the slot
            self._count("drop_lost_slot")
            return False
        m["state"][slot] = READY
        self._seq[slot] = mine + 1
        self._count("puts")
        return True

    def _abandoned(self, slot: int) -> bool:
        """Under the lock: a slot odd for a while whose writer is gone (or far too slow) is taken over."""
        age = time.monotonic() - float(self._meta["write_start"][slot])
        pid = int(self._meta["writer_pid"][slot])
        if age < ABANDON_CHECK_S or not (age > ABANDON_FORCE_S or (pid != self._seg.pid and not pid_alive(pid))):
            return False
        self._count("reclaimed")
        log_event(logger, "pairs_reclaim", logging.WARNING, name=self.name, slot=slot, writer_pid=pid, age_s=age)
        return True

    # ---- reading --------------------------------------------------------------------------
    def sample(self, n: int, rng: np.random.Generator) -> PairRows:
        """Up to n pairs drawn uniformly (without replacement while enough are held); a slot
        rewritten during its copy is redrawn a bounded number of times. Empty store: empty rows."""
        self._seg.check()
        p = self.patch
        seq = self._seq
        cand = np.flatnonzero((self._meta["state"] == READY) & (seq % 2 == 0))
        q = np.empty((max(n, 0), p, p, 3), np.uint8)
        t = np.empty_like(q)
        meta = np.zeros(max(n, 0), _META)
        k = retries = attempts = 0
        if cand.size and n > 0:
            picks = list(rng.choice(cand, size=n, replace=n > cand.size))
            while k < n and attempts < 2 * n + 8:
                attempts += 1
                i = picks.pop() if picks else int(rng.choice(cand))
                s1 = int(seq[i])
                if s1 & 1:
                    retries += 1
                    continue
                q[k], t[k], meta[k] = self._query[i], self._tracked[i], self._meta[i]
                if int(seq[i]) != s1 or meta["state"][k] != READY:
                    retries += 1  # rewritten while we copied: the copy may be torn
                    continue
                k += 1
            self._count("drawn", k)
            self._count("retries", retries)
        meta = meta[:k]
        return PairRows(
            q[:k],
            t[:k],
            group_ids(meta["camera_id"], meta["shot"]),
            meta["shot"].astype(np.int64),
            meta["t0"].astype(np.int64),
            meta["t1"].astype(np.int64),
            [c.decode(errors="replace") for c in meta["camera"]],
        )

    def put_seq(self) -> int:
        """The put_seq of the newest pair put so far (0 before the first): a cursor for read_after."""
        self._seg.check()
        return int(self._hdr["put_seq"][0])

    def read_after(self, put_seq: int, limit: int) -> tuple[PairRows, np.ndarray, int]:
        """Up to `limit` pairs put after `put_seq`, oldest first, for a reader that follows the
        store (a rig's sender): (rows, their track ids, the cursor to pass next time). Pairs
        overwritten before they were read, torn or still being written are skipped."""
        self._seg.check()
        p, head = self.patch, int(self._hdr["put_seq"][0])
        start = max(int(put_seq), head - self.capacity)  # older ones are overwritten already
        q = np.empty((max(0, min(limit, head - start)), p, p, 3), np.uint8)
        t = np.empty_like(q)
        meta = np.zeros(len(q), _META)
        k, cursor = 0, start
        for want in range(start + 1, start + 1 + len(q)):
            slot = (want - 1) % self.capacity
            s1 = int(self._seq[slot])
            if s1 & 1:
                break  # being written: read it next time
            q[k], t[k], meta[k] = self._query[slot], self._tracked[slot], self._meta[slot]
            cursor = want
            if int(self._seq[slot]) == s1 and meta["state"][k] == READY and int(meta["put_seq"][k]) == want:
                k += 1
        meta = meta[:k]
        rows = PairRows(
            q[:k],
            t[:k],
            group_ids(meta["camera_id"], meta["shot"]),
            meta["shot"].astype(np.int64),
            meta["t0"].astype(np.int64),
            meta["t1"].astype(np.int64),
            [c.decode(errors="replace") for c in meta["camera"]],
        )
        return rows, meta["track"].astype(np.int64), cursor

    # ---- statistics -----------------------------------------------------------------------
    def stats(self) -> dict:
        self._seg.check()
        m = self._meta
        ready = m["state"] == READY
        counts = self._clients["counts"].sum(axis=0)
        c = {name: int(counts[i]) for name, i in _C.items()}
        by_camera: dict[str, int] = {}
        for cam in m["camera"][ready].tolist():
            name = cam.decode(errors="replace")
            by_camera[name] = by_camera.get(name, 0) + 1
        fill = int(ready.sum())
        drops = {"lock_timeout": c["drop_lock_timeout"], "busy": c["drop_busy"], "lost_slot": c["drop_lost_slot"]}
        return {
            "name": self.name,
            "capacity": self.capacity,
            "patch": self.patch,
            "bytes": len(self._seg.mm),
            "fill": fill,
            "fill_fraction": fill / self.capacity,
            "puts": c["puts"],
            "drops": drops,
            "drops_total": sum(drops.values()),
            "reclaimed_abandoned": c["reclaimed"],
            "pairs_drawn": c["drawn"],
            "sample_retries": c["retries"],
            "groups": int(np.unique(group_ids(m["camera_id"][ready], m["shot"][ready])).size),
            "by_camera": by_camera,
        }
