"""Every benchmark module must import the way multiprocessing's spawn re-imports a main module
run with `python -m bench.<name>`: by name, as `__mp_main__`, from the repository root.
bench/quality.py once failed exactly there, and only inside the streamer process it starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted(
    ".".join(p.relative_to(ROOT).with_suffix("").parts)
    for p in (ROOT / "bench").rglob("*.py")
    if p.name not in ("__init__.py", "__main__.py")
)

# One spawned child runs every module in turn (each as __mp_main__, as spawn does): torch and the
# rest are imported once, not once per module; every module that fails is named.
CHILD = """
import runpy, sys
bad = []
for name in sys.argv[1:]:
    try:
        runpy.run_module(name, run_name="__mp_main__", alter_sys=True)
    except BaseException as e:
        bad.append(f"{name}: {type(e).__name__}: {e}")
print("\\n".join(bad))
sys.exit(1 if bad else 0)
"""


def test_every_bench_module_is_found() -> None:
    expected = {"bench.common", "bench.quality", "bench.soak.run", "bench.streamer_speed", "bench.zmq_speed"}
    assert expected <= set(MODULES)


def test_every_bench_module_imports_as_a_spawned_child() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, *MODULES], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, (proc.stdout.strip(), proc.stderr.strip().splitlines()[-3:])


def test_a_module_that_fails_to_import_is_named(tmp_path: Path) -> None:
    (tmp_path / "broken_bench.py").write_text("import no_such_module_anywhere\n")
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, "bench.common", "broken_bench"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 1 and proc.stdout.strip().startswith("broken_bench: ModuleNotFoundError"), proc.stdout
