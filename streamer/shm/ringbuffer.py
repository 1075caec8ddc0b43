"""Shared-memory ring buffer of training samples, between camera streamers and the learner.

One process creates the buffer (`RingBuffer.create`, the owner, unlinks it on close); streamer
processes (one per camera) and the learner attach by name (`RingBuffer.attach`) or receive the
object through multiprocessing (it pickles as "attach by name"). Samples live in fixed-size slots
at the training resolution: frame HxWx3 u8, trimap HxW u8 (0/128/255), motion probability HxW u8
(prob*255), flow HxWx2 float16 (slot pixels) and a metadata row.

Concurrency, and why it never blocks a streamer:
- A writer takes one short lock (flock on the segment, held for tens of microseconds) only to pick
  a slot and mark it WRITING; it waits at most `lock_timeout_ms` for it, else it drops the sample
  and counts the drop. It copies the data after releasing the lock.
- Each slot has a sequence number (a seqlock): odd while being written. A reader copies a slot out
  and keeps the copy only if the number was even and unchanged across the copy, so it never returns
  a torn sample and never waits for a writer.
- flock is released by the kernel when its holder dies, and a slot left WRITING by a dead writer is
  reclaimed once its writer pid is gone, so a SIGKILLed streamer never wedges the buffer.
- Counters live in one row per attached process (only that process writes it), so drops that
  happened *because* the lock was busy are still visible to every other process at once.

Memory ordering: the seqlock relies on the CPU not reordering stores as seen by other cores
(x86-TSO). Python offers no fences; on weakly ordered CPUs (ARM) the seqlock is best effort.
"""

from __future__ import annotations

import _posixshmem  # the module multiprocessing.shared_memory is built on; gives us the fd
import contextlib
import dataclasses
import hashlib
import logging
import mmap
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

try:
    import cv2
except ModuleNotFoundError:  # device-only install: NumPy stand-ins on predict's path (common/npcv.py)
    from common import npcv as cv2
import numpy as np

from common.config import check
from common.errors import UserError
from common.log import log_event
from common.pids import pid_alive
from streamer.shm.segment import Format, Layout, Segment, attach_segment, create_segment, layout, unlink_segment, unmap

if TYPE_CHECKING:  # the pipeline pulls in flow and superpixels; config loading must stay light
    from streamer.motion.pipeline import MaskResult

logger = logging.getLogger(__name__)

MAGIC = b"MMRING01"
VERSION = 1
FREE, WRITING, READY = 0, 1, 2
MAX_CLIENTS = 64  # attached processes at once; row 0 accumulates the counts of departed ones
CAMERA_BYTES = 64
# A slot WRITING for this long is checked: reclaimed if its writer pid is gone...
ABANDON_CHECK_S = 1.0
# ... or unconditionally after this long (pid reused, writer in another pid namespace).
ABANDON_FORCE_S = 30.0

COUNTERS = (
    "puts",
    "drop_lock_timeout",
    "drop_no_slot",
    "drop_lost_slot",
    "evict_shot_cap",
    "evict_oldest",
    "reclaimed",
    "samples",
    "sample_retries",
    "relabels",
    "relabel_refused",  # update_labels: written / refused (the slot held another sample by then)
)
_C = {name: i for i, name in enumerate(COUNTERS)}

_HEADER = np.dtype(
    [
        ("magic", "S8"),
        ("version", "<u4"),
        ("height", "<u4"),
        ("width", "<u4"),
        ("slots", "<u4"),
        ("clients", "<u4"),
        ("per_shot_cap", "<u4"),
        ("owner_pid", "<i8"),
        ("created", "<f8"),
        ("put_seq", "<u8"),
        ("size", "<u8"),
    ]
)
_CLIENT = np.dtype([("pid", "<i8"), ("counts", "<i8", (16,))])
_META = np.dtype(
    [
        ("put_seq", "<u8"),
        ("frame_index", "<i8"),
        ("shot", "<i8"),
        ("capture_time", "<f8"),
        ("put_time", "<f8"),
        ("write_start", "<f8"),
        ("writer_pid", "<i8"),
        ("camera_id", "<i8"),
        ("valid", "<i4", (4,)),
        ("source_hw", "<i4", (2,)),
        ("state", "u1"),
        ("has_flow", "u1"),
        ("camera", f"S{CAMERA_BYTES}"),
    ]
)
_FORMAT = Format("ring buffer", MAGIC, VERSION, _HEADER)
_NEVER = np.uint64(2**64 - 1)  # put_seq that loses every "oldest" comparison


