"""bench.export_gate end to end: real synthetic clips, a real `motionmask train` run (a tiny net)
with a checkpoint every 10 steps, and the gate's scores and replays it promises."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = """learner:
  model: {width: 8, blocks: [1, 1, 1, 1]}
  crops: {size: 64}
  train: {batch: 4, warmup_steps: 0, device: cpu}
  checkpoint: {every_steps: 10, every_minutes: 0, keep: 10}
# every frame with a walker trains: this tests the bench, not the labels
streamer: {prune: {min_fg: 0.01, max_unsure: 1.0}}
"""


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*args], capture_output=True, text=True, timeout=300, cwd=cwd)


def test_export_gate_bench_scores_every_checkpoint_and_replays_both_rules(tmp_path):
    mm = [sys.executable, "-m", "motionmask.cli"]
    for name, seed in (("seen", 100), ("unseen", 7)):
        proc = run(
            *mm,
            "synth",
            "--out",
            name,
            "--seed",
            str(seed),
            "--clips",
            "2",
            "--frames",
            "30",
            "--size",
            "160x120",
            cwd=tmp_path,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
    (tmp_path / "tiny.yaml").write_text(TINY)
    proc = run(
        *mm, "train", "seen", "--out", "r", "--config", "tiny.yaml", "--steps", "30", "--minutes", "0", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = tmp_path / "gate.json"
    bench = [sys.executable, "-m", "bench.export_gate"]
    seen, unseen = str(tmp_path / "seen"), str(tmp_path / "unseen")
    # the truth on every 6th frame of the unseen clips (10 frames a checkpoint): the student's forward
    # passes are most of the bench's time
    proc = run(
        *bench,
        str(tmp_path / "r"),
        "--seen",
        seen,
        "--eval",
        unseen,
        "--samples",
        "8",
        "--every",
        "6",
        "--out",
        str(out),
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(out.read_text())
    assert [r["step"] for r in doc["rows"]] == [10, 20, 30]
    for r in doc["rows"]:
        assert 0 <= r["gt_iou"] <= 1 and r["seen_holdout_bce"] > 0 and 0 <= r["unseen_holdout_iou"] <= 1
    assert set(doc["spearman"]) == {"seen_bce", "seen_iou", "unseen_bce", "unseen_iou"}
    # every export interval replays both rules on both holdouts; the served step is one of the run's
    assert {(r["every_steps"], r["holdout"]) for r in doc["replay"]} >= {(10, "seen"), (20, "unseen")}
    assert all(r[rule]["served_step"] in (10, 20, 30) for r in doc["replay"] for rule in ("bce", "iou"))
    assert "| seen |" in proc.stdout and "best checkpoint by the truth: step" in proc.stdout

    # a run without step checkpoints: one line naming it and what to do, exit 2
    (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
    proc = run(*bench, str(tmp_path / "empty"), "--seen", seen, "--eval", unseen, cwd=ROOT)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "empty: 0 step checkpoints" in proc.stderr and "checkpoint-often.yaml" in proc.stderr
