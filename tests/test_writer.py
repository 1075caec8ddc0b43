"""The on-disk mask contract (streamer.writer) and the pictures (streamer.overlay), on hand-made
MaskResults; the end-to-end path through real decoding is in test_masks_cli.py."""

from __future__ import annotations

import errno
import json
import os

import av
import cv2
import numpy as np
import pytest

from common.errors import UserError
from streamer.frames import Frame
from streamer.motion.pipeline import MaskResult
from streamer.overlay import ContactSheet, OverlayVideo, contact_label, render_overlay
from streamer.writer import JSONL_NAME, MaskWriter, append_line, prob_to_png


def make_result(index: int, h: int = 48, w: int = 64, kept: bool = True, shot: int = 0) -> MaskResult:
    rng = np.random.default_rng(index)
    image = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    prob = np.zeros((h, w), np.float32)
    prob[h // 4 : h // 2, w // 4 : w // 2] = 1.0
    prob[0, 0] = 0.5  # round(0.5 * 255) = 128
    trimap = np.zeros((h, w), np.uint8)
    trimap[h // 4 - 2 : h // 2 + 2, w // 4 - 2 : w // 2 + 2] = 128
    trimap[h // 4 : h // 2, w // 4 : w // 2] = 255
    return MaskResult(
        frame=Frame(image=image, source_id="clip.mp4", index=index, timestamp=index / 25),
        shot=shot,
        prob=prob,
        trimap=trimap,
        fg_fraction=float((prob >= 0.5).mean()),
        kept=kept,
        reason="" if kept else "too_little_fg",
        timings_ms={"flow": 1.23456, "vote": 0.5},
    )


def test_prob_to_png_rounds_and_clips():
    p = np.array([[0.0, 0.5, 1.0, 1.7], [-0.2, np.nan, 0.2, 0.999]], np.float32)
    assert prob_to_png(p).tolist() == [[0, 128, 255, 255], [0, 0, 51, 255]]


def test_writer_contract(tmp_path):
    out = tmp_path / "a" / "b"  # parents are created
    with MaskWriter(out) as w:
        for i in (3, 4, 5):
            w.write(make_result(i, kept=i != 4))
    assert sorted(p.name for p in out.glob("*.png")) == ["000003.png", "000004.png", "000005.png"]
    assert sorted(p.name for p in (out / "trimap").glob("*.png")) == ["000003.png", "000004.png", "000005.png"]
    mask = cv2.imread(str(out / "000003.png"), cv2.IMREAD_UNCHANGED)
    assert mask.dtype == np.uint8 and mask.shape == (48, 64)
    assert mask[0, 0] == 128 and mask[20, 20] == 255 and mask[47, 63] == 0
    tri = cv2.imread(str(out / "trimap" / "000003.png"), cv2.IMREAD_UNCHANGED)
    assert set(np.unique(tri).tolist()) == {0, 128, 255}
    lines = (out / JSONL_NAME).read_text().splitlines()
    recs = [json.loads(line) for line in lines]
    assert [r["frame"] for r in recs] == [3, 4, 5]
    assert set(recs[0]) == {"frame", "shot", "fg_fraction", "kept", "reason", "ms", "timestamp", "source"}
    assert recs[1]["kept"] is False and recs[1]["reason"] == "too_little_fg"
    assert recs[0]["ms"] == {"flow": 1.235, "vote": 0.5} and recs[0]["source"] == "clip.mp4"
    assert recs[2]["timestamp"] == pytest.approx(0.2)
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]  # no temp files left


def test_fresh_run_replaces_previous_run_but_never_foreign_files(tmp_path):
    out = tmp_path / "out"
    with MaskWriter(out) as w:
        for i in range(5):
            w.write(make_result(i))
    with MaskWriter(out) as w:
        w.write(make_result(7))
    assert sorted(p.name for p in out.glob("*.png")) == ["000007.png"]
    assert [json.loads(x)["frame"] for x in (out / JSONL_NAME).read_text().splitlines()] == [7]
    # a folder without our frames.jsonl is not ours: its images stay
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "000001.png").write_bytes(b"not ours")
    with MaskWriter(foreign) as w:
        w.write(make_result(2))
    assert (foreign / "000001.png").read_bytes() == b"not ours"


def test_out_dir_errors_name_the_path(tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(UserError, match="file.txt: is a file"):
        MaskWriter(f)
    with pytest.raises(UserError, match="is a file"):
        MaskWriter(f / "sub")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):  # root ignores permission bits
            pytest.skip("running as a user who can write anywhere")
        with pytest.raises(UserError, match="not writable"):
            MaskWriter(ro / "out")
    finally:
        ro.chmod(0o700)


def test_append_line_on_full_device_raises_enospc_without_partial_line():
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    fd = os.open("/dev/full", os.O_WRONLY | os.O_APPEND)
    try:
        with pytest.raises(OSError) as e:
            append_line(fd, b'{"frame": 1}\n')
        assert e.value.errno == errno.ENOSPC
    finally:
        os.close(fd)


def test_overlay_video_odd_size_is_padded_and_playable(tmp_path):
    path = tmp_path / "overlay.mp4"
    video = OverlayVideo(path, width=175, height=143, fps=12.5)
    for i in range(6):
        r = make_result(i, h=143, w=175, kept=i % 2 == 0)
        img = render_overlay(r)
        assert img.shape == (143, 175, 3) and img.dtype == np.uint8
        video.write(img)
    assert not path.exists()  # only the temp name exists until close
    video.close()
    assert not video.tmp.exists()
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        assert s.codec_context.name == "h264"
        frames = list(c.decode(s))
    assert len(frames) == 6
    assert (frames[0].width, frames[0].height) == (176, 144)
    assert frames[0].format.name == "yuv420p"


def test_overlay_abort_leaves_nothing(tmp_path):
    path = tmp_path / "overlay.mp4"
    video = OverlayVideo(path, width=64, height=48, fps=None)
    video.write(render_overlay(make_result(0)))
    video.abort()
    assert list(tmp_path.iterdir()) == []


def test_overlay_tints_foreground_and_marks_pruned_in_red():
    r = make_result(0, kept=False)
    r.frame.image[:] = 100
    img = render_overlay(r).astype(int)
    inside, outside = img[18, 24], img[40, 60]
    assert inside[0] > inside[1] + 40  # red tint on the foreground of a pruned frame
    assert abs(outside - 100).max() <= 1  # background untouched


def test_contact_sheet_picks_evenly_spaced_frames_in_bounded_memory(tmp_path):
    sheet = ContactSheet(columns=8, thumb_width=80)
    for i in range(1000):
        if sheet.wants():
            r = make_result(i)
            sheet.add(contact_label(r), [r.frame.image, render_overlay(r, text=False), r.trimap])
        else:
            sheet.add("", [])
        assert len(sheet._kept) <= 32
    idx = [k[0] for k in sheet._kept]  # positions in the run, here equal to frame indices
    picks = np.linspace(0, len(idx) - 1, 8).round().astype(int)
    chosen = [idx[p] for p in picks]
    assert chosen[0] == 0 and chosen[-1] > 800
    gaps = np.diff(chosen)
    assert gaps.max() <= 1.5 * gaps.min()
    assert sheet.save(tmp_path / "contact.png")
    png = cv2.imread(str(tmp_path / "contact.png"))
    assert png.shape[1] == 8 * (80 + 4) + 4
    assert png.shape[0] >= 3 * 60  # three rows of 80x60 thumbnails
    assert not ContactSheet().save(tmp_path / "empty.png")
