"""What every benchmark shares: where it ran (CPU model, git revision), where it writes (bench/out),
a free loopback port, one-thread re-execution, and contact-sheet tiles.

    from bench.common import OUT, cpu_model, git_revision, save_json

Benchmarks run as modules from the repository root (`python -m bench.quality`), so `bench`,
`common`, `streamer`, `learner`, ... all import as packages and nothing edits sys.path.
"""

from __future__ import annotations

import json
import os
import platform
import random
import signal
import socket
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from common.atomic import write_bytes
from learner.progress import draws_bar

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
THREAD_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
)


# ---- progress ----------------------------------------------------------------------------------


def progress_bar(total: int, desc: str, unit: str = "frame") -> tqdm:
    """A bar on stderr, drawn only on a terminal (learner.progress.draws_bar)."""
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=not draws_bar(True))


# ---- where it ran ----------------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU's model name, so that numbers from different machines are never compared by mistake."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_revision() -> str:
    """The checkout's short commit, "+ uncommitted changes" when tracked files differ from it."""
    try:
        rev = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return f"{rev}{' + uncommitted changes' if dirty else ''}" if rev else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# ---- what it writes --------------------------------------------------------------------------


def save_json(path: str | Path, doc: object, indent: int = 2, default=None) -> None:
    """Write a benchmark's JSON whole (a temp file renamed over it), creating its folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(path, (json.dumps(doc, indent=indent, default=default) + "\n").encode(), fsync=False)


# ---- how it runs -----------------------------------------------------------------------------


def fmt(v: float | None, digits: int = 3) -> str:
    """A figure for a markdown table: `digits` decimals, "-" where there is none."""
    return "-" if v is None else f"{v:.{digits}f}"


_handed_out: set[int] = set()
_draw = random.SystemRandom()  # not `random`: every test worker must draw differently
PORTS = (20000, 32768)  # under Linux's ephemeral range: no outgoing connection takes one meanwhile


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now and that this process has not
    handed out before. Drawn at random from PORTS, not asked of the kernel with port 0: the kernel
    gave the same free port to two binds in a row, and a config that names one port for two
    sockets never comes up (a soak run in CI died of exactly that); parallel test workers asking
    it would share its habits too."""
    while True:
        port = _draw.randrange(*PORTS)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:  # in use, or lingering: draw again
                continue
        _handed_out.add(port)
        return port


def stop(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """Stop a daemon the way systemd does: SIGTERM, then SIGKILL after `timeout` seconds."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def reexec_single_threaded(module: str) -> None:
    """Replace this process with `python -m module argv...` with every BLAS/OpenMP pool at one
    thread (a no-op once they are): the pools size themselves when numpy or torch is first
    imported, so an honest single-core benchmark sets the environment and starts again. The same
    working directory and environment, so `bench` imports as it did."""
    if any(os.environ.get(v) != "1" for v in THREAD_VARS):
        os.execve(
            sys.executable,
            [sys.executable, "-m", module, *sys.argv[1:]],
            {**os.environ, **{v: "1" for v in THREAD_VARS}},
        )


# ---- contact sheets --------------------------------------------------------------------------


def tile(rgb: np.ndarray, width: int, label: str) -> np.ndarray:
    """A frame scaled to `width` with a label a person can read on any frame."""
    h = int(round(rgb.shape[0] * width / rgb.shape[1]))
    t = cv2.resize(rgb, (width, h), interpolation=cv2.INTER_AREA)
    # a dark outline under white text reads on any frame
    cv2.putText(t, label, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(t, label, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    return t


def overlay(rgb: np.ndarray, prob: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """The frame darkened where the mask says background, tinted red where it says foreground."""
    fg = (prob >= threshold)[..., None]
    out = (rgb * 0.35).astype(np.uint8)
    tint = (0.5 * rgb + 0.5 * np.array([255, 40, 40])).astype(np.uint8)
    return np.where(fg, tint, out)
