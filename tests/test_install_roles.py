"""Install by role: a plain `pip install motionmask` is the device role. The test builds that
environment for real (a fresh venv, pip with this machine's configured index, no torch, no
OpenCV) and runs the device's two commands in it: `motionmask device` pulls a real bundle from a
real BundleServer over loopback, and `motionmask predict --model` writes masks that match the
full install's within a grey level or two. Any other command answers with one line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from _export_data import SAMPLE, copy_version, exported

from exporter.bundle import read_pointer, versions
from exporter.runtime import BundleRunner
from exporter.transfer import BundleServer

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ["pyproject.toml", "README.md", "common", "motionmask", "streamer", "synth", "learner", "exporter"]
ROLE_ONLY = ["torch", "cv2", "skimage", "scipy", "onnx", "onnxscript", "starlette", "uvicorn"]
ROLE_LINE = "motionmask {} needs the rig/learn role: pip install 'motionmask[all]'"


@pytest.fixture(scope="module")
def device_env(tmp_path_factory) -> Path:
    """A venv with `pip install <repo>` and nothing else (wheels from the local index). The venv gets
    no pip of its own and nothing is byte-compiled: this environment's pip installs into it
    (`pip --python`), which halves the time; the installed set is the same."""
    base = tmp_path_factory.mktemp("device-role")
    src, venv = base / "src", base / "venv"
    src.mkdir()
    for name in SOURCE:  # a copy: pip builds in the source tree, and the checkout is shared
        p = ROOT / name
        if p.is_dir():
            shutil.copytree(p, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(p, src / name)
    t0 = time.monotonic()
    made = subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)], capture_output=True, text=True, timeout=120
    )
    if made.returncode != 0:
        pytest.skip(f"python -m venv failed here: {made.stderr.strip()[-300:]}")
    pip = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(venv / "bin" / "python"),
            "install",
            "-q",
            "--no-compile",
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=_clean_env(),
    )
    if pip.returncode != 0:
        pytest.skip(f"pip could not install the device role (no index here?): {pip.stderr.strip()[-400:]}")
    print(f"device-role venv: {time.monotonic() - t0:.1f} s")
    return venv


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PYTHONNOUSERSITE"] = "1"
    return env


def _run(venv: Path, *args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """A command of the venv, from a folder outside the checkout, so only the installed package is seen."""
    exe = args[0] if args[0] == "python" else "motionmask"
    argv = [str(venv / "bin" / exe), *(args[1:] if exe == "python" else args)]
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=_clean_env())


def test_the_device_role_has_no_torch_or_opencv(device_env: Path, tmp_path: Path) -> None:
    proc = _run(
        device_env,
        "python",
        "-c",
        "import json, importlib.util, motionmask, onnxruntime, av, zmq, yaml; "
        f"print(json.dumps([motionmask.__file__, [m for m in {ROLE_ONLY!r} if importlib.util.find_spec(m)]]))",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    where, present = json.loads(proc.stdout)
    assert where.startswith(str(device_env)) and present == []  # the installed copy, and none of them
    proc = _run(device_env, "python", "-c", "import torch", cwd=tmp_path)
    assert proc.returncode != 0 and "No module named 'torch'" in proc.stderr


def test_device_pulls_a_bundle_and_predict_writes_masks(device_env: Path, tmp_path_factory, tmp_path: Path) -> None:
    exports = exported(tmp_path_factory)  # built with the full install (torch, onnx)
    v1, v2 = versions(exports)
    served, dev = tmp_path / "served", tmp_path / "device"
    copy_version(exports, v2, served)
    assert _run(device_env, "device", "--help", cwd=tmp_path).returncode == 0
    with BundleServer(served, "tcp://127.0.0.1:*", "tcp://127.0.0.1:*", watch_s=0.05).start() as server:
        proc = _run(
            device_env,
            "device",
            "--endpoint",
            server.endpoint,
            "--dir",
            str(dev),
            "--once",
            "--timeout",
            "2",
            cwd=tmp_path,
        )
    assert proc.returncode == 0, proc.stderr
    assert (
        read_pointer(dev) == v2 and (dev / v2 / "model.onnx").read_bytes() == (exports / v2 / "model.onnx").read_bytes()
    )

    out = tmp_path / "pred"
    proc = _run(
        device_env,
        "predict",
        "--model",
        str(dev),
        str(SAMPLE),
        "--out",
        str(out),
        "--frames",
        "6",
        "--quiet",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "6 frames" in proc.stderr and "Traceback" not in proc.stderr
    recs = [json.loads(x) for x in (out / "frames.jsonl").read_text().splitlines()]
    assert [r["frame"] for r in recs] == list(range(6)) and len({r["shot"] for r in recs}) == 1
    # the same bundle in the full install (OpenCV resizing): the masks agree within a level or two
    runner, cap = BundleRunner(dev, provider="cpu"), cv2.VideoCapture(str(SAMPLE))
    for i in range(6):
        want = np.rint(runner(cv2.cvtColor(cap.read()[1], cv2.COLOR_BGR2RGB)) * 255)
        png = cv2.imread(str(out / f"{i:06d}.png"), cv2.IMREAD_UNCHANGED)
        trimap = cv2.imread(str(out / "trimap" / f"{i:06d}.png"), cv2.IMREAD_UNCHANGED)
        assert png.shape == trimap.shape == (288, 384) and set(np.unique(trimap)) <= {0, 128, 255}
        diff = np.abs(png.astype(int) - want)
        assert diff.mean() < 0.1 and diff.max() <= 3, (diff.mean(), diff.max())  # seen: 1e-5 and 1
        assert png.std() > 1  # a mask, not a constant
    cap.release()


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--help"],
        ["run", "--config", "x.yaml"],
        ["export", "--help"],
        ["predict", "--checkpoint", "last.pt", "clip.mp4", "--out", "o"],
    ],
)
def test_other_roles_answer_in_one_line(device_env: Path, tmp_path: Path, argv: list[str]) -> None:
    if argv[0] == "predict":
        (tmp_path / "clip.mp4").write_bytes(SAMPLE.read_bytes())
    proc = _run(device_env, *argv, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip() == ROLE_LINE.format(argv[0])
