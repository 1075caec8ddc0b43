"""Where training runs: the device (CUDA or the CPU), its precision (bf16 autocast or float32),
and torch's CPU threads next to a streamer that needs cores too.

    device = resolve_device(cfg.train.device, cfg.train.strict_device)
    bf16 = use_bf16(device, cfg.train.cpu_precision)
    torch.set_num_threads(cpu_threads(cfg.train.threads))
    trial = ThreadTrial()                   # fit() offline on the CPU: all cores once the streamer is done, if faster
"""

from __future__ import annotations

import logging
import os

import torch

from common.errors import UserError
from common.log import log_event

logger = logging.getLogger(__name__)


def resolve_device(requested: str = "auto", strict: bool = False) -> torch.device:
    """auto: CUDA when there is one. cuda without CUDA: the CPU and one warning, or, when strict,
    a UserError."""
    if requested == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if requested == "cuda":
        why = "this torch is a CPU build" if torch.version.cuda is None else "no CUDA device is visible"
        if strict:
            raise UserError(
                f"learner.train.device is cuda but CUDA is not available ({why}); "
                f"use --device cpu, or set learner.train.strict_device: false to fall back"
            )
        log_event(logger, "device_fallback", logging.WARNING, requested="cuda", using="cpu", reason=why)
    return torch.device("cpu")


def cpu_has_native_bf16() -> bool:
    """The CPU multiplies bf16 in hardware (AVX512-BF16 or AMX): there autocast to bf16 makes a
    training step faster (docs/benchmarks.md). Without those instructions oneDNN emulates bf16,
    which is slower than float32."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def use_bf16(device: torch.device, cpu_precision: str) -> bool:
    """bf16 autocast for training: always on CUDA; on the CPU per learner.train.cpu_precision."""
    if device.type == "cuda":
        return True
    return cpu_precision == "bf16" or (cpu_precision == "auto" and cpu_has_native_bf16())


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cpu_threads(requested: int = 0) -> int:
    """torch's CPU threads: `requested`, or all usable cores but one. On a small machine that one
    is worth more to the streamer than to torch: an intra-op pool that must wait for a busy core
    runs several times slower than one thread fewer (docs/benchmarks.md)."""
    return requested or max(1, available_cores() - 1)


class ThreadTrial:
    """Offline on the CPU, torch runs one thread fewer than the cores while the streamer process
    streams the inputs. Once it is done, try all cores for a few steps and keep them only if steps
    got faster: on a machine busy with other work, an intra-op pool that waits for a busy core is
    several times slower than one thread fewer (docs/benchmarks.md).
    A trial that lost is tried again RETRY_STEPS later: the other work may have been brief."""

    STEPS = 5  # steps timed with all cores
    RETRY_STEPS = 1000

    def __init__(self, not_before: int = 0) -> None:
        self.before: float | None = None  # seconds per step with the streamer's threads
        self.mark = (0, 0.0)  # (step, train_seconds) where the current timing started
        self.old = torch.get_num_threads()
        self.not_before = not_before  # step at which a retry starts timing

    def check(self, trainer, feed) -> ThreadTrial | None:
        """Call after every step; returns None once all cores are kept."""
        step, t = trainer.step_count, trainer.train_seconds
        if self.before is None:  # waiting for the streamer; time the last 25 steps
            if step % 25 or step == self.mark[0]:
                return self
            if not feed.finished() or step < self.not_before + 25:
                self.mark = (step, t)
                return self
            self.before = (t - self.mark[1]) / (step - self.mark[0])
            torch.set_num_threads(available_cores())
            self.mark = (step, t)
            return self
        n = step - self.mark[0]
        after = (t - self.mark[1]) / max(n, 1)
        if n < self.STEPS and after < 3 * self.before:  # a much slower step ends the trial at once
            return self
        kept = after < 0.95 * self.before
        if not kept:
            torch.set_num_threads(self.old)
        log_event(
            logger,
            "train_threads",
            threads=torch.get_num_threads(),
            tried=available_cores(),
            ms_per_step_before=round(self.before * 1000, 1),
            ms_per_step_tried=round(after * 1000, 1),
            retry_at_step=None if kept else step + self.RETRY_STEPS,
        )
        return None if kept else ThreadTrial(not_before=step + self.RETRY_STEPS)
