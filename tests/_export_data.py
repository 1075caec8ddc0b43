"""Real inputs for the exporter and device tests, made once per test session: a tiny mask net
trained for a few steps on real samples in a real ring buffer, and two real exported bundles of
it (the second at another input size). Built under pytest's session temp folder, so every test
file that asks gets the same ones without exporting again; under pytest-xdist, once for all the
workers (in the folder above theirs, which they share, under a lock)."""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "tests" / "data" / "sample.mp4"


@contextmanager
def _shared(tmp_path_factory) -> Iterator[Path]:
    """The export-data folder of this test run, held under an exclusive lock: an xdist worker's
    basetemp is <run's basetemp>/<worker>, so the workers meet in its parent."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    with open(base / "export-data.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        yield base / "export-data"


def trained_checkpoint(tmp_path_factory) -> Path:
    with _shared(tmp_path_factory) as base:
        return _trained(base)


def _trained(base: Path) -> Path:
    ckpt = base / "run" / "checkpoints" / "last.pt"
    if not ckpt.is_file():
        from _learner_data import make_ring, tiny_config

        from learner.samples import RingFeed
        from learner.train import Limits, Trainer, fit

        ring = make_ring(24)
        try:
            fit(Trainer(tiny_config()), RingFeed(ring), base / "run", Limits(steps=25), progress=False)
        finally:
            ring.close()
    return ckpt


def exported(tmp_path_factory) -> Path:
    """An exports folder with two bundles of the trained net: the first at the size it trained at
    (auto: 96 x 96 input, frames fitted into 96 x 72), the second at 128 x 96 (LATEST)."""
    with _shared(tmp_path_factory) as base:
        return _exported(base)


def _exported(base: Path) -> Path:
    out = base / "exports"
    if not (out / "LATEST").is_file():
        from exporter.config import ExportConfig
        from exporter.export import export_checkpoint
        from motionmask.cli import main

        ckpt = _trained(base)
        tmp = base / "exports.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        export_checkpoint(ckpt, tmp, ExportConfig(), frames=sample_frames(8))
        rc = main(
            [
                "export",
                "--checkpoint",
                str(ckpt),
                "--out",
                str(tmp),
                "--size",
                "128x96",
                "--frames",
                str(SAMPLE),
                "--quiet",
            ]
        )  # the command a user runs
        assert rc == 0
        tmp.rename(out)
    return out


def versions_of(exports: Path) -> list[str]:
    from exporter.bundle import versions

    return versions(exports)


def sample_frames(n: int) -> list[np.ndarray]:
    """n real frames (pedestrians, 384 x 288) spread over tests/data/sample.mp4."""
    cap = cv2.VideoCapture(str(SAMPLE))
    frames = []
    while len(frames) < n * 8:
        ok, bgr = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    cap.release()
    return frames[:: max(1, len(frames) // n)][:n]


def copy_version(exports: Path, version: str, dest: Path, point: bool = True) -> Path:
    """Copy one bundle into another exports folder (as a server's folder); point LATEST at it."""
    from exporter.bundle import write_pointer

    dest.mkdir(parents=True, exist_ok=True)
    shutil.copytree(exports / version, dest / version)
    if point:
        write_pointer(dest, version)
    return dest / version
