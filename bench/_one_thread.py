"""Honest single-core benchmarks: BLAS/OpenMP pools size themselves when numpy or torch is
imported, so a benchmark that wants them at one thread sets the environment and re-executes
itself before importing either.

    if __name__ == "__main__":
        from _one_thread import reexec_single_threaded  # bench/ is sys.path[0] when run as a script
        reexec_single_threaded(__file__)
"""
from __future__ import annotations

import os
import sys

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS")


def reexec_single_threaded(script: str) -> None:
    """Replace this process with `python script argv...` with every pool at one thread (no-op
    once they are)."""
    if any(os.environ.get(v) != "1" for v in THREAD_VARS):
        os.execve(sys.executable, [sys.executable, os.path.abspath(script), *sys.argv[1:]],
                  {**os.environ, **{v: "1" for v in THREAD_VARS}})
