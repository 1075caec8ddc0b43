"""Device code depends on the leaf package `common/` and on nothing of the streamer: importing what
`motionmask device` runs on loads no streamer, OpenCV, torch, learner or synth module. Checked in
a fresh interpreter, where nothing else has loaded them already."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEVICE_MODULES = [
    "motionmask.commands.device",
    "exporter.runtime",
    "exporter.bundle",
    "exporter.signing",
    "exporter.transfer",
    "exporter.pulls",
]
FORBIDDEN = ("streamer", "torch", "cv2", "learner", "synth")


def _loaded_after(code: str) -> list[str]:
    probe = f"import json, sys\n{code}\nprint(json.dumps([m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r}]))"
    proc = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


def test_device_modules_load_nothing_of_the_streamer_or_the_learner():
    assert _loaded_after("\n".join(f"import {m}" for m in DEVICE_MODULES)) == []


def test_the_device_command_through_the_cli_loads_nothing_of_them():
    # the CLI imports only the module of the command it runs (`motionmask --help` imports them all)
    run = "from motionmask.cli import main\ntry:\n    main(['device', '--help'])\nexcept SystemExit:\n    pass"
    assert _loaded_after(run) == []
    assert _loaded_after("from motionmask.cli import main\nassert main(['device', '--dir', '.', '--once']) == 2") == []
