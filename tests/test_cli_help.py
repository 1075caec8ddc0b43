"""`motionmask --help` lists every command with its line from motionmask/cli.py, without importing
them; each command's own parser says the same line, so the list reads the same whichever command
is built. Listing the commands loads nothing of the streamer, OpenCV, torch, the learner or synth."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from motionmask.cli import COMMANDS, missing_role

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", list(COMMANDS))
def test_each_command_says_the_line_the_list_shows(name: str) -> None:
    if missing_role(name):
        pytest.skip(f"{name}: its role is not installed here")
    parent = argparse.ArgumentParser(prog="motionmask", add_help=False)
    importlib.import_module(f"motionmask.commands.{name}").add_parser(parent.add_subparsers())
    listed = " ".join(parent.format_help().split())  # argparse wraps the line to the terminal
    assert listed.endswith(f" {name} {COMMANDS[name]}"), listed


def test_the_list_of_commands_imports_none_of_them() -> None:
    probe = (
        "import contextlib, io, json, sys\nfrom motionmask.cli import main\nout = io.StringIO()\n"
        "with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):\n    main(['--help'])\n"
        "print(json.dumps([out.getvalue(), sorted(m for m in sys.modules if m.split('.')[0] in "
        "('streamer', 'torch', 'cv2', 'learner', 'synth') or m.startswith('motionmask.commands.'))]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert proc.returncode == 0, proc.stderr
    text, loaded = json.loads(proc.stdout.splitlines()[-1])
    assert loaded == []
    for name, line in COMMANDS.items():
        assert f" {name} " in text and (line in text or missing_role(name)), (name, text)
