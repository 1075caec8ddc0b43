"""What a training run reports as it goes, every learner.train.log_every steps: one line of
RUN/train.jsonl, and one update of the progress display: a bar on a terminal, a log line when
stderr is a file or a pipe (no carriage returns in logs), or nothing (--quiet, the daemon).

    log = IntervalLog(cfg.train.log_every, TrainLog.open(run_dir), display(True, limits.steps, step, status))
    log.add(trainer, result)     # after every step; writes when the interval is complete
    first, last, heads = log.close()
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from common.log import log_event
from streamer.writer import append_line

logger = logging.getLogger(__name__)

TRAIN_LOG = "train.jsonl"
SHORT = {"mask": "mask", "embedding": "emb", "segments": "seg"}  # progress bar labels


def draws_bar(enabled: bool) -> bool:
    """A progress bar only on a terminal: redirected to a file, carriage-return redraws are noise."""
    return enabled and sys.stderr.isatty()


class Display:
    """What a run shows as it goes; this base shows nothing (--quiet, the daemon)."""

    def step(self, skipped: bool) -> None:
        pass

    def interval(self, record: dict, ema: float, heads: dict[str, float]) -> None:
        pass

    def close(self) -> None:
        pass


class Bar(Display):
    """tqdm on stderr: steps of the run (of `total`), the smoothed loss, crops/s and `status()`."""

    def __init__(self, total: int, initial: int, status: Callable[[], str] | None = None):
        self.status = status
        self.bar = tqdm(
            total=total or None, initial=initial, unit="step", desc="train", file=sys.stderr, dynamic_ncols=True
        )

    def step(self, skipped: bool) -> None:
        self.bar.update(0 if skipped else 1)

    def interval(self, record: dict, ema: float, heads: dict[str, float]) -> None:
        extra = f" {self.status()}" if self.status is not None else ""
        names = "".join(f" {SHORT.get(k, k)} {v:.3f}" for k, v in heads.items())
        self.bar.set_postfix_str(f"loss {ema:.3f}{names} {record['crops_per_s']:.0f} crops/s{extra}", refresh=False)

    def close(self) -> None:
        self.bar.close()


class Lines(Display):
    """One log line per interval (event=train_progress): what the bar shows, for a file."""

    def __init__(self, total: int, status: Callable[[], str] | None = None):
        self.total, self.status = total, status

    def interval(self, record: dict, ema: float, heads: dict[str, float]) -> None:
        step = f"{record['step']}/{self.total}" if self.total else record["step"]
        status = self.status() if self.status is not None else ""
        log_event(
            logger,
            "train_progress",
            step=step,
            loss=record["loss"],
            **{k: v for k, v in record.items() if k.startswith("loss_")},
            crops_per_s=record["crops_per_s"],
            lr=record["lr"],
            train_s=record["train_s"],
            **({"status": status} if status else {}),
        )


def display(enabled: bool, total: int, initial: int, status: Callable[[], str] | None = None) -> Display:
    """The run's progress display: a bar on a terminal, log lines otherwise, nothing when disabled."""
    if not enabled:
        return Display()
    return Bar(total, initial, status) if draws_bar(enabled) else Lines(total, status)


class TrainLog:
    """RUN/train.jsonl, opened for appending (a resumed run goes on in the same file)."""

    def __init__(self, fd: int):
        self.fd = fd

    @classmethod
    def open(cls, run_dir: Path | None) -> TrainLog | None:
        if run_dir is None:
            return None
        run_dir.mkdir(parents=True, exist_ok=True)
        return cls(os.open(run_dir / TRAIN_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644))

    def write(self, record: dict) -> None:
        try:
            append_line(self.fd, (json.dumps(record, separators=(",", ":")) + "\n").encode())
        except OSError as e:  # a full disk costs this line of train.jsonl, not the run
            log_event(logger, "train_log_failed", logging.WARNING, step=record["step"], error=e)

    def close(self) -> None:
        os.close(self.fd)


@dataclass
class IntervalLog:
    """The losses and crops of the current interval; every `every` steps (counted by the run's
    step) their mean loss, crops/s, lr, ... go to train.jsonl and to the display."""

    every: int
    file: TrainLog | None
    show: Display = field(default_factory=Display)
    losses: list[float] = field(default_factory=list)
    heads: dict[str, list[float]] = field(default_factory=dict)  # extra heads: each head's losses of the interval
    crops: int = 0
    since: float = field(default_factory=time.monotonic)
    ema: float | None = None  # the loss, smoothed over steps (the bar shows it)
    first_loss: float = math.nan  # mean loss of the first interval written...
    last_loss: float = math.nan  # ... and of the last
    last_heads: dict[str, float] = field(default_factory=dict)

    def add(self, trainer, result) -> None:
        """After every step (result: learner.train.StepResult); a skipped step counts for nothing."""
        self.show.step(result.skipped)
        if result.skipped:
            return
        self.losses.append(result.loss)
        self.crops += result.crops
        self.ema = result.loss if self.ema is None else 0.98 * self.ema + 0.02 * result.loss
        for name, value in result.losses.items():
            self.heads.setdefault(name, []).append(value)
        if trainer.step_count % self.every == 0:
            self._write(trainer, result)

    def _write(self, trainer, result) -> None:
        now = time.monotonic()
        rate = self.crops / max(now - self.since, 1e-9)
        self.last_loss = float(np.mean(self.losses))
        self.first_loss = self.last_loss if math.isnan(self.first_loss) else self.first_loss
        record = {
            "step": trainer.step_count,
            "loss": round(self.last_loss, 5),
            "lr": result.lr,
            "crops_per_s": round(rate, 1),
            "grad_norm": round(result.grad_norm, 4),
            "nan_skipped": trainer.nan_skipped,
            "train_s": round(trainer.train_seconds, 2),
            "time": round(time.time(), 3),
        }
        if self.heads:  # each head's loss of the interval (unweighted), when it had one
            self.last_heads = {k: float(np.mean(v)) for k, v in self.heads.items()}
            record.update({f"loss_{k}": round(v, 5) for k, v in self.last_heads.items()})
        if self.file is not None:
            self.file.write(record)
        self.show.interval(record, self.ema, self.last_heads if self.heads else {})
        self.losses, self.crops, self.since, self.heads = [], 0, now, {}

    def close_display(self) -> None:
        self.show.close()

    def close(self) -> tuple[float, float, dict[str, float]]:
        """Closes train.jsonl; returns the first and the last mean loss and each head's last
        (an incomplete last interval counts as the last)."""
        if self.file is not None:
            self.file.close()
        if self.losses:
            self.last_loss = float(np.mean(self.losses))
            self.first_loss = self.last_loss if math.isnan(self.first_loss) else self.first_loss
        return self.first_loss, self.last_loss, {k: float(np.mean(v)) for k, v in self.heads.items()} or self.last_heads
