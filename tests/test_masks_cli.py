"""`motionmask masks` end to end: real videos written with PyAV, decoded, segmented and written
through motionmask.cli.main, then read back as a user's tools would."""

from __future__ import annotations

import json
import logging
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from _media import write_empty_video, write_video

from motionmask.cli import main

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
CONTRACT_KEYS = {"frame", "shot", "fg_fraction", "kept", "reason", "ms", "timestamp", "source"}


# -- test media ------------------------------------------------------------------------------
def scene(n: int, w: int, h: int, cut_at: int | None = None, seed: int = 0) -> list[np.ndarray]:
    """A textured square gliding over a textured, still background; at `cut_at` the background
    and the object change completely (a shot cut)."""
    rng = np.random.default_rng(seed)

    def texture(shape: tuple[int, int], colour: np.ndarray) -> np.ndarray:
        low = rng.random((max(2, shape[0] // 6), max(2, shape[1] // 6), 3)).astype(np.float32)
        t = cv2.resize(low, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)
        return np.clip(colour * (0.45 + 0.9 * t), 0, 255).astype(np.uint8)

    looks = [
        (texture((h, w), np.array([70, 140, 200.0])), texture((h // 2, h // 2), np.array([230, 90, 40.0]))),
        (texture((h, w), np.array([200, 190, 60.0])), texture((h // 2, h // 2), np.array([40, 60, 230.0]))),
    ]
    frames = []
    for i in range(n):
        bg, obj = looks[1 if cut_at is not None and i >= cut_at else 0]
        img = bg.copy()
        s = obj.shape[0]
        x = 4 + (3 * i) % max(1, w - s - 8)
        y = h // 4
        img[y : y + s, x : x + s] = obj
        frames.append(img)
    return frames


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("media")
    m = {
        "cut": write_video(d / "cut.mp4", scene(24, 96, 64, cut_at=12), fps=10),
        "odd": write_video(d / "odd.mp4", scene(12, 175, 143, seed=1), codec="mpeg4"),
        "gray": write_video(
            d / "gray.mkv",
            [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in scene(10, 80, 64, seed=2)],
            codec="ffv1",
            pix_fmt="gray",
        ),
        "black": write_video(d / "black.mp4", [np.zeros((48, 64, 3), np.uint8)] * 10),
        "one": write_video(d / "one.mp4", scene(1, 64, 48)),
        "long": write_video(d / "long.mkv", scene(30, 96, 64, seed=3)),
    }
    trunc = d / "truncated.mkv"
    data = m["long"].read_bytes()
    trunc.write_bytes(data[: len(data) // 2 + 99])  # a cut download: mid-packet, no tail
    m["truncated"] = trunc
    notvideo = d / "notes.mp4"
    notvideo.write_bytes(b"this is a shopping list, not a movie\n" * 50)
    m["notvideo"] = notvideo
    m["empty"] = write_empty_video(d / "empty.avi")  # a video stream with no frames
    return m


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    rc = main(["masks", *map(str, argv)])
    return rc, capsys.readouterr().err


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "frames.jsonl").read_text().splitlines()]


def png_names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.png") if p.name[0].isdigit())


def decode_count(path: Path) -> tuple[int, tuple[int, int]]:
    with av.open(str(path)) as c:
        frames = list(c.decode(video=0))
    return len(frames), (frames[0].width, frames[0].height)


def assert_one_error_line(err: str, *names: object) -> None:
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error" in line.lower()]
    assert len(lines) == 1, err
    for name in names:
        assert str(name) in lines[0], lines[0]


# -- the file contract -----------------------------------------------------------------------
def test_contract_with_overlay_and_shots(media, tmp_path, capsys):
    out = tmp_path / "out"
    rc, err = run_cli(capsys, media["cut"], "--out", out, "--overlay")
    assert rc == 0, err
    names = [f"{i:06d}.png" for i in range(24)]
    assert png_names(out) == names
    assert png_names(out / "trimap") == names
    tri_values: set[int] = set()
    for name in names:
        mask = cv2.imread(str(out / name), cv2.IMREAD_UNCHANGED)
        tri = cv2.imread(str(out / "trimap" / name), cv2.IMREAD_UNCHANGED)
        assert mask.shape == tri.shape == (64, 96) and mask.dtype == tri.dtype == np.uint8
        tri_values |= set(np.unique(tri).tolist())
    assert tri_values <= {0, 128, 255} and 0 in tri_values
    recs = records(out)
    assert [r["frame"] for r in recs] == list(range(24))
    assert all(set(r) == CONTRACT_KEYS for r in recs)
    assert {r["shot"] for r in recs} == {0, 1}
    assert [r["shot"] for r in recs].index(1) == 12  # the cut is where the video cuts
    assert all(r["source"] == "cut.mp4" and isinstance(r["ms"], dict) for r in recs)
    assert all((r["reason"] == "") == r["kept"] for r in recs)
    assert recs[10]["timestamp"] == pytest.approx(1.0)
    assert decode_count(out / "overlay.mp4") == (24, (96, 64))
    sheet = cv2.imread(str(out / "contact.png"))
    assert sheet is not None and sheet.shape[0] > 3 * 100 and sheet.shape[1] > 8 * 200
    assert not [p.name for p in out.rglob(".*")]  # no temp files left behind
    summary = err.strip().splitlines()[-1]
    assert "24 frames" in summary and "2 shots" in summary and str(out) in summary


def test_start_and_frames_use_decode_indices(media, tmp_path, capsys):
    out = tmp_path / "out"
    rc, err = run_cli(capsys, media["cut"], "--out", out, "--start", 5, "--frames", 7, "--quiet")
    assert rc == 0, err
    assert [r["frame"] for r in records(out)] == list(range(5, 12))
    assert png_names(out) == [f"{i:06d}.png" for i in range(5, 12)]
    assert err.strip().count("\n") == 0  # --quiet: no bar, only the summary line
    assert not (out / "overlay.mp4").exists() and not (out / "contact.png").exists()
    # a fresh run into the same folder replaces the earlier one, pictures included
    rc, _ = run_cli(capsys, media["cut"], "--out", out, "--start", 20, "--quiet", "--overlay")
    assert rc == 0
    assert decode_count(out / "overlay.mp4")[0] == 4
    rc, _ = run_cli(capsys, media["cut"], "--out", out, "--start", 21, "--quiet")
    assert rc == 0
    assert png_names(out) == [f"{i:06d}.png" for i in range(21, 24)]
    assert [r["frame"] for r in records(out)] == list(range(21, 24))
    assert not (out / "overlay.mp4").exists() and not (out / "contact.png").exists()


def test_progress_is_log_lines_when_stderr_is_not_a_terminal(media, tmp_path, capsys, caplog, monkeypatch):
    from motionmask.commands.mask_outputs import Progress

    monkeypatch.setattr(Progress, "LINE_EVERY_S", 0.0)  # a line for every frame, not every 10 s
    with caplog.at_level(logging.INFO):
        rc, err = run_cli(capsys, media["cut"], "--out", tmp_path / "out", "--frames", 6)
    assert rc == 0, err
    assert "\r" not in err  # no bar redraws in a log file
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("event=progress ")]
    assert len(lines) == 6 and "frames=6/6" in lines[-1], lines


# -- bad input: one line, non-zero exit, no traceback -----------------------------------------
@pytest.mark.parametrize("which", ["missing", "notvideo", "empty"])
def test_bad_input_files(media, tmp_path, capsys, which):
    path = media[which] if which in media else tmp_path / "no_such_clip.mp4"
    out = tmp_path / "out"
    rc, err = run_cli(capsys, path, "--out", out)
    assert rc != 0
    assert_one_error_line(err, path)
    assert not out.exists()  # nothing was created for a run that never started


def test_bad_config_key(media, tmp_path, capsys):
    cfg = tmp_path / "typo.yaml"
    cfg.write_text("streamer:\n  flow:\n    widht: 120\n")
    rc, err = run_cli(capsys, media["cut"], "--out", tmp_path / "out", "--config", cfg)
    assert rc != 0
    assert_one_error_line(err, cfg, "widht")


@pytest.mark.parametrize("flag, value", [("--start", "-1"), ("--start", "abc"), ("--frames", "0"), ("--frames", "2.5")])
def test_bad_numbers(media, tmp_path, capsys, flag, value):
    rc, err = run_cli(capsys, media["cut"], "--out", tmp_path / "out", flag, value)
    assert rc == 2
    assert_one_error_line(err, flag, value)


def test_out_is_a_file(media, tmp_path, capsys):
    f = tmp_path / "taken.txt"
    f.write_text("keep me")
    rc, err = run_cli(capsys, media["cut"], "--out", f)
    assert rc == 2
    assert_one_error_line(err, f)
    assert f.read_text() == "keep me"


def test_help_has_an_example(capsys):
    with pytest.raises(SystemExit) as e:
        main(["masks", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "examples:" in text and "motionmask masks " in text and "--overlay" in text


# -- awkward but valid input: exit 0 ---------------------------------------------------------
def test_truncated_file_keeps_the_decodable_part(media, tmp_path, capsys, caplog):
    out = tmp_path / "out"
    rc, err = run_cli(capsys, media["truncated"], "--out", out, "--quiet")
    assert rc == 0, err
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name.startswith("streamer")]
    assert warnings and "truncated.mkv" in warnings[0].getMessage()
    n = len(records(out))
    assert 5 <= n < 30
    assert png_names(out) == [f"{i:06d}.png" for i in range(n)]


def test_one_frame_file(media, tmp_path, capsys):
    out = tmp_path / "out"
    rc, err = run_cli(capsys, media["one"], "--out", out, "--overlay", "--quiet")
    assert rc == 0, err
    assert png_names(out) == ["000000.png"]
    assert len(records(out)) == 1
    assert decode_count(out / "overlay.mp4")[0] == 1


def test_all_black_video_has_no_foreground(media, tmp_path, capsys):
    out = tmp_path / "out"
    rc, err = run_cli(capsys, media["black"], "--out", out, "--quiet")
    assert rc == 0, err
    recs = records(out)
    assert len(recs) == 10 and not any(r["kept"] for r in recs)
    for name in png_names(out):
        assert cv2.imread(str(out / name), cv2.IMREAD_UNCHANGED).max() < 128


def test_grayscale_video(media, tmp_path, capsys):
    out = tmp_path / "out"
    rc, err = run_cli(capsys, media["gray"], "--out", out, "--quiet")
    assert rc == 0, err
    assert len(png_names(out)) == 10
    assert cv2.imread(str(out / "000003.png"), cv2.IMREAD_UNCHANGED).shape == (64, 80)


def test_odd_size_keeps_input_resolution(media, tmp_path, capsys):
    out = tmp_path / "out"
    rc, err = run_cli(capsys, media["odd"], "--out", out, "--overlay", "--quiet")
    assert rc == 0, err
    assert len(png_names(out)) == 12
    for folder in (out, out / "trimap"):
        assert cv2.imread(str(folder / "000007.png"), cv2.IMREAD_UNCHANGED).shape == (143, 175)
    assert decode_count(out / "overlay.mp4") == (12, (176, 144))  # padded to even for yuv420p


# -- real processes: signals and a full disk ------------------------------------------------
def spawn(*argv: object, cwd: Path = ROOT) -> subprocess.Popen:
    return subprocess.Popen(
        [PY, "-m", "motionmask.cli", "masks", *map(str, argv)],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_leaves_whole_outputs(media, tmp_path, sig, code):
    loop = tmp_path / "loop.yaml"
    loop.write_text("streamer:\n  source:\n    loop: true\n")  # endless, until the signal
    out = tmp_path / "out"
    proc = spawn(media["cut"], "--out", out, "--overlay", "--config", loop)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / "frames.jsonl").exists() and (out / "frames.jsonl").read_text().count("\n") >= 30:
                break
            time.sleep(0.1)
        assert proc.poll() is None, proc.communicate()[1]
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, err
    assert "Traceback" not in err and "interrupted" in err
    recs = records(out)
    assert [r["frame"] for r in recs] == list(range(len(recs)))
    assert png_names(out) == [f"{i:06d}.png" for i in range(len(recs))]
    n, size = decode_count(out / "overlay.mp4")
    assert size == (96, 64) and abs(n - len(recs)) <= 1
    assert (out / "contact.png").exists()
    assert not [p.name for p in out.rglob(".*")]


def in_private_mounts(script: str) -> subprocess.CompletedProcess:
    """Run a shell script in a user + mount namespace: it may mount a tiny or read-only file
    system that nobody else sees and that vanishes with it."""
    if not shutil.which("unshare") or subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode:
        pytest.skip("user namespaces (unshare -rm) are not available here")
    return subprocess.run(["unshare", "-rm", "sh", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_read_only_out_is_one_line(media, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    proc = in_private_mounts(
        f"mount --bind -o ro {ro} {ro} && {PY} -m motionmask.cli masks {media['cut']} --out {ro / 'masks'}"
    )
    assert proc.returncode == 2, proc.stderr
    assert_one_error_line(proc.stderr, ro / "masks", "not writable")


def test_full_disk_is_one_line_and_keeps_whole_files(media, tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    shutil.copy(media["cut"], tmp_path / "in.mp4")
    # a private 64 KiB tmpfs: the disk fills up after a few frames
    script = (
        f"mount -t tmpfs -o size=64k tmpfs {mnt} && {PY} -m motionmask.cli masks "
        f"{tmp_path / 'in.mp4'} --out {mnt / 'out'} --quiet"
    )
    # look at what survived from inside the namespace, before the tmpfs goes away with it
    check = (
        f"; rc=$?; cd {mnt / 'out'} && cat frames.jsonl > {tmp_path / 'jsonl'}; "
        f"ls -A > {tmp_path / 'ls_top'}; ls -A trimap > {tmp_path / 'ls_tri'}; "
        f"cp *.png {tmp_path}/; exit $rc"
    )
    proc = in_private_mounts(script + check)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert len(lines) == 1 and "No space left on device" in lines[0], proc.stderr
    recs = [json.loads(line) for line in (tmp_path / "jsonl").read_text().splitlines()]  # no torn line
    assert 0 < len(recs) < 24
    names = [f"{r['frame']:06d}.png" for r in recs]
    # every line has its two PNGs, every PNG has its line, and no temp file is left
    assert sorted((tmp_path / "ls_top").read_text().split()) == sorted(names + ["frames.jsonl", "trimap"])
    assert sorted((tmp_path / "ls_tri").read_text().split()) == names
    for name in names:
        assert cv2.imread(str(tmp_path / name), cv2.IMREAD_UNCHANGED).shape == (64, 96)
