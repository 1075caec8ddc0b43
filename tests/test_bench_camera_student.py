"""bench.camera_student end to end on the bundled real clip: a real `motionmask train` run (a tiny
net for a few seconds), the teacher over the whole clip and the student on the held-back 30%, then
the JSON and the contact sheet it promises; scored against reference masks beside the clip; and
--reuse, which scores the same student again without training."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = """learner:
  model: {width: 8, blocks: [1, 1, 1, 1]}
  crops: {size: 64}
  train: {batch: 4, warmup_steps: 0, device: cpu}
buffer: {train_width: 160, train_height: 120, memory_mb: 16}
# every frame with a walker trains: this tests the bench, not the labels
streamer: {prune: {min_fg: 0.01, max_unsure: 1.0}}
"""


def _with_reference(folder: Path) -> Path:
    """The bundled clip in a folder of the synthetic sets' format: clips.json beside it and a
    reference mask per frame (a box where its walkers cross, void around it, background elsewhere)."""
    folder.mkdir()
    clip = folder / "sample.mp4"
    shutil.copy(ROOT / "tests" / "data" / "sample.mp4", clip)
    (folder / "clips.json").write_text(json.dumps([{"name": "sample", "file": "sample.mp4", "frames": 80}]))
    gt = folder / "sample" / "gt"
    gt.mkdir(parents=True)
    h, w = cv2.VideoCapture(str(clip)).read()[1].shape[:2]
    ref = np.zeros((h, w), np.uint8)
    ref[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = 128
    ref[h // 3 : 2 * h // 3, w // 3 : 2 * w // 3] = 255
    for i in range(80):
        cv2.imwrite(str(gt / f"{i:06d}.png"), ref)
    return clip


def _bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bench.camera_student", *args], capture_output=True, text=True, timeout=300, cwd=ROOT
    )


def test_camera_student_bench_runs_end_to_end(tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    out = tmp_path / "cs.json"
    clip = _with_reference(tmp_path / "clips")
    proc = _bench(str(clip), "--minutes", "0.05", "--config", str(cfg), "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(out.read_text())
    assert doc["frames"] == 80 and doc["train_frames"] == 56 and doc["held_back"] == 24
    # trained on the first 70% only, as far as the streamer got in the time (on a busy machine, not all of it)
    streamed = re.search(r"samples kept of (\d+) frames", doc["train_summary"])
    assert streamed and 0 < int(streamed.group(1)) <= 56, doc["train_summary"]
    assert doc["frames_scored"]["teacher_fg"] == doc["frames_scored"]["student_fg"] == 24
    assert doc["frames_scored"]["teacher_stable"] >= 20  # pairs of held-back frames where either mask has something
    for key in ("teacher_fg", "student_fg", "teacher_stable", "agreement"):
        assert doc[key] is not None and 0.0 <= doc[key] <= 1.0, key
    assert doc["teacher_fg"] > 0  # the walkers move: the teacher marks them on held-back frames
    sheet = cv2.imread(doc["contact_sheet"])
    # frames, teacher, student, reference: 240-px tiles of 4:3
    assert sheet is not None and sheet.shape[0] == 4 * 180
    assert "| stability: IoU with the previous frame's mask |" in proc.stdout
    # the frames and the run sit beside the JSON, in a folder named after it
    assert (tmp_path / "cs" / "sample" / "run" / "checkpoints" / "last.pt").is_file()
    against = doc["against_reference"]
    assert doc["reference"] == str(clip.parent / "sample" / "gt")
    for who in ("teacher", "student"):
        assert against[who]["frames"] == 24  # every held-back frame has the box
        for key in ("iou", "precision", "recall", "best_iou"):
            assert 0.0 <= against[who][key] <= 1.0, (who, key)
    assert "| against the reference: IoU at 0.5 |" in proc.stdout

    # --reuse: no training (the checkpoint is untouched), the same student scored the same way
    before = (tmp_path / "cs" / "sample" / "run" / "checkpoints" / "last.pt").stat().st_mtime_ns
    again = _bench(str(clip), "--reuse", "--config", str(cfg), "--out", str(out))
    assert again.returncode == 0, again.stderr[-2000:]
    assert "motionmask train" not in again.stderr
    assert (tmp_path / "cs" / "sample" / "run" / "checkpoints" / "last.pt").stat().st_mtime_ns == before
    redo = json.loads(out.read_text())
    assert redo["train_summary"].startswith("reused ") and redo["checkpoint_step"] == doc["checkpoint_step"]
    assert redo["against_reference"]["student"]["iou"] == pytest.approx(against["student"]["iou"], abs=1e-6)


def test_reuse_without_an_earlier_run_says_what_to_do(tmp_path):
    proc = _bench(str(ROOT / "tests" / "data" / "sample.mp4"), "--reuse", "--out", str(tmp_path / "cs.json"))
    assert proc.returncode == 2
    assert "no trained student to reuse; run once without --reuse" in proc.stderr


def test_an_out_that_is_not_json_is_refused_before_training(tmp_path):
    # the run goes in a folder named like the JSON without its suffix: `--out DIR` would collide with it
    # at the very end, after twelve minutes of training
    proc = _bench(str(ROOT / "tests" / "data" / "sample.mp4"), "--out", str(tmp_path / "cs"))
    assert proc.returncode == 2
    assert "--out" in proc.stderr and "name a .json file, e.g. cs.json" in proc.stderr
    assert not (tmp_path / "cs").exists()
