"""bench.camera_student end to end on the bundled real clip: a real `motionmask train` run (a tiny
net for a few seconds), the teacher over the whole clip and the student on the held-back 30%, then
the JSON and the contact sheet it promises."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import cv2

ROOT = Path(__file__).resolve().parents[1]
TINY = """learner:
  model: {width: 8, blocks: [1, 1, 1, 1]}
  crops: {size: 64}
  train: {batch: 4, warmup_steps: 0, device: cpu}
buffer: {train_width: 160, train_height: 120, memory_mb: 16}
# every frame with a walker trains: this tests the bench, not the labels
streamer: {prune: {min_fg: 0.01, max_unsure: 1.0}}
"""


def test_camera_student_bench_runs_end_to_end(tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    out = tmp_path / "cs.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.camera_student",
            str(ROOT / "tests" / "data" / "sample.mp4"),
            "--minutes",
            "0.05",
            "--config",
            str(cfg),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
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
    assert sheet is not None and sheet.shape[0] == 3 * 180  # frames, teacher, student: 240-px tiles of 4:3
    assert "| stability: IoU with the previous frame's mask |" in proc.stdout
    # the frames and the run sit beside the JSON, in a folder named after it
    assert (tmp_path / "cs" / "sample" / "run" / "checkpoints" / "last.pt").is_file()
