"""bench.rig end to end, smoke sized: a 30-second rig stream (generated and cached under
bench/out/rig), the teacher on its later 30%, real `motionmask train` runs of a tiny net for a few
steps (the student and the multitask net), a real export and ONNX Runtime session, then the JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = """learner:
  model: {width: 8, blocks: [1, 1, 1, 1]}
  crops: {size: 64}
  train: {batch: 4, warmup_steps: 0}
buffer: {train_width: 160, train_height: 120, memory_mb: 16}
"""
FIGURES = ("miou", "miou_moving", "still_recall", "flicker", "precision", "recall", "best_iou")


@pytest.mark.slow
@pytest.mark.timeout(900)  # ~1 CPU minute; several times that on a machine shared with other jobs
def test_rig_bench_smoke(tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    out = tmp_path / "rig.json"
    args = ["--quick", "--steps", "2", "--no-real", "--config", str(cfg), "--out", str(out)]
    proc = subprocess.run(
        [sys.executable, "-m", "bench.rig", *args], capture_output=True, text=True, timeout=600, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(out.read_text())
    [run] = doc["runs"]
    assert run["gen_seed"] == 2 and run["train_seed"] == 0 and run["stream"]["frames"] == 450
    assert run["stream"]["split"] == 315 and "rig_v1_s2_m0.5" in run["stream"]["dir"]
    assert run["train"]["steps"] == 2 or "2 steps" in run["train"]["summary"]
    m = run["methods"]
    assert set(m) == {"teacher", "student", "exported", "exported_int8", "fused", "live", "ground_truth"}
    # cameras run the bundle's 8-bit model where it has one (a net of 2 steps may fail its check)
    camera = "exported_int8" if run["live_precision"] == "int8" else "exported"
    assert (m["exported_int8"] is None) == (run["live_precision"] == "fp32")
    for name in ("teacher", "student", "exported", camera, "fused", "live"):
        assert m[name]["frames"] > 40, name  # scored frames with an actor
        for k in FIGURES:
            v = m[name][k]
            assert v is None or 0.0 <= v <= 1.0, (name, k, v)
    assert m["teacher"]["miou"] > 0.3  # actors walk in the scored part: motion finds them
    assert m["ground_truth"]["miou"] == 1.0 and 0.5 < m["ground_truth"]["flicker"] < 1.0  # moving actors
    # the bundle as ONNX Runtime runs it is the checkpoint (export parity), on the same frames
    assert run["exported_check"]["provider"] == "CPUExecutionProvider"
    assert run["exported_check"]["max_abs_diff_max"] < 1e-3
    assert abs(m["exported"]["miou"] - m["student"]["miou"]) <= 0.01
    # fused = max(motion, sure student): it keeps at least what each of its inputs keeps
    assert run["fused_source"] == "motionmask.fuse.fuse"
    assert m["fused"]["recall"] >= max(m["teacher"]["recall"], m[camera]["recall"]) - 1e-9
    ident = run["id"]
    assert ident["crops"] > 10 and ident["actors"] >= 2 and ident["train"]["steps"] >= 0
    for method in ("embedding", "colour_histogram"):
        v = ident[method]["top1"]
        assert v is None or 0.0 <= v <= 1.0
    assert set(doc["targets"]) == {
        "student_gain",
        "student_still_recall",
        "export_gap",
        "live_beats_both",
        "who_is_who",
    }
    assert doc["targets"]["export_gap"]["met"] is True
    assert "real" not in doc
    assert Path(doc["contact_sheet"]).is_file()
    assert "| teacher (motion masks) |" in proc.stdout and "### targets (issue 19" in proc.stdout

    # bench.rig_live rescores that finished run: the same frames, the live mask for two intervals
    live_out = tmp_path / "live.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.rig_live", "--runs", str(out), "--every", "1", "4", "--out", str(live_out)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    [again] = json.loads(live_out.read_text())["runs"]
    lm = again["methods"]
    assert set(lm) == {"teacher", "exported", "exported_int8", "fused", "live_1", "live_4"}
    assert lm["teacher"]["miou"] == pytest.approx(m["teacher"]["miou"], abs=1e-9)  # the same teacher, frames
    assert lm["exported"]["miou"] == pytest.approx(m["exported"]["miou"], abs=0.01)  # a new export, same weights
    assert lm["live_1"]["miou"] == pytest.approx(lm["fused"]["miou"], abs=1e-9)  # every frame: no carry
    assert set(again["live_minus_inputs"]) == {"1", "4"} and "| live_4 |" in proc.stdout
