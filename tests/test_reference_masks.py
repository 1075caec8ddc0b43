"""Reference masks from a median background (synth.reference_masks) on a real encoded video
with a known mover, and on the first frames of the shared vtest.avi when it is there."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from common.errors import UserError
from streamer.config import SourceConfig
from streamer.sources import open_source
from synth import reference_masks as rm
from synth.things import load_gt
from tests._media import moving_square, write_video

W, H, SIZE, STEP, N = 128, 96, 24, 3, 40
VTEST = Path(__file__).resolve().parents[2] / "shared" / "data" / "vtest.avi"


def true_square(i: int) -> np.ndarray:
    """Where tests._media.moving_square draws the square in frame i."""
    m = np.zeros((H, W), bool)
    x, y = (i * STEP) % (W - SIZE), (H - SIZE) // 2
    m[y : y + SIZE, x : x + SIZE] = True
    return m


@pytest.fixture(scope="module")
def square_set(tmp_path_factory) -> tuple[Path, list[dict], Path]:
    data = tmp_path_factory.mktemp("data")
    # CRF 12: this checks the method's geometry; at the default CRF 23 x264 leaves remnants of the
    # saturated square a few pixels behind it in P-frames at 128x96, which no reference can undo
    write_video(data / "square.mp4", moving_square(N, W, H, size=SIZE, step=STEP), fps=25, options={"crf": "12"})
    out = tmp_path_factory.mktemp("ref") / "set"
    entries = rm.generate(out, data, clips=(rm.Clip("square", "square.mp4"),))
    return out, entries, data / "square.mp4"


def test_mask_covers_the_square_and_nothing_else(square_set) -> None:
    out, entries, _ = square_set
    # codec ringing around a saturated square reaches a macroblock (8 px) out: void there is right
    band = cv2.getStructuringElement(cv2.MORPH_RECT, (17, 17))
    for i in range(N):
        ref = load_gt(out / "square", i)
        assert set(np.unique(ref)) <= {0, 128, 255}
        truth = true_square(i)
        fg, scored = ref == 255, ref != 128  # void is not scored, as in the benchmarks
        assert (fg & truth & scored).sum() / ((fg | truth) & scored).sum() > 0.8, i
        assert ((fg == truth) | ~scored).mean() > 0.995, i  # where it is scored, it is right
        assert (fg & ~truth).sum() < 0.05 * truth.sum(), i  # the object's marks sit on the object
        far = ~cv2.dilate(truth.astype(np.uint8), band).astype(bool)
        assert (ref[far] != 255).all(), i
        # a few specks of x264 noise on the fine texture may be void; none is called an object
        assert (ref[far] == 0).mean() > 0.99, i


def test_edge_band_is_void(square_set) -> None:
    out, _, _ = square_set
    # frames with the square clear of the frame border: the border is not an edge of the object
    for i in [i for i in range(0, N, 3) if 4 <= (i * STEP) % (W - SIZE)]:
        truth = true_square(i).astype(np.uint8)
        edge = (truth - cv2.erode(truth, np.ones((3, 3), np.uint8))).astype(bool)  # the square's outline
        ref = load_gt(out / "square", i)
        assert (ref[edge] == 128).mean() > 0.9, i


def test_frames_line_up_with_open_source(square_set) -> None:
    out, entries, video = square_set
    with open_source(str(video), SourceConfig()) as source:
        decoded = sum(1 for _ in source)
    (entry,) = entries
    assert decoded == entry["frames"] == N == len(list((out / "square" / "gt").glob("*.png")))
    assert json.loads((out / "clips.json").read_text()) == entries
    assert entry["file"] == str(video.resolve()) and Path(out / entry["file"]) == video.resolve()
    assert (entry["shot_starts"], entry["family"], entry["version"]) == ([0], "real", rm.VERSION)
    assert (entry["width"], entry["height"]) == (W, H) and entry["params"]["band"] == rm.Params().band


def test_missing_data_folder_names_it(tmp_path) -> None:
    missing = tmp_path / "no-data-here"
    with pytest.raises(UserError, match=str(missing)):
        rm.reference_set(tmp_path / "cache", missing)
    assert not (tmp_path / "cache" / f"real_v{rm.VERSION}" / "clips.json").exists()


def test_missing_clip_names_it(tmp_path) -> None:
    (tmp_path / "data").mkdir()
    with pytest.raises(UserError, match="vtest.avi"):
        rm.reference_set(tmp_path / "cache", tmp_path / "data")


@pytest.mark.skipif(not VTEST.is_file(), reason="../shared/data/vtest.avi is not here")
def test_vtest_first_frames(tmp_path) -> None:
    """The real clip, its first 60 frames only (a few seconds): walkers found, static scene 0."""
    entry = rm.build_clip(VTEST, tmp_path, "vtest", max_frames=60)
    assert entry["frames"] == 60 == len(list((tmp_path / "vtest" / "gt").glob("*.png")))
    assert 0.002 < entry["mean_foreground"] < 0.05
    assert entry["mean_void"] < 0.08
    ref = load_gt(tmp_path / "vtest", 30)
    assert ref.shape == (576, 768)
    assert (ref == 0).mean() > 0.85
