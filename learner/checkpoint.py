"""Checkpoints of a training run:

    RUN/checkpoints/step_0001200.pt   one per save, the newest `keep` are kept
    RUN/checkpoints/last.pt           always the newest whole checkpoint (a hard link of it)

Each file is written to a temp name, fsynced and renamed, so a crash or SIGKILL leaves the
previous files intact. A checkpoint is a dict of tensors and plain Python values (see
`Trainer.state_dict` in learner/train.py) and loads with torch.load(weights_only=True): opening
one never runs code from the file.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from common.atomic import fsync_dir, write_with
from common.errors import UserError
from common.log import log_event

logger = logging.getLogger(__name__)

FORMAT = "motionmask-learner"
VERSION = 1
CHECKPOINT_DIR = "checkpoints"
LAST = "last.pt"
_STEP_FILE = re.compile(r"^step_(\d{7,})\.pt$")


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR


def step_files(run_dir: str | Path) -> list[Path]:
    """step_*.pt of a run, oldest first."""
    d = checkpoint_dir(run_dir)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _STEP_FILE.match(p.name))]
    return [p for _, p in sorted(found)]


def _link_last(path: Path) -> None:
    """last.pt -> the same file as `path`, swapped in by rename (a copy where links are refused)."""
    last = path.parent / LAST
    tmp = path.parent / f".{LAST}.{os.getpid()}.tmp"
    tmp.unlink(missing_ok=True)
    try:
        os.link(path, tmp)
    except OSError:
        shutil.copyfile(path, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
    os.replace(tmp, last)


class CheckpointWriteError(UserError):
    """A checkpoint that could not be written (a full or failing disk); the previous ones stay whole."""


def _os_error(e: BaseException) -> OSError | None:
    """The OSError behind `e`: torch.save turns a failed write into a RuntimeError of its own."""
    seen = 0
    while e is not None and seen < 8:
        if isinstance(e, OSError):
            return e
        e, seen = e.__cause__ or e.__context__, seen + 1
    return None


def save_checkpoint(run_dir: str | Path, state: dict, keep: int = 3) -> Path:
    """Write state as RUN/checkpoints/step_XXXXXXX.pt, point last.pt at it, remove old ones.
    CheckpointWriteError when the disk refuses (full, read-only): nothing of it is left behind."""
    d = checkpoint_dir(run_dir)
    step = int(state["step"])
    path = d / f"step_{step:07d}.pt"
    try:
        d.mkdir(parents=True, exist_ok=True)
        write_with(path, lambda f: torch.save(state, f), fsync=True)
        _link_last(path)
        fsync_dir(d)
    except (OSError, RuntimeError) as e:
        err = _os_error(e)
        if err is None:
            raise
        raise CheckpointWriteError(
            f"{path}: cannot write the checkpoint ({err.strerror or err}); "
            f"{LAST} still names the previous one; free space in {d}"
        ) from None
    for old in step_files(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint; a missing, truncated, corrupt or foreign file is a one-line UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such checkpoint file")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # zip/pickle errors of every kind: truncated, overwritten, not a checkpoint
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
        m = re.search(r"WeightsUnpickler error:\s*([^\n]*)", text)
        if m and "Unsupported global" in m.group(1):  # a pickle that needs code to load: never run it
            what = m.group(1).split(" was not")[0].strip()
            raise UserError(
                f"{path}: refused: the file holds objects that a safe load does not run "
                f"({what[:160]}); it is not a motionmask checkpoint"
            ) from None
        why = m.group(1) if m else (text.strip().splitlines()[0] if text.strip() else type(e).__name__)
        raise UserError(
            f"{path}: not a readable checkpoint (truncated or corrupt: {why[:160]}); "
            f"delete it to resume from an older one"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"{path}: not a motionmask learner checkpoint")
    if int(state.get("version", -1)) != VERSION:
        raise UserError(
            f"{path}: checkpoint version {state.get('version')} is not supported "
            f"(this motionmask reads version {VERSION})"
        )
    return state


def check_compatible(state: dict, arch: dict, path: str | Path) -> None:
    """UserError naming what differs when a checkpoint's architecture is not the configured one."""
    theirs = state.get("arch", {})
    diffs = [
        f"{k} {theirs.get(k)!r} in the checkpoint vs {arch.get(k)!r} in the config"
        for k in sorted(set(arch) | set(theirs))
        if theirs.get(k) != arch.get(k)
    ]
    if diffs:
        raise UserError(
            f"{path}: incompatible checkpoint: {'; '.join(diffs)}; use the config it was "
            f"trained with, or another --out for a new run"
        )


def find_resume(run_dir: str | Path, map_location: str | torch.device = "cpu") -> tuple[Path, dict] | None:
    """The newest checkpoint of a run that loads: last.pt, else the step files newest first.

    None for a run without checkpoints; a UserError when every checkpoint there is unreadable."""
    d = checkpoint_dir(run_dir)
    candidates = ([d / LAST] if (d / LAST).is_file() else []) + step_files(run_dir)[::-1]
    errors = []
    for path in candidates:
        try:
            return path, load_checkpoint(path, map_location)
        except UserError as e:
            errors.append(str(e))
            log_event(logger, "checkpoint_unreadable", logging.WARNING, path=path, error=str(e))
    if errors:
        raise UserError(f"{d}: no readable checkpoint ({errors[0]}); move the folder away to start afresh")
    return None


@dataclass
class CheckpointClock:
    """When fit() saves: every `every_steps` steps and every `every_minutes` minutes since the
    last save (learner.checkpoint; 0 = off), and whenever asked (a bootstrapping round). fit()
    also saves once at the end, whatever the reason, when a step was done since."""

    every_steps: int
    every_minutes: float
    step: int  # the step of the last save (at first: the run's step when fit() began)
    time: float = field(default_factory=time.monotonic)

    def due(self, step: int, asked: bool = False) -> bool:
        return bool(
            (self.every_steps and step - self.step >= self.every_steps)
            or (self.every_minutes and time.monotonic() - self.time >= self.every_minutes * 60)
            or asked
        )

    def saved(self, step: int) -> None:
        """A save was tried at `step` (a failed one too: the next is tried on schedule)."""
        self.step, self.time = step, time.monotonic()
