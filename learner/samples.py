"""How training samples reach the trainer: always through the shared-memory ring buffer
(streamer/shm/ringbuffer.py), filled by streamers with the frames their pruning kept.

  RingFeed     online: the daemon's buffer, attached by name; the streamers fill it and never wait.
  OfflineFeed  `motionmask train INPUT...`: creates its own buffer and runs the streamer on the
               inputs in a separate process that never drops a sample: when the buffer is busy
               it retries, and when it is full it waits until the learner has drawn
               `offline_draws_per_sample` samples per sample it is about to evict (back-pressure).
  next_batch   draws a batch from a feed; on an empty buffer it waits (one log line, then one
               every `wait_log_s`), polling a few times a second: never spins, never crashes.

Sampling uses the trainer's numpy Generator, so a batch is a function of the buffer's content
and that generator's state (what checkpoints store).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import multiprocessing as mp
import os
import queue
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np

from common.errors import SourceError, UserError
from common.log import log_event
from learner.pairs import PairBatch, PairFeed, RingPairFeed
from streamer.config import StreamerConfig
from streamer.motion.prune import pruned_summary, relax_hint
from streamer.shm.pairbuffer import PairBuffer
from streamer.shm.ringbuffer import Batch, BufferConfig, RingBuffer, sample_from_result, slots_for

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (
    ".mp4",
    ".m4v",
    ".mov",
    ".mkv",
    ".avi",
    ".webm",
    ".mpg",
    ".mpeg",
    ".ts",
    ".mts",
    ".flv",
    ".wmv",
    ".3gp",
    ".y4m",
)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
POLL_S = 0.25  # empty buffer: how often to look again


class Feed(Protocol):
    height: int  # slot size of the buffer
    width: int

    def sample(self, n: int, rng: np.random.Generator, out: Batch) -> Batch: ...  # may come back short or empty
    def finished(self) -> bool: ...  # no more samples will come (offline inputs all streamed); live feeds: never
    def check(self) -> None: ...  # raise when samples will never come (the offline streamer failed or found none)


class RingFeed:
    """Samples from a ring buffer that others fill (the daemon's camera processes)."""

    def __init__(
        self, ring: RingBuffer, mode: str | None = None, half_life_s: float | None = None, pairs: PairFeed | None = None
    ):
        self.ring = ring
        self.mode = mode or ring.sampling
        self.half_life_s = half_life_s
        self.height, self.width = ring.height, ring.width
        self.pairs = pairs  # tracked-patch pairs (streamer.patches.enabled), or None

    def sample(self, n: int, rng: np.random.Generator, out: Batch) -> Batch:
        return self.ring.sample(n, rng, mode=self.mode, half_life_s=self.half_life_s, out=out)

    def sample_pairs(self, n: int, rng: np.random.Generator) -> PairBatch | None:
        """Tracked-patch pairs (learner/pairs.py); None while none are held or mining is off."""
        return self.pairs.sample_pairs(n, rng) if self.pairs is not None else None

    def check(self) -> None:
        pass

    def finished(self) -> bool:
        return False  # a live buffer keeps filling

    def fill(self) -> int:
        return int(self.ring.stats()["fill"])


def next_batch(
    feed: Feed,
    n: int,
    rng: np.random.Generator,
    out: Batch,
    stop: Callable[[], bool] | None = None,
    wait_log_s: float = 30.0,
) -> Batch | None:
    """A non-empty batch of up to n samples, waiting while the buffer is empty; None if `stop()`
    turns true while waiting."""
    waiting_since = last_log = 0.0
    while True:
        feed.check()
        batch = feed.sample(n, rng, out)
        if len(batch):
            if waiting_since:
                log_event(logger, "samples_arrived", waited_s=time.monotonic() - waiting_since)
            return batch
        if stop is not None and stop():
            return None
        now = time.monotonic()
        if not waiting_since:
            waiting_since = now
        if now - last_log >= wait_log_s:
            log_event(logger, "waiting_for_samples", reason="buffer empty", waited_s=round(now - waiting_since, 1))
            last_log = now
        time.sleep(POLL_S)


# ---- offline: the streamer on files, in a child process -------------------------------------


def _natural_key(name: str) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def expand_inputs(inputs: list[str]) -> list[str]:
    """INPUT arguments -> sources for open_source: a file stays a file; a folder holding videos
    gives its videos (natural order, not recursive); any other folder is one image sequence;
    URLs and cameras pass through. A missing path is a UserError naming it."""
    out: list[str] = []
    for text in inputs:
        p = Path(text).expanduser()
        if "://" in text or re.fullmatch(r"camera:\d+|/dev/video\d+", text):
            out.append(text)
        elif p.is_dir():
            entries = sorted((e for e in p.iterdir() if e.is_file()), key=lambda e: _natural_key(e.name))
            videos = [str(e) for e in entries if e.suffix.lower() in VIDEO_EXTENSIONS]
            if videos:
                out += videos
            elif any(e.suffix.lower() in IMAGE_EXTENSIONS for e in entries):
                out.append(str(p))
            else:
                raise UserError(f"{text}: folder has no videos and no images")
        elif p.exists():
            out.append(str(p))
        else:
            raise UserError(f"{text}: no such file or folder")
    if not out:
        raise UserError("no inputs: pass video files or folders")
    return out


def offline_buffer(cfg: BufferConfig, frames: int, max_mb: float) -> BufferConfig:
    """The offline buffer: large enough to hold every frame of the inputs, within
    [cfg.memory_mb, max_mb], and without a per-shot cap. The cap keeps one camera's long shot
    from crowding a live buffer; offline it would evict a shot's samples before the learner saw
    them, while a full buffer here evicts only the oldest, paced by the learner (_put_no_drop)."""
    per_slot = slots_for(cfg.train_height, cfg.train_width, 64.0) or 1
    mb_per_slot = 64.0 / per_slot
    want_mb = max(cfg.memory_mb, min(max_mb, (frames + 8) * mb_per_slot * 1.02))
    new = dataclasses.replace(cfg, memory_mb=want_mb, name="")
    new.per_shot_cap = new.slots()
    return new


@dataclasses.dataclass
class OfflineProgress:
    inputs: int = 0
    inputs_done: int = 0
    frames: int = 0
    kept: int = 0
    puts: int = 0
    waited_s: float = 0.0  # time the streamer spent waiting on back-pressure
    pruned: dict[str, int] = dataclasses.field(default_factory=dict)  # frames pruned, per reason
    done: bool = False
    errors: list[str] = dataclasses.field(default_factory=list)


class OfflineFeed:
    """Context manager: a ring buffer of its own, and a streamer process filling it from files."""

    def __init__(
        self,
        inputs: list[str],
        streamer_cfg: StreamerConfig,
        buffer_cfg: BufferConfig,
        draws_per_sample: float = 4.0,
        max_buffer_mb: float = 1024.0,
        log_level: int | None = None,
        streamer_threads: int = 1,
    ):
        self.specs = expand_inputs(inputs)
        self.streamer_cfg = streamer_cfg
        frames = sum(_frame_count(s, streamer_cfg) for s in self.specs)
        self.buffer_cfg = offline_buffer(buffer_cfg, frames, max_buffer_mb)
        self.draws_per_sample = draws_per_sample
        self.streamer_threads = streamer_threads  # OpenCV threads of the streamer process
        self.log_level = log_level if log_level is not None else logging.getLogger().getEffectiveLevel()
        self.progress = OfflineProgress(inputs=len(self.specs))
        self.ring: RingBuffer | None = None
        self.pair_store: PairBuffer | None = None  # with streamer.patches.enabled: pairs mined from the inputs
        self._proc = None
        self._events = None
        self._stop = None
        self.height, self.width = self.buffer_cfg.train_height, self.buffer_cfg.train_width

    def __enter__(self) -> OfflineFeed:
        self.ring = RingBuffer.create(self.buffer_cfg)
        pc = self.streamer_cfg.patches
        if pc.enabled:
            try:
                self.pair_store = PairBuffer.create(pc.size, pc.store_mb, lock_timeout_ms=pc.lock_timeout_ms)
            except BaseException:
                self.close()
                raise
        ctx = mp.get_context("spawn")  # never fork a process that holds torch's thread pools
        self._events = ctx.Queue()
        self._stop = ctx.Event()
        self._proc = ctx.Process(
            target=_produce,
            name="motionmask-streamer",
            daemon=True,
            args=(
                self.specs,
                self.streamer_cfg,
                self.ring.name,
                self.buffer_cfg,
                self.draws_per_sample,
                self._events,
                self._stop,
                self.log_level,
                self.streamer_threads,
                self.pair_store.name if self.pair_store is not None else "",
            ),
        )
        self._proc.start()
        log_event(
            logger,
            "offline_streamer_start",
            inputs=len(self.specs),
            pid=self._proc.pid,
            buffer=self.ring.name,
            slots=self.ring.capacity,
        )
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def sample(self, n: int, rng: np.random.Generator, out: Batch) -> Batch:
        return self.ring.sample(n, rng, mode="uniform", out=out)

    def sample_pairs(self, n: int, rng: np.random.Generator) -> PairBatch | None:
        """Tracked-patch pairs mined from the inputs (learner/pairs.py); None while none are held
        or streamer.patches is off. Pairs are never waited for: frames pace the training."""
        if self.pair_store is None:
            return None
        return RingPairFeed(self.pair_store).sample_pairs(n, rng)

    def fill(self) -> int:
        return self.progress.puts if self.progress.puts <= self.ring.capacity else self.ring.capacity

    def poll(self) -> OfflineProgress:
        """Read the streamer's progress messages."""
        p = self.progress
        while True:
            try:
                kind, data = self._events.get_nowait()
            except (queue.Empty, OSError, ValueError):
                break
            if kind == "progress":
                p.frames, p.kept, p.puts, p.waited_s, p.pruned = data
            elif kind == "input_done":
                p.inputs_done += 1
            elif kind == "input_error":
                p.inputs_done += 1
                p.errors.append(data)
                log_event(logger, "input_skipped", logging.WARNING, error=data)
            elif kind == "done":
                p.frames, p.kept, p.puts, p.waited_s, p.pruned = data
                p.done = True
            elif kind == "fatal":
                p.errors.append(data)
        return p

    def finished(self) -> bool:
        return self.poll().done

    def check(self) -> None:
        p = self.poll()
        if p.done:
            if p.kept == 0:
                why = "; ".join(p.errors) or pruned_summary(p.pruned)
                hint = relax_hint(p.pruned, self.streamer_cfg.prune) or "relax streamer.prune"
                raise UserError(
                    f"no training samples: the motion masks of {p.frames} frames were all pruned"
                    f"{f' ({why})' if why else ''}; use clips with moving objects, or {hint}"
                )
            return
        if self._proc is not None and not self._proc.is_alive():
            self.poll()
            if not self.progress.done:
                last = self.progress.errors[-1] if self.progress.errors else f"exit code {self._proc.exitcode}"
                raise UserError(f"the streamer process stopped: {last}")

    def close(self) -> None:
        if self._proc is not None:
            self._stop.set()
            self._proc.join(timeout=5.0)
            if self._proc.is_alive():
                self._proc.terminate()
                self._proc.join(timeout=2.0)
            self._proc = None
        if self._events is not None:
            self.poll()
            self._events.close()
            self._events.cancel_join_thread()
            self._events = None
        if self.ring is not None:
            self.ring.close()
            self.ring = None
        if self.pair_store is not None:
            self.pair_store.close()
            self.pair_store = None


def _frame_count(spec: str, cfg: StreamerConfig) -> int:
    """Frames of a file or folder as its container says (for sizing the buffer); opening it also
    checks that it is video, before the run starts. Unknown counts (streams) count as 1000."""
    from streamer.sources import open_source  # the child imports this module too: keep the import light

    if "://" in spec or re.fullmatch(r"camera:\d+|/dev/video\d+", spec):
        return 1000  # live: opening it here would hold the camera the streamer is about to open
    with open_source(spec, cfg.source) as source:
        return int(source.frame_count or 1000)


class _Stop:
    """The parent asked us to stop, or died (SIGKILL): then nobody will ever draw what we wait for."""

    def __init__(self, event):
        self.event = event
        self.parent = os.getppid()

    def is_set(self) -> bool:
        return self.event.is_set() or os.getppid() != self.parent


def _put_no_drop(ring: RingBuffer, sample, my_puts: int, draws_per_sample: float, stop: _Stop) -> float:
    """put() until it succeeds. When the put would evict, first wait for the learner to draw
    draws_per_sample x (evictions so far) samples. Returns the seconds spent waiting."""
    t0 = time.monotonic()
    evictions = my_puts + 1 - ring.capacity
    if draws_per_sample > 0 and evictions > 0:
        need = math.ceil(draws_per_sample * evictions)
        while not stop.is_set() and ring.stats()["samples_drawn"] < need:
            time.sleep(0.02)
    while not stop.is_set() and not ring.put(sample):
        time.sleep(0.002)  # lock busy or every slot being written: try again, never drop
    return time.monotonic() - t0


def _produce(
    specs: list[str],
    cfg: StreamerConfig,
    buffer_name: str,
    buffer_cfg: BufferConfig,
    draws_per_sample: float,
    events,
    stop,
    log_level: int,
    threads: int = 1,
    pairs_name: str = "",
) -> None:
    """The offline streamer process: inputs one after another, kept results into the buffer, and
    with `pairs_name` every result through a PatchMiner, its pairs into that store (which keeps
    the newest: pairs are not paced like frames)."""
    logging.basicConfig(
        level=log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s", datefmt="%Y-%m-%dT%H:%M:%S"
    )
    import cv2

    cv2.setNumThreads(threads)
    streamer = _OfflineStreamer(cfg, buffer_cfg, draws_per_sample, events, _Stop(stop))
    streamer.ring = RingBuffer.attach(buffer_name, buffer_cfg)
    if pairs_name:
        streamer.store = PairBuffer.attach(pairs_name, cfg.patches.lock_timeout_ms)
    try:
        streamer.run(specs)
    except KeyboardInterrupt:
        pass  # the parent handles Ctrl-C and stops us through `stop`
    except BaseException as e:
        events.put(("fatal", f"{type(e).__name__}: {e}"))
        raise
    finally:
        streamer.ring.close()
        if streamer.store is not None:
            streamer.store.close()


@dataclasses.dataclass
class _OfflineStreamer:
    """The motion pipeline of the offline streamer process (_produce), and what it tells the
    parent through `events`: progress twice a second, each input done or skipped, the end."""

    cfg: StreamerConfig
    buffer_cfg: BufferConfig
    draws_per_sample: float
    events: object  # multiprocessing Queue of (kind, data)
    stop: _Stop
    ring: RingBuffer | None = None
    store: PairBuffer | None = None  # with streamer.patches.enabled: the pair store
    frames: int = 0
    kept: int = 0
    puts: int = 0
    waited: float = 0.0  # seconds put() waited on back-pressure
    pruned: dict[str, int] = dataclasses.field(default_factory=dict)
    reported: float = dataclasses.field(default_factory=time.monotonic)

    def run(self, specs: list[str]) -> None:
        for i, spec in enumerate(specs):
            if self.stop.is_set():
                return
            if not self.stream(i, spec):
                continue
            if self.stop.is_set():
                return
            self.events.put(("input_done", spec))
        self.events.put(("done", (self.frames, self.kept, self.puts, self.waited, self.pruned)))

    def stream(self, index: int, spec: str) -> bool:
        """One input, to its end or until stopped; False when it cannot be opened."""
        from streamer.motion.pipeline import MotionSegmenter
        from streamer.sources import open_source

        try:
            source = open_source(spec, self.cfg.source)
        except SourceError as e:
            self.events.put(("input_error", str(e)))
            return False
        camera = f"{index}:{source.source_id}"  # per-shot caps count (camera, shot): one per input
        seg = MotionSegmenter(self.cfg)
        miner = None
        if self.store is not None:
            from streamer.motion.patches import PatchMiner

            miner = PatchMiner(self.cfg.patches, camera)
        with source:
            frame_iter = iter(source)
            while not self.stop.is_set():
                try:
                    frame = next(frame_iter, None)
                except SourceError as e:
                    self.events.put(("input_error", str(e)))
                    break
                for r in seg.push(frame) if frame is not None else seg.flush():
                    self.take(r, camera, miner)
                if time.monotonic() - self.reported > 0.5:
                    self.events.put(("progress", (self.frames, self.kept, self.puts, self.waited, dict(self.pruned))))
                    self.reported = time.monotonic()
                if frame is None:
                    break
        if miner is not None:
            miner.flush()
            stats = miner.stats.as_dict()
            log_event(
                logger,
                "offline_pairs",
                input=spec,
                **{k: stats[k] for k in ("examined", "started", "pairs", "ms_per_frame") if k in stats},
            )
        return True

    def take(self, r, camera: str, miner) -> None:
        """One pipeline result: its pairs into the store, the sample into the buffer if kept."""
        self.frames += 1
        if miner is not None:
            for pair in miner.push(r):
                while not self.stop.is_set() and not self.store.put(pair):
                    time.sleep(0.002)  # lock busy: offline, a pair is not worth dropping
        if r.kept:
            self.kept += 1
            self.waited += _put_no_drop(
                self.ring, sample_from_result(r, camera, self.buffer_cfg), self.puts, self.draws_per_sample, self.stop
            )
            self.puts += 1
        else:
            self.pruned[r.reason] = self.pruned.get(r.reason, 0) + 1
