"""Every benchmark script must import the way multiprocessing's spawn re-imports a main module:
as `__mp_main__`, from the parent's sys.path (ROOT first, bench/ removed), in another folder.
bench/quality.py once failed exactly there, and only inside the streamer process it starts."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.name for p in (ROOT / "bench").glob("*.py") if not p.name.startswith("_"))


@pytest.mark.parametrize("script", SCRIPTS)
def test_bench_script_imports_as_a_spawned_child(script: str, tmp_path: Path) -> None:
    code = ("import runpy, sys; sys.path[0] = sys.argv[1]; "
            "runpy.run_path(sys.argv[2], run_name='__mp_main__')")
    proc = subprocess.run([sys.executable, "-c", code, str(ROOT), str(ROOT / "bench" / script)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"bench/{script}: {proc.stderr.strip().splitlines()[-1:]}"
