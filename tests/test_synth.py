"""Synthetic clips: deterministic, exact GT, real cuts, real camera motion, a real H.264 file."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from motionmask.cli import main
from synth import things as synth

SMALL = (160, 120)


def _gray(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)


def _hsv_hist(rgb: np.ndarray) -> np.ndarray:
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    h = cv2.calcHist([hsv], [0, 1, 2], None, [16, 16, 16], [0, 180, 0, 256, 0, 256])
    return cv2.normalize(h, h).flatten()


def _plans(frames: int, n: int = 8, size=SMALL):
    return [synth.plan_clip(synth.clip_seed(0, c), frames, size) for c in range(n)]


def test_render_is_deterministic_and_seed_dependent():
    a = synth.render_clip(11, 12, SMALL)
    b = synth.render_clip(11, 12, SMALL)
    c = synth.render_clip(12, 12, SMALL)
    for x, y in zip(a[0] + a[1] + a[2], b[0] + b[1] + b[2]):
        assert np.array_equal(x, y)
    assert a[3] == b[3]
    assert not np.array_equal(a[0][0], c[0][0])
    assert a[0][0].shape == (120, 160, 3) and a[0][0].dtype == np.uint8
    assert a[1][0].shape == (120, 160) and set(np.unique(np.concatenate(a[1]))) <= {0, 255}


def test_gt_marks_movers_also_while_paused_and_never_still_layers():
    seen_roles, paused_checked = set(), 0
    for plan in _plans(60, 6):
        for t in range(0, plan.frames, 2):
            r = synth.render_frame(plan, t)
            shot, i = plan.shot_at(t)
            assert np.array_equal(r.gt > 0, r.inst > 0)
            for index, layer in enumerate(shot.layers, start=1):
                visible = r.layer == index
                if not visible.any():
                    continue
                seen_roles.add(layer.role)
                if layer.role == "mover":
                    assert (r.inst[visible] == layer.inst).all() and (r.gt[visible] == 255).all()
                    if i > 0 and np.allclose(layer.pos[i], layer.pos[i - 1]):
                        paused_checked += 1  # standing still right now, and still foreground
                else:  # distractor and occluder never move relative to the background: GT 0
                    assert (r.gt[visible] == 0).all() and (r.inst[visible] == 0).all()
            movers = [layer.inst for layer in shot.layers if layer.role == "mover"]
            assert set(np.unique(r.inst)) - {0} <= set(movers)  # only this shot's objects
    assert seen_roles == {"mover", "distractor", "occluder"}
    assert paused_checked > 0


def test_every_shot_has_visible_moving_foreground():
    for plan in _plans(40, 6):
        for shot in plan.shots:
            nonempty = [synth.render_frame(plan, shot.start + i).gt.any() for i in range(0, shot.length, 3)]
            assert np.mean(nonempty) >= 0.9
            for layer in shot.layers:
                if layer.role == "mover":  # really moves within its shot, by at least a few px
                    path = np.hypot(*np.diff(layer.pos, axis=0).T).sum()
                    assert path * shot.cam_zoom.min() > 5


def test_mover_speeds_and_pauses_follow_the_spec():
    pauses = 0
    for plan in _plans(90, 10, (320, 240)):
        for shot in plan.shots:
            for layer in shot.layers:
                if layer.role != "mover":
                    continue
                step = np.hypot(*np.diff(layer.pos, axis=0).T) * shot.cam_zoom[:-1]
                assert step.max() <= 8.0 + 1e-6
                assert step[step > 1e-6].max() >= 1.0
                still = np.concatenate([[0], (step < 1e-6).astype(int), [0]])
                runs = np.flatnonzero(np.diff(still) == -1) - np.flatnonzero(np.diff(still) == 1)
                assert all(5 <= r <= 20 for r in runs), runs
                pauses += len(runs)
    assert pauses >= 5


def test_cuts_jump_in_histogram_at_recorded_shot_starts():
    cuts = 0
    for plan in _plans(40, 6):
        starts = [s.start for s in plan.shots]
        hists = [_hsv_hist(synth.render_frame(plan, t).rgb) for t in range(plan.frames)]
        d = np.array(
            [cv2.compareHist(hists[t - 1], hists[t], cv2.HISTCMP_BHATTACHARYYA) for t in range(1, plan.frames)]
        )
        at_cut = np.zeros(len(d), bool)
        at_cut[[s - 1 for s in starts[1:]]] = True
        if at_cut.any():
            assert d[at_cut].min() > 2 * d[~at_cut].max()
            cuts += int(at_cut.sum())
        backgrounds = [s.photo for s in plan.shots]
        assert all(a != b for a, b in zip(backgrounds, backgrounds[1:]))
    assert cuts >= 2


def test_panning_shots_move_the_background_as_recorded():
    """Phase correlation of consecutive frames of the background alone (movers would pull the
    peak their way) matches the recorded camera path, through noise, flicker and blur."""
    win = cv2.createHanningWindow(SMALL, cv2.CV_32F)
    checked = 0
    for plan in _plans(30, 12):
        plan = replace(plan, shots=[replace(s, layers=[]) for s in plan.shots])
        for shot in plan.shots:
            if shot.camera not in ("pan", "static"):
                continue
            measured, expected = [], []
            for i in range(1, shot.length):
                a = synth.render_frame(plan, shot.start + i - 1).rgb
                b = synth.render_frame(plan, shot.start + i).rgb
                (dx, dy), _ = cv2.phaseCorrelate(_gray(a), _gray(b), win)
                measured.append((dx, dy))
                # where the world point at the view centre of frame i-1 lands in frame i
                c = np.array([SMALL[0] / 2, SMALL[1] / 2, 1.0])
                prev_cam = synth.camera_at(shot, i - 1, *SMALL)
                expected.append((synth.camera_at(shot, i, *SMALL) @ np.linalg.inv(prev_cam) @ c)[:2] - c[:2])
            measured, expected = np.array(measured), np.array(expected)
            err = np.hypot(*(measured - expected).T)
            if shot.camera == "static":
                assert np.abs(expected).max() < 1e-9 and np.median(err) < 0.1
                continue
            assert np.median(np.hypot(*expected.T)) >= 0.25  # 0.5-4 px/frame at 320 wide
            assert np.median(err) < 0.25, (np.median(err), expected.mean(0), measured.mean(0))
            checked += 1
    assert checked >= 4


def test_cli_writes_tiny_clips_that_decode_frame_for_frame(tmp_path: Path, capsys):
    out = tmp_path / "synth"
    args = ["synth", "--out", str(out), "--clips", "2", "--frames", "20", "--size", "160x120", "--quiet"]
    assert main(args) == 0
    entries = json.loads((out / "clips.json").read_text())
    assert [e["name"] for e in entries] == ["clip000", "clip001"]
    for e in entries:
        assert (e["file"], e["width"], e["height"], e["fps"], e["frames"]) == (f"{e['name']}.mp4", 160, 120, 30, 20)
        assert 23 <= e["crf"] <= 30 and e["shot_starts"][0] == 0
        assert {"id", "shot", "moving", "photo", "mean_speed"} <= set(e["objects"][0])
        assert all(s["camera"] in synth.CAMERA_TYPES for s in e["shots"])
        gt_files = sorted((out / e["name"] / "gt").glob("*.png"))
        assert [p.name for p in gt_files] == [f"{i:06d}.png" for i in range(20)]
        assert len(list((out / e["name"] / "inst").glob("*.png"))) == 20
        frames, gt, inst, info = synth.render_clip(e["seed"], 20, (160, 120))
        assert np.array_equal(synth.load_gt(out / e["name"], 7), gt[7])
        assert np.array_equal(synth.load_gt(out / e["name"], 7, "inst"), inst[7])
        with av.open(str(out / e["file"])) as container:
            stream = container.streams.video[0]
            assert stream.codec_context.name == "h264" and stream.average_rate == 30
            decoded = [(f.pts * f.time_base, f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]
        assert len(decoded) == len(gt_files)
        assert [float(ts) for ts, _ in decoded] == pytest.approx([i / 30 for i in range(20)])
        for i, (_, img) in enumerate(decoded):  # decoded frame i is rendered frame i, lossy but close
            err = [np.abs(img.astype(np.float32) - f).mean() for f in frames]
            assert int(np.argmin(err)) == i or err[i] == min(err)
            assert err[i] < 10
        assert not list(out.glob(".*"))  # no temp files or folders left behind

    # the same command again gives the same bytes, mp4 included
    again = tmp_path / "again"
    assert main(args[:2] + [str(again)] + args[3:]) == 0
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        assert path.read_bytes() == (again / path.relative_to(out)).read_bytes(), path


def test_cli_rejects_unwritable_out_and_bad_size(tmp_path: Path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(["synth", "--out", str(blocker / "sub"), "--clips", "1", "--frames", "4", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "Traceback" not in err
    assert main(["synth", "--out", str(tmp_path / "o"), "--size", "161x120", "--frames", "4", "--quiet"]) == 2
    assert "even" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["synth", "--out", str(tmp_path / "o"), "--size", "big"])
