"""Every benchmark module must import the way multiprocessing's spawn re-imports a main module
run with `python -m bench.<name>`: by name, as `__mp_main__`, from the repository root.
bench/quality.py once failed exactly there, and only inside the streamer process it starts."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted(".".join(p.relative_to(ROOT).with_suffix("").parts)
                 for p in (ROOT / "bench").rglob("*.py") if p.name not in ("__init__.py", "__main__.py"))


def test_every_bench_module_is_found() -> None:
    assert {"bench.common", "bench.quality", "bench.streamer_speed", "bench.zmq_speed"} <= set(MODULES)


@pytest.mark.parametrize("module", MODULES)
def test_bench_module_imports_as_a_spawned_child(module: str) -> None:
    code = "import runpy, sys; runpy.run_module(sys.argv[1], run_name='__mp_main__', alter_sys=True)"
    proc = subprocess.run([sys.executable, "-c", code, module], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, f"{module}: {proc.stderr.strip().splitlines()[-1:]}"