@dataclass
class BufferConfig:
    train_width: int = 320  # slot resolution: frames are resized to fit, keeping aspect, and padded
    train_height: int = 240
    memory_mb: float = 256.0  # budget for the whole segment (in /dev/shm); sets the number of slots
    per_shot_cap: int = 0  # once full, a (camera, shot) holding this many gives way first; 0 = a quarter of the slots
    sampling: str = "uniform"  # uniform | recency
    half_life_s: float = 120.0  # recency sampling: a sample this much older is half as likely
    lock_timeout_ms: float = 2.0  # longest a streamer waits for the slot lock before dropping
    name: str = ""  # shared-memory name; "" = unique per run. Set one so other processes can attach
    replace_stale: bool = True  # a segment of that name left by a dead process is replaced

    def slots(self) -> int:
        return slots_for(self.train_height, self.train_width, self.memory_mb)

    def validate(self) -> None:
        """Raise ValueError naming the key for values no type check catches."""
        checks = [
            ("train_width", 16 <= self.train_width <= 4096, "between 16 and 4096"),
            ("train_height", 16 <= self.train_height <= 4096, "between 16 and 4096"),
            ("memory_mb", self.memory_mb > 0, "> 0"),
            ("per_shot_cap", self.per_shot_cap >= 0, ">= 0 (0 = a quarter of the slots)"),
            ("sampling", self.sampling in ("uniform", "recency"), "uniform or recency"),
            ("half_life_s", self.half_life_s > 0, "> 0"),
            ("lock_timeout_ms", 0 <= self.lock_timeout_ms <= 1000, "between 0 and 1000"),
            ("name", "/" not in self.name and len(self.name) <= 200, "a name without '/' (<= 200 chars)"),
        ]
        check("buffer", checks)
        n = self.slots()
        if n < 2:
            need = ring_bytes(self.train_height, self.train_width, 2) / 2**20
            raise ValueError(
                f"buffer.memory_mb: {self.memory_mb:g} MB holds {n} slot(s) of "
                f"{self.train_width}x{self.train_height}; need at least 2 (>= {need:.1f} MB), "
                f"or lower buffer.train_width/train_height"
            )


@dataclass
class Sample:
    """One training sample in slot form (see `sample_from_result`)."""

    camera: str
    frame_index: int
    shot: int
    capture_time: float
    image: np.ndarray  # H x W x 3 uint8 RGB, slot size
    trimap: np.ndarray  # H x W uint8, 128 (don't care) in the padding
    prob: np.ndarray  # H x W uint8, round(prob * 255), 0 in the padding
    flow: np.ndarray | None  # H x W x 2 float16 in slot pixels, or None (first frame of a shot)
    valid: tuple[int, int, int, int]  # y0, x0, height, width of the image inside the slot
    source_hw: tuple[int, int] = (0, 0)  # original frame height, width


def _layout(h: int, w: int, n: int) -> Layout:
    """Offsets of every array in the segment; the same function on both sides of an attach."""
    return layout(
        [
            ("header", _HEADER, (1,)),
            ("clients", _CLIENT, (MAX_CLIENTS,)),
            ("seq", np.dtype("<u8"), (n,)),
            ("meta", _META, (n,)),
            ("frames", np.dtype("u1"), (n, h, w, 3)),
            ("trimaps", np.dtype("u1"), (n, h, w)),
            ("probs", np.dtype("u1"), (n, h, w)),
            ("flows", np.dtype("<f2"), (n, h, w, 2)),
        ]
    )


def ring_bytes(h: int, w: int, n: int) -> int:
    """Bytes of shared memory a ring of n slots of h x w takes, metadata and alignment included."""
    return _layout(h, w, n)[1]


