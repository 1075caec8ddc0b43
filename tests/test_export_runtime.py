"""The device's code path: a bundle run with ONNX Runtime only. `motionmask predict --model` and
BundleRunner never import torch (checked in a fresh process), write the masks file contract,
hot-load a new LATEST and refuse a damaged one, and a CUDA request that lands on the CPU is
reported, never silent."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest
from _export_data import SAMPLE, copy_version, exported, sample_frames

from common.errors import UserError
from exporter.bundle import versions, write_pointer
from exporter.runtime import BundleRunner, make_session
from motionmask.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    return exported(tmp_path_factory)


def test_predict_model_and_runner_never_import_torch(exports, tmp_path):
    out = tmp_path / "pred"
    code = textwrap.dedent(f"""
        import json, sys
        import numpy as np
        from exporter.runtime import BundleRunner
        from exporter.transfer import BundleServer, DeviceAgent
        from motionmask.cli import main
        runner = BundleRunner({str(exports)!r})
        prob = runner(np.full((288, 384, 3), 90, np.uint8))
        rc = main(["predict", "--model", {str(exports)!r}, {str(SAMPLE)!r}, "--out", {str(out)!r},
                   "--frames", "6", "--quiet"])
        torch = sorted(m for m in sys.modules if m == "torch" or m.startswith(("torch.", "onnxscript")))
        print(json.dumps({{"rc": rc, "torch": torch, "shape": list(prob.shape), "version": runner.version}}))
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["torch"] == [] and res["rc"] == 0 and res["shape"] == [288, 384]
    assert res["version"] == versions(exports)[1]
    assert "6 frames" in proc.stderr and "Traceback" not in proc.stderr
    # the masks file contract of `motionmask masks`, probabilities from the bundle
    recs = [json.loads(x) for x in (out / "frames.jsonl").read_text().splitlines()]
    assert [r["frame"] for r in recs] == list(range(6)) and all("predict" in r["ms"] for r in recs)
    runner = BundleRunner(exports)
    frames = []
    cap = cv2.VideoCapture(str(SAMPLE))
    for _ in range(6):
        frames.append(cv2.cvtColor(cap.read()[1], cv2.COLOR_BGR2RGB))
    for i, f in enumerate(frames):
        png = cv2.imread(str(out / f"{i:06d}.png"), cv2.IMREAD_UNCHANGED)
        trimap = cv2.imread(str(out / "trimap" / f"{i:06d}.png"), cv2.IMREAD_UNCHANGED)
        assert png.shape == trimap.shape == (288, 384)
        want = np.rint(runner(f) * 255)
        assert np.abs(png.astype(int) - want).max() <= 2  # decoders may differ by a level or two


def test_hot_reload_follows_latest_and_refuses_a_damaged_bundle(exports, tmp_path, caplog):
    v1, v2 = versions(exports)
    folder = tmp_path / "model"
    copy_version(exports, v1, folder)
    runner = BundleRunner(folder, provider="cpu")
    frame = sample_frames(1)[0]
    assert runner.version == v1 and runner.width == 96 and runner(frame).shape == (288, 384)
    assert not runner.reload_if_changed()  # nothing new
    copy_version(exports, v2, folder)
    assert runner.reload_if_changed() and runner.version == v2 and runner.width == 128
    assert runner(frame).shape == (288, 384)

    # LATEST pointed at a bundle whose model was altered: refused, the one in service stays
    damaged = tmp_path / "model2"
    copy_version(exports, v1, damaged)
    runner = BundleRunner(damaged, provider="cpu")
    bad = copy_version(exports, v2, damaged, point=False) / "model.onnx"
    data = bytearray(bad.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    write_pointer(damaged, v2)
    caplog.set_level(logging.WARNING)
    assert not runner.reload_if_changed()
    assert runner.version == v1 and runner(frame).shape == (288, 384)
    msgs = [r.message for r in caplog.records if "event=bundle_refused" in r.message]
    assert len(msgs) == 1 and "sha256" in msgs[0] and f"keeping={v1}" in msgs[0]
    # and what `predict --model` says about it: one line, exit 2
    with pytest.raises(UserError, match="does not match the manifest"):
        BundleRunner(damaged)


def test_predict_model_bad_input_is_one_line(exports, tmp_path, capsys):
    cases = [
        (["--model", str(tmp_path / "nope")], "no such bundle or exports folder"),
        (["--model", str(tmp_path)], "neither a bundle folder"),
        (["--model", str(exports), "--native"], "--native"),
    ]
    for extra, needle in cases:
        assert main(["predict", *extra, str(SAMPLE), "--out", str(tmp_path / "p"), "--quiet"]) == 2
        err = capsys.readouterr().err
        lines = [x for x in err.splitlines() if "error" in x]
        assert "Traceback" not in err and len(lines) == 1 and needle in lines[0], err
    with pytest.raises(SystemExit):  # --checkpoint and --model together
        main(["predict", "--model", str(exports), "--checkpoint", "x.pt", str(SAMPLE), "--out", str(tmp_path / "p")])
    capsys.readouterr()


def test_a_cuda_request_that_runs_on_the_cpu_is_reported(exports, caplog):
    model = exports / versions(exports)[1] / "model.onnx"
    caplog.set_level(logging.INFO)
    session, device = make_session(model, "cuda")
    if device.type == "cuda":
        pytest.skip("this machine runs ONNX Runtime on CUDA: nothing falls back")
    warn = [r for r in caplog.records if "event=ort_provider_fallback" in r.message]
    assert len(warn) == 1 and warn[0].levelno == logging.WARNING and "using=CPUExecutionProvider" in warn[0].message
    assert any(
        "event=ort_session" in r.message and "provider=CPUExecutionProvider" in r.message for r in caplog.records
    )
    with pytest.raises(UserError, match="CUDA was requested but ONNX Runtime runs on the CPU"):
        make_session(model, "cuda", strict=True)
    caplog.clear()
    _, device = make_session(model, "cpu")  # asked for the CPU: no warning
    assert device.type == "cpu" and not [r for r in caplog.records if r.levelno >= logging.WARNING]
