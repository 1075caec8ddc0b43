"""What a benchmark's JSON records about where it ran: the CPU model and the git revision, so that
numbers from different machines or commits are never compared by mistake.

    from bench._machine import cpu_model, git_revision  # once ROOT, not bench/, is first on sys.path

Imported as part of `bench`, not as a top-level module, so that a process that multiprocessing
spawns (which re-runs the script from the parent's sys.path, without bench/) imports it too.
"""
from __future__ import annotations

import platform
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
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
        rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return f"{rev}{' + uncommitted changes' if dirty else ''}" if rev else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"
