"""`motionmask train` and `motionmask predict` end to end on a real synthetic clip: train a tiny
net for a few steps, resume it, stop it with SIGTERM, predict with the file contract of
`motionmask masks`, and evaluate the student against its teacher."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from learner.checkpoint import load_checkpoint
from learner.evaluate import coverage, evaluate_checkpoints, evaluate_student
from motionmask.cli import main
from synth.things import generate

ROOT = Path(__file__).resolve().parents[1]
CONTRACT_KEYS = {"frame", "shot", "fg_fraction", "kept", "reason", "ms", "timestamp", "source"}
TINY = """learner:
  model: {width: 8, blocks: [1, 1, 1, 1]}
  crops: {size: 64}
  train: {batch: 4, warmup_steps: 0, log_every: 1, device: cpu}
buffer: {train_width: 160, train_height: 120, memory_mb: 16}
"""


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("synth")
    generate(d, seed=13, clips=1, frames=24, size=(160, 120))  # a seed whose clip keeps frames
    (d / "tiny.yaml").write_text(TINY)
    return d


@pytest.fixture(scope="module")
def trained(clips, tmp_path_factory):
    run = tmp_path_factory.mktemp("run") / "r"
    rc = main(
        [
            "train",
            str(clips / "clip000.mp4"),
            "--out",
            str(run),
            "--config",
            str(clips / "tiny.yaml"),
            "--steps",
            "5",
            "--quiet",
        ]
    )
    assert rc == 0
    return run


def test_train_end_to_end_and_resume(clips, trained, capsys):
    last = trained / "checkpoints" / "last.pt"
    state = load_checkpoint(last)
    assert state["step"] == 5 and state["slot_size"] == [120, 160]
    lines = [json.loads(x) for x in (trained / "train.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3, 4, 5] and all(np.isfinite(x["loss"]) for x in lines)
    # the same command again: the run is complete
    args = ["train", str(clips), "--out", str(trained), "--config", str(clips / "tiny.yaml"), "--quiet"]
    assert main(args + ["--steps", "5"]) == 0
    assert "is complete (step 5" in capsys.readouterr().err
    # a larger budget resumes from step 5
    assert main(args + ["--steps", "7"]) == 0
    err = capsys.readouterr().err
    assert "motionmask train: 2 steps (run at step 7)" in err and " samples kept of " in err
    assert "warning: pruning kept" not in err  # 23 of this clip's 24 frames pass pruning
    assert load_checkpoint(last)["step"] == 7
    assert [json.loads(x)["step"] for x in (trained / "train.jsonl").read_text().splitlines()][-2:] == [6, 7]


def test_train_user_errors(clips, tmp_path, capsys):
    cfg = str(clips / "tiny.yaml")
    assert main(["train", str(tmp_path / "none.mp4"), "--out", str(tmp_path / "r"), "--config", cfg]) == 2
    assert "none.mp4: no such file or folder" in capsys.readouterr().err
    assert main(["train", str(clips), "--out", str(tmp_path / "r"), "--steps", "0", "--minutes", "0"]) == 2
    assert "no budget" in capsys.readouterr().err
    assert main(["train", str(clips), "--out", str(tmp_path / "r"), "--minutes", "-1"]) == 2
    # a run folder trained with another width
    wide = tmp_path / "wide.yaml"
    wide.write_text(TINY.replace("width: 8", "width: 16"))
    r = tmp_path / "r2"
    assert main(["train", str(clips), "--out", str(r), "--config", cfg, "--steps", "1", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["train", str(clips), "--out", str(r), "--config", str(wide), "--steps", "2", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "last.pt: incompatible checkpoint: " in err[0]
    assert "width 8 in the checkpoint vs 16 in the config" in err[0]


def test_train_warns_when_pruning_keeps_few_frames(clips, tmp_path, capsys):
    # this clip's masks cover 10-40% of the frame; the first six touch the border, and of the rest the
    # two largest cover 0.355 and 0.361: a min_fg of 0.358 keeps one to three frames
    cfg = tmp_path / "strict.yaml"
    cfg.write_text(TINY + "streamer: {prune: {min_fg: 0.358}}\n")
    # 3 s of training: the streamer's 24 frames are done long before (the summary counts what it streamed)
    assert (
        main(
            [
                "train",
                str(clips / "clip000.mp4"),
                "--out",
                str(tmp_path / "r"),
                "--config",
                str(cfg),
                "--steps",
                "0",
                "--minutes",
                "0.05",
                "--quiet",
            ]
        )
        == 0
    )
    warning = [ln for ln in capsys.readouterr().err.splitlines() if "warning: pruning" in ln]
    assert len(warning) == 1, warning
    assert re.search(r"pruning kept [1-3] of 24 frames \(too_little_fg (1[5-9]|2[0-3])\b", warning[0]), warning[0]
    assert warning[0].endswith("for small or distant movers lower streamer.prune.min_fg (now 0.358)")


def test_sigterm_saves_a_checkpoint_and_exits_143(clips, tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "motionmask.cli",
            "train",
            str(clips),
            "--out",
            str(run),
            "--config",
            str(clips / "tiny.yaml"),
            "--minutes",
            "5",
        ],
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    log = run / "train.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (log.exists() and len(log.read_text().splitlines()) >= 3):
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, err
    assert "motionmask train: interrupted; " in err
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["step"] >= 3
    assert not list(Path("/dev/shm").glob(f"motionmask_{proc.pid}_*"))  # the buffer is gone too


def test_train_logs_one_line_per_interval_when_stderr_is_not_a_terminal(clips, tmp_path):
    """Redirected to a file or a pipe, `motionmask train` draws no progress bar (no carriage
    returns in the log): every learner.train.log_every steps it writes one log line instead."""
    cfg = tmp_path / "every2.yaml"
    cfg.write_text(TINY.replace("log_every: 1", "log_every: 2"))
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "motionmask.cli",
            "train",
            str(clips / "clip000.mp4"),
            "--out",
            str(tmp_path / "r"),
            "--config",
            str(cfg),
            "--steps",
            "6",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "\r" not in out.stderr
    lines = [ln for ln in out.stderr.splitlines() if "event=train_progress" in ln]
    assert [re.search(r" step=(\S+)", ln).group(1) for ln in lines] == ["2/6", "4/6", "6/6"], out.stderr
    for ln in lines:
        fields = dict(kv.split("=", 1) for kv in ln.split(" event=train_progress ")[1].split() if "=" in kv)
        assert np.isfinite(float(fields["loss"])) and float(fields["crops_per_s"]) > 0 and float(fields["lr"]) > 0
        assert float(fields["train_s"]) > 0
    assert "motionmask train: 6 steps (run at step 6)" in out.stderr


def test_predict_writes_the_masks_contract(clips, trained, tmp_path, capsys):
    out = tmp_path / "pred"
    rc = main(
        [
            "predict",
            "--checkpoint",
            str(trained / "checkpoints" / "last.pt"),
            str(clips / "clip000.mp4"),
            "--out",
            str(out),
            "--quiet",
            "--overlay",
        ]
    )
    assert rc == 0
    err = capsys.readouterr().err
    assert "motionmask predict: 24 frames" in err
    recs = [json.loads(x) for x in (out / "frames.jsonl").read_text().splitlines()]
    assert [r["frame"] for r in recs] == list(range(24))
    assert all(set(r) == CONTRACT_KEYS and "predict" in r["ms"] for r in recs)
    for i in (0, 23):
        prob = cv2.imread(str(out / f"{i:06d}.png"), cv2.IMREAD_UNCHANGED)
        tri = cv2.imread(str(out / "trimap" / f"{i:06d}.png"), cv2.IMREAD_UNCHANGED)
        assert prob.shape == (120, 160) and prob.dtype == np.uint8 and tri.shape == (120, 160)
        assert set(np.unique(tri)) <= {0, 128, 255}
        assert ((prob >= 179) <= (tri == 255)).all()  # trimap from the probability, streamer thresholds
    assert (out / "overlay.mp4").is_file() and (out / "contact.png").is_file()
    # --start/--frames as in `masks`; a broken checkpoint is one line and exit 2
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(trained / "checkpoints" / "last.pt"),
                str(clips / "clip000.mp4"),
                "--out",
                str(tmp_path / "p2"),
                "--start",
                "20",
                "--frames",
                "3",
                "--quiet",
            ]
        )
        == 0
    )
    assert sorted(p.name for p in (tmp_path / "p2").glob("*.png")) == ["000020.png", "000021.png", "000022.png"]
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(bad), str(clips / "clip000.mp4"), "--out", str(tmp_path / "p3")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.pt: not a readable checkpoint" in err[0]


def test_evaluate_student_scores_student_and_teacher(clips, trained):
    res = evaluate_student(trained / "checkpoints" / "last.pt", clips, device="cpu")
    for m in ("student", "teacher"):
        assert res[m]["frames"] > 0 and 0.0 <= res[m]["iou"] <= 1.0
    assert res["clips"] == 1 and res["per_clip"][0]["clip"] == "clip000" and res["step"] >= 5
    # the quick mode of bench/student.py: every 3rd frame, student only, the same per-frame scores
    quick = evaluate_student(trained / "checkpoints" / "last.pt", clips, device="cpu", every=3, teacher=False)
    assert quick["teacher"]["iou"] is None and quick["teacher"]["frames"] == 0
    n = res["student"]["frames"]
    assert 0 < quick["student"]["frames"] <= n // 3 + 1
    assert 0.0 <= quick["student"]["iou"] <= 1.0 and quick["every"] == 3
    # several students in one pass (bench/quality.py): each scored as if alone, the teacher once
    both = evaluate_checkpoints(
        {"a": trained / "checkpoints" / "last.pt", "b": trained / "checkpoints" / "last.pt"}, clips, device="cpu"
    )
    assert both["summary"]["a"] == both["summary"]["b"] == res["student"]
    assert both["summary"]["teacher"] == res["teacher"] and both["steps"]["a"] == res["step"]
    assert both["per_clip"][0]["a"] == res["per_clip"][0]["student"]


def test_coverage_splits_the_frames_by_what_training_showed(clips, trained, tmp_path):
    res = evaluate_checkpoints({"s": trained / "checkpoints" / "last.pt"}, clips, device="cpu")
    n = res["summary"]["s"]["frames"]
    assert len(res["per_frame"]) == n and [r["frame"] for r in res["per_frame"]] == sorted(
        r["frame"] for r in res["per_frame"]
    )
    assert np.mean([r["s"] for r in res["per_frame"]]) == pytest.approx(res["summary"]["s"]["iou"])
    # trained on these very clips: every background seen, every mover's photo moved at least once
    [g] = coverage(res, clips, clips, common=1)
    assert (g["background"], g["movers"], g["frames"]) == ("seen", "common", n)
    assert g["s"] == pytest.approx(res["summary"]["s"]["iou"]) and g["teacher"] == pytest.approx(
        res["summary"]["teacher"]["iou"]
    )
    assert [g["movers"] for g in coverage(res, clips, clips, common=99)] == ["rare"]
    # a training set whose first shot had another background: that shot's frames become unseen
    meta = json.loads((clips / "clips.json").read_text())
    meta[0]["shots"][0]["background"] = "somewhere else"
    (tmp_path / "clips.json").write_text(json.dumps(meta))
    split = {(g["background"], g["movers"]): g["frames"] for g in coverage(res, clips, tmp_path, common=1)}
    first = meta[0]["shots"][1]["start"] if len(meta[0]["shots"]) > 1 else 10**9
    unseen = sum(r["frame"] < first for r in res["per_frame"])
    assert split == {k: v for k, v in {("unseen", "common"): unseen, ("seen", "common"): n - unseen}.items() if v}