def slots_for(height: int, width: int, memory_mb: float) -> int:
    """How many slots of height x width fit in memory_mb, metadata and alignment included."""
    budget = int(memory_mb * 2**20)
    per_slot = 9 * height * width + _META.itemsize + 8
    n = max(0, (budget - ring_bytes(height, width, 0)) // per_slot)
    while n > 0 and ring_bytes(height, width, n) > budget:
        n -= 1
    return int(n)


def camera_key(camera: str) -> bytes:
    """Camera ids are stored in 64 bytes; longer ones (URLs) keep a readable prefix and a hash."""
    b = camera.encode()
    if len(b) <= CAMERA_BYTES and not b.endswith(b"\0"):
        return b
    return b[: CAMERA_BYTES - 17] + b"~" + hashlib.blake2b(b, digest_size=8).hexdigest().encode()


def camera_id_of(key: bytes) -> int:
    """64-bit id of a camera key: comparing ints under the lock is much faster than 64-byte names."""
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little", signed=True)


class Batch:
    """Samples copied out of the buffer. Arrays are views of the first `n` rows of storage that is
    allocated once; pass the batch back as `sample(..., out=batch)` to reuse it (the learner may
    hand in its own, e.g. pinned, arrays through `storage`)."""

    def __init__(self, capacity: int, height: int, width: int, storage: dict[str, np.ndarray] | None = None) -> None:
        want = {
            "frames": ((capacity, height, width, 3), np.uint8),
            "trimaps": ((capacity, height, width), np.uint8),
            "probs": ((capacity, height, width), np.uint8),
            "flows": ((capacity, height, width, 2), np.float16),
        }
        storage = dict(storage or {})
        for key, (shape, dt) in want.items():
            arr = storage.get(key)
            if arr is None:
                storage[key] = np.empty(shape, dt)
            elif arr.shape != shape or arr.dtype != dt or not arr.flags.c_contiguous:
                raise ValueError(
                    f"Batch storage {key!r}: need C-contiguous {shape} {np.dtype(dt)}, got {arr.shape} {arr.dtype}"
                )
        self.capacity, self.height, self.width = capacity, height, width
        self._s = storage
        self._meta = np.zeros(capacity, _META)
        self._slots = np.zeros(capacity, np.int64)
        self.n = 0

    def __len__(self) -> int:
        return self.n

    def take(self, rows: np.ndarray) -> None:
        """Keep only `rows` (indices into the current batch, repeats allowed), in place: the
        storage is reused, so the arrays the learner holds stay valid."""
        m = len(rows)
        for arr in self._s.values():
            arr[:m] = arr[rows]
        self._meta[:m] = self._meta[rows]
        self._slots[:m] = self._slots[rows]
        self.n = m

    frames = property(lambda self: self._s["frames"][: self.n])  # n x H x W x 3 uint8
    trimaps = property(lambda self: self._s["trimaps"][: self.n])  # n x H x W uint8
    probs = property(lambda self: self._s["probs"][: self.n])  # n x H x W uint8 (prob * 255)
    flows = property(lambda self: self._s["flows"][: self.n])  # n x H x W x 2 float16
    frame_index = property(lambda self: self._meta["frame_index"][: self.n])
    shot = property(lambda self: self._meta["shot"][: self.n])
    capture_time = property(lambda self: self._meta["capture_time"][: self.n])
    put_time = property(lambda self: self._meta["put_time"][: self.n])  # time.monotonic() at put
    put_seq = property(lambda self: self._meta["put_seq"][: self.n])
    valid = property(lambda self: self._meta["valid"][: self.n])  # n x 4: y0, x0, h, w
    source_hw = property(lambda self: self._meta["source_hw"][: self.n])
    has_flow = property(lambda self: self._meta["has_flow"][: self.n].astype(bool))
    slots = property(lambda self: self._slots[: self.n])  # slot each sample was copied from (for update_labels)

    @property
    def cameras(self) -> list[str]:
        return [c.decode(errors="replace") for c in self._meta["camera"][: self.n]]


class RingBuffer(contextlib.AbstractContextManager["RingBuffer"]):
    """See the module docstring. Use `create` or `attach`, not the constructor."""

    def __init__(self, name: str, mm: mmap.mmap, owner: bool, cfg: BufferConfig) -> None:
        self.name = name
        self._lock_timeout_s = cfg.lock_timeout_ms / 1000.0
        self.sampling = cfg.sampling
        self.half_life_s = cfg.half_life_s
        hdr = np.frombuffer(mm, _HEADER, 1, 0)
        self.height, self.width = int(hdr["height"][0]), int(hdr["width"][0])
        self._cfg = dataclasses.replace(cfg, train_width=self.width, train_height=self.height, name=name)
        self.capacity = int(hdr["slots"][0])
        self.per_shot_cap = int(hdr["per_shot_cap"][0])
        self._seg = seg = Segment(_FORMAT, name, mm, _layout(self.height, self.width, self.capacity), owner, _C)
        # Bound once: put() is the streamers' hot path.
        self._acquire, self._release, self._count = seg.acquire, seg.release, seg.count
        v = seg.arrays
        self._hdr, self._clients, self._seq, self._meta = v["header"], v["clients"], v["seq"], v["meta"]
        self._frames, self._trimaps, self._probs, self._flows = v["frames"], v["trimaps"], v["probs"], v["flows"]
        m = self._meta
        self._m_state, self._m_camera, self._m_shot = m["state"], m["camera"], m["shot"]
        self._m_camera_id = m["camera_id"]
        self._m_put_seq, self._m_put_time = m["put_seq"], m["put_time"]
        self._m_write_start, self._m_pid = m["write_start"], m["writer_pid"]
        self._cam_cache: dict[str, tuple[bytes, int]] = {}

    # ---- lifetime -------------------------------------------------------------------------
    @classmethod
    def create(cls, cfg: BufferConfig, name: str | None = None) -> RingBuffer:
        """Create the segment (this process owns it and unlinks it on close).

        `name` (or cfg.name) may be given so that separately started processes can attach; a
        segment of that name left by a crashed run is replaced when cfg.replace_stale is set, and
        one whose owner is still running is never touched."""
        cfg.validate()
        name = name or cfg.name or f"motionmask_{os.getpid()}_{os.urandom(4).hex()}"
        if "/" in name:
            raise UserError(f"ring buffer name {name!r} must not contain '/'")
        h, w, n = cfg.train_height, cfg.train_width, cfg.slots()
        size = ring_bytes(h, w, n)
        fields = {
            "height": h,
            "width": w,
            "slots": n,
            "clients": MAX_CLIENTS,
            "per_shot_cap": cfg.per_shot_cap or max(1, n // 4),
        }
        mm = create_segment(
            _FORMAT,
            name,
            size,
            fields,
            setting="buffer.memory_mb",
            mb=cfg.memory_mb,
            on_exists=lambda: cls._handle_existing(name, cfg),
            reserve=True,
        )
        try:
            rb = cls(name, mm, owner=True, cfg=cfg)
        except BaseException:
            unmap(mm)  # views of a half-built instance may keep it until they are collected
            unlink_segment(name)
            raise
        log_event(
            logger,
            "ring_create",
            name=name,
            slots=n,
            slot=f"{w}x{h}",
            mb=round(size / 2**20, 1),
            per_shot_cap=rb.per_shot_cap,
        )
        return rb

    @classmethod
    def _handle_existing(cls, name: str, cfg: BufferConfig) -> None:
        owner = 0
        try:
            fd = _posixshmem.shm_open("/" + name, os.O_RDONLY, mode=0o600)
            try:
                if os.fstat(fd).st_size >= _HEADER.itemsize:
                    with mmap.mmap(fd, _HEADER.itemsize, prot=mmap.PROT_READ) as mm:
                        hdr = np.frombuffer(mm, _HEADER, 1, 0).copy()
                        if hdr["magic"][0] == MAGIC:
                            owner = int(hdr["owner_pid"][0])
                        del hdr
            finally:
                os.close(fd)
        except FileNotFoundError:
            return  # vanished meanwhile
        if owner and pid_alive(owner):
            raise UserError(
                f"ring buffer {name!r} is in use by running process {owner}; stop it or choose another buffer.name"
            )
        if not cfg.replace_stale:
            raise UserError(
                f"shared memory {name!r} already exists (left by a crashed run, owner pid "
                f"{owner or 'unknown'} is not running); delete /dev/shm/{name} or set "
                f"buffer.replace_stale: true"
            )
        _posixshmem.shm_unlink("/" + name)
        log_event(logger, "ring_stale_replaced", logging.WARNING, name=name, dead_owner=owner)

    @classmethod
    def attach(cls, name: str, cfg: BufferConfig | None = None) -> RingBuffer:
        """Attach to a buffer created by another process. Never unlinks it; on close or exit it
        only unmaps. cfg (optional) gives this process's lock timeout and sampling defaults; its
        slot size, when set, must match the segment's."""
        check_size = cfg is not None
        cfg = cfg or BufferConfig()
        mm = attach_segment(_FORMAT, name)
        hdr = np.frombuffer(mm, _HEADER, 1, 0)
        h, w = int(hdr["height"][0]), int(hdr["width"][0])
        del hdr
        if check_size and (cfg.train_width, cfg.train_height) != (w, h):
            mm.close()
            raise UserError(
                f"ring buffer {name!r} has {w}x{h} slots but buffer.train_width/"
                f"train_height say {cfg.train_width}x{cfg.train_height}; use one config"
            )
        rb = cls(name, mm, owner=False, cfg=cfg)
        log_event(logger, "ring_attach", name=name, slots=rb.capacity, slot=f"{w}x{h}", pid=os.getpid())
        return rb

    def __reduce__(self) -> tuple:
        # Sent to another process (multiprocessing), a buffer re-attaches there by name.
        return (RingBuffer.attach, (self.name, self._cfg))

    def close(self) -> None:
        """Unmap; the owner also unlinks the segment (attached processes keep their mapping)."""
        if self._seg.closed:
            return
        for k in list(vars(self)):  # our views first: the mapping cannot be unmapped under them
            if k.startswith(("_m_", "_hdr", "_clients", "_seq", "_meta", "_frames", "_trimaps", "_probs", "_flows")):
                delattr(self, k)
        if self._seg.close():
            log_event(logger, "ring_close", name=self.name, unlinked=True)

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"RingBuffer({self.name!r}, {self.capacity} slots of {self.width}x{self.height}, "
            f"{'owner' if self._seg.owner else 'attached'})"
        )

    # ---- writing --------------------------------------------------------------------------
    def put(self, s: Sample) -> bool:
        """Store one sample. Never blocks for longer than lock_timeout_ms: returns False and counts
        a drop when the lock is busy or no slot can be taken."""
        self._seg.check()
        h, w = self.height, self.width
        if (
            s.image.shape != (h, w, 3)
            or s.trimap.shape != (h, w)
            or s.prob.shape != (h, w)
            or (s.flow is not None and s.flow.shape != (h, w, 2))
        ):
            raise ValueError(
                f"sample is {s.image.shape[1]}x{s.image.shape[0]}, ring buffer slots are "
                f"{w}x{h}; convert with sample_from_result(result, camera, cfg)"
            )
        cam = self._cam_cache.get(s.camera)
        if cam is None:
            key = camera_key(s.camera)
            cam = self._cam_cache.setdefault(s.camera, (key, camera_id_of(key)))
        slot, mine = self._reserve(cam, int(s.shot))
        if slot < 0:
            return False
        self._fill(slot, s)
        if int(self._seq[slot]) != mine:
            # Only if this writer stalled past ABANDON_FORCE_S and another took the slot over.
            self._count("drop_lost_slot")
            return False
        self._m_state[slot] = READY
        self._seq[slot] = mine + 1  # publish: even again, and different from before
        self._count("puts")
        return True

    def _reserve(self, cam: tuple[bytes, int], shot: int) -> tuple[int, int]:
        """Take a slot under the lock and mark it WRITING: (slot, its odd sequence) or (-1, 0)."""
        if not self._acquire(self._lock_timeout_s):
            self._count("drop_lock_timeout")
            return -1, 0
        try:
            slot, why = self._allocate(cam[1], shot)
            if slot < 0:
                self._count("drop_no_slot")
                return -1, 0
            seq = int(self._seq[slot])
            mine = seq + 1 if seq % 2 == 0 else seq + 2  # odd even if a dead writer left it odd
            self._seq[slot] = mine
            self._m_state[slot] = WRITING
            self._m_camera[slot] = cam[0]
            self._m_camera_id[slot] = cam[1]
            self._m_shot[slot] = shot
            self._m_pid[slot] = self._seg.pid
            self._m_write_start[slot] = time.monotonic()
            put_seq = int(self._hdr["put_seq"][0]) + 1
            self._hdr["put_seq"] = put_seq
            self._m_put_seq[slot] = put_seq
        finally:
            self._release()
        if why:
            self._count(why)
        return slot, mine

    def _fill(self, slot: int, s: Sample) -> None:
        """Copy the sample into its reserved slot (no lock: the odd sequence keeps readers off)."""
        self._frames[slot] = s.image
        self._trimaps[slot] = s.trimap
        self._probs[slot] = s.prob
        if s.flow is not None:
            self._flows[slot] = s.flow
        else:
            self._flows[slot] = 0
        m = self._meta
        m["frame_index"][slot] = s.frame_index
        m["capture_time"][slot] = s.capture_time
        m["valid"][slot] = s.valid
        m["source_hw"][slot] = s.source_hw
        m["has_flow"][slot] = s.flow is not None
        self._m_put_time[slot] = time.monotonic()

    def _allocate(self, camera_id: int, shot: int) -> tuple[int, str]:
        """Under the lock (keep it short: every streamer waits on it): a slot index (or -1) and
        the eviction counter to bump ("" for none)."""
        state = self._m_state
        writing = state == WRITING
        if writing.any():
            self._reclaim_abandoned(np.flatnonzero(writing))
        taken = state != FREE
        free = np.flatnonzero(~taken)
        if free.size:
            # room left: a long shot may use it (a fixed camera is one endless shot); the cap
            # only decides who gives way once the buffer is full
            return int(free[0]), ""
        ready = state == READY
        if not ready.any():
            return -1, ""
        same = self._same_shot(taken, camera_id, shot)
        if np.count_nonzero(same) >= self.per_shot_cap and (same & ready).any():
            return self._oldest(same & ready), "evict_shot_cap"
        # a newer or smaller shot takes the place of the oldest sample of a shot at its cap; most
        # often that is the oldest sample of all (a long shot filled the buffer), checked cheaply first
        oldest = self._oldest(ready)
        cam, sh = self._m_camera_id[oldest], self._m_shot[oldest]
        if np.count_nonzero(self._same_shot(taken, cam, sh)) >= self.per_shot_cap:
            return oldest, "evict_shot_cap"
        over = ready & self._in_full_shots(taken)
        if over.any():
            return self._oldest(over), "evict_shot_cap"
        return oldest, "evict_oldest"

    def _same_shot(self, taken: np.ndarray, camera_id: int, shot: int) -> np.ndarray:
        return taken & (self._m_camera_id == camera_id) & (self._m_shot == shot)

    def _oldest(self, among: np.ndarray) -> int:
        return int(np.where(among, self._m_put_seq, _NEVER).argmin())

    def _in_full_shots(self, taken: np.ndarray) -> np.ndarray:
        """Slots whose (camera, shot) holds per_shot_cap samples or more."""
        # one int64 key per (camera, shot); a wrapped product that collided would only pick
        # another victim, never corrupt a sample
        key = np.where(taken, self._m_camera_id * np.int64(1_000_003) + self._m_shot, np.iinfo(np.int64).min)
        _, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
        return taken & (counts[inverse.reshape(-1)] >= self.per_shot_cap)

    def _reclaim_abandoned(self, writing: np.ndarray) -> None:
        now = time.monotonic()
        for i in writing:
            age = now - float(self._m_write_start[i])
            if age < ABANDON_CHECK_S:
                continue
            pid = int(self._m_pid[i])
            if age > ABANDON_FORCE_S or (pid != self._seg.pid and not pid_alive(pid)):
                self._m_state[i] = FREE  # seq stays odd; the next writer moves it on by 2
                self._count("reclaimed")
                log_event(
                    logger, "ring_reclaim", logging.WARNING, name=self.name, slot=int(i), writer_pid=pid, age_s=age
                )

    # ---- reading --------------------------------------------------------------------------
    def new_batch(self, capacity: int) -> Batch:
        return Batch(capacity, self.height, self.width)

    def sample(
        self,
        batch_size: int,
        rng: np.random.Generator | None = None,
        mode: str | None = None,
        half_life_s: float | None = None,
        out: Batch | None = None,
    ) -> Batch:
        """Copy up to batch_size samples out of the buffer.

        mode "uniform" draws every held sample alike; "recency" weights one put `age` seconds ago
        by 0.5 ** (age / half_life_s). Draws are without replacement while the buffer holds
        enough samples. A slot being rewritten during the copy is redrawn, a bounded number of
        times, so the batch may come back short; an empty buffer gives an empty batch at once."""
        self._seg.check()
        rng = rng if rng is not None else np.random.default_rng()
        mode = mode or self.sampling
        if mode not in ("uniform", "recency"):
            raise ValueError(f"sample mode must be uniform or recency, got {mode!r}")
        half_life = float(half_life_s or self.half_life_s)
        if out is None:
            out = self.new_batch(batch_size)
        elif out.capacity < batch_size or (out.height, out.width) != (self.height, self.width):
            raise ValueError(
                f"out batch holds {out.capacity} of {out.width}x{out.height}, "
                f"need {batch_size} of {self.width}x{self.height}"
            )
        out.n = 0
        seq = self._seq
        ready = (self._m_state == READY) & (seq % 2 == 0)
        cand = np.flatnonzero(ready)
        if cand.size == 0 or batch_size <= 0:
            return out
        p = None
        if mode == "recency":
            age = time.monotonic() - self._m_put_time[cand]
            w = np.exp2(-(age - age.min()) / half_life)  # relative to the newest: no underflow
            p = w / w.sum()
        picks = list(rng.choice(cand, size=batch_size, replace=batch_size > cand.size, p=p))
        k, retries, attempts = 0, 0, 0
        while k < batch_size and attempts < 2 * batch_size + 8:
            attempts += 1
            i = picks.pop() if picks else int(rng.choice(cand, p=p))
            s1 = int(seq[i])
            if s1 & 1:
                retries += 1
                continue
            out._s["frames"][k] = self._frames[i]
            out._s["trimaps"][k] = self._trimaps[i]
            out._s["probs"][k] = self._probs[i]
            out._s["flows"][k] = self._flows[i]
            out._meta[k] = self._meta[i]
            if int(seq[i]) != s1 or out._meta["state"][k] != READY:
                retries += 1  # rewritten while we copied: the copy may be torn, so drop it
                continue
            out._slots[k] = i
            k += 1
        out.n = k
        self._count("samples", k)
        self._count("sample_retries", retries)
        return out

    # ---- relabelling (the learner's bootstrapping rounds) -----------------------------------
    def ready_slots(self) -> np.ndarray:
        """Indices of the slots holding a sample now, newest first (a snapshot: any may be
        replaced later; the oldest soonest)."""
        self._seg.check()
        slots = np.flatnonzero((self._m_state == READY) & (self._seq % 2 == 0))
        return slots[np.argsort(self._m_put_seq[slots], kind="stable")[::-1]]

    def put_seq(self) -> int:
        """The put_seq of the newest put so far (0 before the first): a cursor for slots_after."""
        self._seg.check()
        return int(self._hdr["put_seq"][0])

    def slots_after(self, put_seq: int) -> np.ndarray:
        """Slots holding samples put after `put_seq`, oldest first: a reader that follows the
        buffer (a rig's sender, motionmask/remote_send.py) remembers the last put_seq it read."""
        self._seg.check()
        after = self._m_put_seq > np.uint64(max(0, put_seq))
        slots = np.flatnonzero((self._m_state == READY) & after)
        # stop short of a slot still being written (put_seq is taken before the copy), or the
        # reader's cursor would pass it; one left by a dead writer holds nobody up for long
        writing = np.flatnonzero(
            (self._m_state == WRITING) & after & (time.monotonic() - self._m_write_start < ABANDON_CHECK_S)
        )
        if writing.size:
            slots = slots[self._m_put_seq[slots] < self._m_put_seq[writing].min()]
        return slots[np.argsort(self._m_put_seq[slots], kind="stable")]

    def totals(self) -> dict[str, int]:
        """The counters of stats() alone (puts, samples, ...), summed over every process: cheap
        enough to read per sample (a rate limiter compares samples drawn with puts)."""
        self._seg.check()
        counts = self._clients["counts"].sum(axis=0)
        return {name: int(counts[i]) for name, i in _C.items()}

    def read(self, slots: np.ndarray | list[int], out: Batch | None = None) -> Batch:
        """Copy the given slots out, in order, skipping any that is being written or no longer
        holds a sample (seqlock, as in sample(); never waits). Does not count as samples drawn:
        the offline streamer paces itself on those. `out.slots` and `out.put_seq` name each copy
        for update_labels."""
        self._seg.check()
        slots = [int(i) for i in slots]
        if out is None:
            out = self.new_batch(max(1, len(slots)))
        elif out.capacity < len(slots) or (out.height, out.width) != (self.height, self.width):
            raise ValueError(
                f"out batch holds {out.capacity} of {out.width}x{out.height}, "
                f"need {len(slots)} of {self.width}x{self.height}"
            )
        seq, k = self._seq, 0
        for i in slots:
            s1 = int(seq[i])
            if s1 & 1 or self._m_state[i] != READY:
                continue
            out._s["frames"][k] = self._frames[i]
            out._s["trimaps"][k] = self._trimaps[i]
            out._s["probs"][k] = self._probs[i]
            out._s["flows"][k] = self._flows[i]
            out._meta[k] = self._meta[i]
            if int(seq[i]) != s1 or out._meta["state"][k] != READY:
                continue
            out._slots[k] = i
            k += 1
        out.n = k
        return out

    def update_labels(
        self, slot: int, put_seq: int, trimap: np.ndarray, prob: np.ndarray | None = None, timeout_s: float = 0.1
    ) -> bool:
        """Replace the trimap (and, if given, the probability, u8) of the sample that `put_seq`
        names, if slot `slot` still holds it. False, and counted, when the sample was evicted or is
        being replaced meanwhile, or the lock stayed busy for timeout_s: a label never lands on
        another sample.

        Done under the allocation lock, which every writer takes to claim a slot, so no writer can
        claim this one during the copy (two arrays of a slot: tens of microseconds, within what a
        streamer's put already waits for). The sequence number is odd during the copy and moves on
        by 2, so a reader copying the slot meanwhile drops its copy, as for any rewrite."""
        self._seg.check()
        h, w = self.height, self.width
        if (
            trimap.shape != (h, w)
            or trimap.dtype != np.uint8
            or (prob is not None and (prob.shape != (h, w) or prob.dtype != np.uint8))
        ):
            raise ValueError(
                f"labels must be {w}x{h} uint8 like the slots, got trimap {trimap.shape} "
                f"{trimap.dtype}" + ("" if prob is None else f", prob {prob.shape} {prob.dtype}")
            )
        if not self._acquire(timeout_s):
            self._count("relabel_refused")
            return False
        try:
            s = int(self._seq[slot])
            if s & 1 or self._m_state[slot] != READY or int(self._m_put_seq[slot]) != int(put_seq):
                ok = False
            else:
                self._seq[slot] = s + 1
                self._trimaps[slot] = trimap
                if prob is not None:
                    self._probs[slot] = prob
                self._seq[slot] = s + 2
                ok = True
        finally:
            self._release()
        self._count("relabels" if ok else "relabel_refused")
        return ok

    # ---- statistics -----------------------------------------------------------------------
    def stats(self) -> dict:
        """A snapshot for logs and dashboards; counts are totals over every process."""
        self._seg.check()
        state = self._m_state.copy()
        ready = state == READY
        counts = self._clients["counts"].sum(axis=0)
        c = {name: int(counts[i]) for name, i in _C.items()}
        by_camera: dict[str, int] = {}
        by_shot: dict[str, dict[int, int]] = {}
        cams, shots = self._m_camera[ready], self._m_shot[ready]
        for cam, shot in zip(cams.tolist(), shots.tolist()):
            name = cam.decode(errors="replace")
            by_camera[name] = by_camera.get(name, 0) + 1
            per = by_shot.setdefault(name, {})
            per[int(shot)] = per.get(int(shot), 0) + 1
        fill = int(ready.sum())
        ages = time.monotonic() - self._m_put_time[ready]
        drops = {"lock_timeout": c["drop_lock_timeout"], "no_slot": c["drop_no_slot"], "lost_slot": c["drop_lost_slot"]}
        return {
            "name": self.name,
            "capacity": self.capacity,
            "slot": [self.width, self.height],
            "bytes": len(self._seg.mm),
            "per_shot_cap": self.per_shot_cap,
            "fill": fill,
            "fill_fraction": fill / self.capacity,
            "writing": int((state == WRITING).sum()),
            "puts": c["puts"],
            "drops": drops,
            "drops_total": sum(drops.values()),
            "evictions": {"shot_cap": c["evict_shot_cap"], "oldest": c["evict_oldest"]},
            "reclaimed_abandoned": c["reclaimed"],
            "samples_drawn": c["samples"],
            "sample_retries": c["sample_retries"],
            "relabels": c["relabels"],
            "relabel_refused": c["relabel_refused"],
            "processes": sum(pid_alive(int(p)) for p in self._clients["pid"][1:] if p > 0),
            "oldest_age_s": float(ages.max()) if fill else 0.0,
            "newest_age_s": float(ages.min()) if fill else 0.0,
            "by_camera": by_camera,
            "by_shot": by_shot,
        }


def sample_from_result(result: MaskResult, camera: str, cfg: BufferConfig) -> Sample:
    """Resize a MaskResult into slot form: fit inside train_width x train_height keeping aspect,
    top-left aligned; padding is black in the frame, 128 (don't care) in the trimap, 0 in prob and
    flow. Flow (working resolution) is resized and its vectors rescaled to slot pixels.

    Put only results the pipeline kept (`result.kept`): pruned frames are not training samples.
    That choice stays with the caller, which also decides what to log about the rest."""
    img = result.frame.image
    H, W = img.shape[:2]
    th, tw = cfg.train_height, cfg.train_width
    scale = min(tw / W, th / H)
    w, h = max(1, min(tw, round(W * scale))), max(1, min(th, round(H * scale)))

    def fit(a: np.ndarray, interp: int) -> np.ndarray:
        if a.shape[:2] == (h, w):
            return a
        if interp != cv2.INTER_NEAREST and (a.shape[0] > h or a.shape[1] > w):
            interp = cv2.INTER_AREA  # downscaling: average, don't alias
        return cv2.resize(a, (w, h), interpolation=interp)

    image = np.zeros((th, tw, 3), np.uint8)
    image[:h, :w] = fit(img, cv2.INTER_LINEAR)
    trimap = np.full((th, tw), 128, np.uint8)
    trimap[:h, :w] = fit(result.trimap, cv2.INTER_NEAREST)
    prob = np.zeros((th, tw), np.uint8)
    p = fit(np.ascontiguousarray(result.prob, dtype=np.float32), cv2.INTER_LINEAR)
    prob[:h, :w] = np.clip(p * 255.0 + 0.5, 0, 255).astype(np.uint8)
    flow = None
    if result.flow is not None:
        fh, fw = result.flow.shape[:2]
        f = fit(np.ascontiguousarray(result.flow, dtype=np.float32), cv2.INTER_LINEAR)
        flow = np.zeros((th, tw, 2), np.float16)
        flow[:h, :w, 0] = f[..., 0] * (w / fw)
        flow[:h, :w, 1] = f[..., 1] * (h / fh)
    return Sample(
        camera=camera,
        frame_index=result.frame.index,
        shot=result.shot,
        capture_time=result.frame.timestamp,
        image=image,
        trimap=trimap,
        prob=prob,
        flow=flow,
        valid=(0, 0, h, w),
        source_hw=(H, W),
    )
