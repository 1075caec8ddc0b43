"""Pictures of the masks for a person: overlay frames, an H.264 overlay.mp4, a contact sheet PNG."""

from __future__ import annotations

import functools
import os
from fractions import Fraction
from pathlib import Path

import av

try:
    import cv2
except ModuleNotFoundError:  # device-only install: NumPy stand-ins on predict's path (common/npcv.py)
    from common import npcv as cv2
import numpy as np

from streamer.frames import MaskResult
from streamer.png import write_png

KEPT_TINT = (40, 220, 90)  # green: a usable training sample
PRUNED_TINT = (235, 60, 60)  # red: pruned, with the reason in the text
POSITIVE_EDGE = (255, 235, 0)  # trimap 255 boundary
UNKNOWN_EDGE = (0, 190, 255)  # outer boundary of the don't-care band


def caption(result: MaskResult) -> str:
    state = "kept" if result.kept else f"pruned: {result.reason or '?'}"
    return f"#{result.frame.index} shot {result.shot} {state}"


def put_text(img: np.ndarray, text: str, org: tuple[int, int], scale: float) -> None:
    """Outlined text, readable on any background."""
    thick = max(1, round(scale * 2))
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick + 2, cv2.LINE_AA)
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick, cv2.LINE_AA)


@functools.lru_cache(maxsize=4)
def _solid(h: int, w: int, rgb: tuple[int, int, int]) -> np.ndarray:
    img = np.empty((h, w, 3), np.uint8)
    img[:] = rgb
    img.flags.writeable = False
    return img


def render_overlay(result: MaskResult, alpha: float = 0.55, text: bool = True) -> np.ndarray:
    """The frame tinted by foreground probability, trimap contours, and a caption. RGB uint8."""
    img = result.frame.image
    h, w = img.shape[:2]
    a = result.prob.astype(np.float32) * alpha
    np.clip(a, 0.0, alpha, out=a)
    if not np.isfinite(a.sum()):  # a NaN weight would smear garbage over the frame
        a = np.nan_to_num(a, nan=0.0)
    colour = _solid(h, w, KEPT_TINT if result.kept else PRUNED_TINT)
    out = cv2.blendLinear(img, colour, 1.0 - a, a)  # several times faster than numpy at 1080p
    line = max(1, round(min(h, w) / 360))
    for value, colour in ((1, UNKNOWN_EDGE), (255, POSITIVE_EDGE)):
        region = (result.trimap >= value).astype(np.uint8)
        if region.any() and not region.all():
            contours, _ = cv2.findContours(region, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(out, contours, -1, colour, line, cv2.LINE_AA)
    if not text:
        return out
    scale = max(0.3, min(1.0, w / 900))
    put_text(out, caption(result), (3, max(10, round(22 * scale * 1.4))), scale)
    return out


def contact_label(result: MaskResult) -> list[str]:
    state = "kept" if result.kept else f"pruned: {result.reason or '?'}"
    return [f"frame {result.frame.index}  shot {result.shot}", state]


def trimap_rgb(trimap: np.ndarray) -> np.ndarray:
    return np.repeat(np.ascontiguousarray(trimap, dtype=np.uint8)[..., None], 3, axis=2)


def _rate(fps: float | None) -> Fraction:
    if not fps or not np.isfinite(fps) or fps <= 0 or fps > 1000:
        return Fraction(25)
    return Fraction(fps).limit_denominator(1001)


class OverlayVideo:
    """H.264 yuv420p MP4. Encoded under a hidden temp name and renamed by close(), so `path` is
    always either absent or a whole playable file. Odd sizes are padded to even (yuv420p needs it);
    frames whose size changes mid-stream are scaled to the first frame's size."""

    def __init__(self, path: str | Path, width: int, height: int, fps: float | None = None, crf: int = 23):
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.partial")
        self.width, self.height = int(width), int(height)
        self.frames = 0
        rate = _rate(fps)
        self._container = av.open(str(self.tmp), mode="w", format="mp4")
        try:
            self._stream = self._container.add_stream("libx264", rate=rate)
            self._stream.width = self.width + self.width % 2
            self._stream.height = self.height + self.height % 2
            self._stream.pix_fmt = "yuv420p"
            self._stream.codec_context.time_base = 1 / rate
            # veryfast: the overlay is for looking at, and must not slow the mask run down
            self._stream.options = {"preset": "veryfast", "crf": str(crf)}
        except BaseException:
            self.abort()
            raise

    def write(self, rgb: np.ndarray) -> None:
        if rgb.shape[:2] != (self.height, self.width):
            rgb = cv2.resize(rgb, (self.width, self.height), interpolation=cv2.INTER_AREA)
        ph, pw = self._stream.height - self.height, self._stream.width - self.width
        if ph or pw:
            rgb = cv2.copyMakeBorder(rgb, 0, ph, 0, pw, cv2.BORDER_REPLICATE)
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        frame.pts = self.frames
        frame.time_base = self._stream.codec_context.time_base
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        """Flush the encoder, finish the MP4 and move it into place."""
        if self._container is None:
            return
        try:
            for packet in self._stream.encode(None):
                self._container.mux(packet)
            self._container.close()
            self._container = None
            os.replace(self.tmp, self.path)
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Give up: nothing is left under either name."""
        if self._container is not None:
            try:
                self._container.close()
            except Exception:
                pass
            self._container = None
        try:
            os.unlink(self.tmp)
        except FileNotFoundError:
            pass


class ContactSheet:
    """About `columns` evenly spaced frames of a run of unknown length in bounded memory: keep
    every `stride`-th frame, and when more than 4 x columns are kept, drop every other one and
    double the stride. Rows: frame, overlay, trimap."""

    def __init__(self, columns: int = 8, thumb_width: int = 240):
        self.columns = columns
        self.thumb_width = thumb_width
        self.stride = 1
        self.seen = 0
        self._kept: list[tuple[int, list[str], list[np.ndarray]]] = []  # (position, label lines, rows)

    def wants(self) -> bool:
        """Whether the next add() keeps its frame; lets callers skip rendering the others."""
        return self.seen % self.stride == 0

    def add(self, label: str | list[str], rows: list[np.ndarray]) -> None:
        """`label`: the column's heading (one or more short lines); rows: RGB or gray images."""
        pos, self.seen = self.seen, self.seen + 1
        if pos % self.stride:
            return
        lines = [label] if isinstance(label, str) else list(label)
        self._kept.append((pos, lines, [self._thumb(r) for r in rows]))
        if len(self._kept) > 4 * self.columns:  # 4x: the final picks land close to even
            self.stride *= 2
            self._kept = [k for k in self._kept if k[0] % self.stride == 0]

    def _thumb(self, img: np.ndarray) -> np.ndarray:
        if img.ndim == 2:
            img = trimap_rgb(img)
        h, w = img.shape[:2]
        tw = self.thumb_width
        th = max(1, round(h * tw / w))
        interp = cv2.INTER_AREA if w > tw else cv2.INTER_NEAREST
        return cv2.resize(img, (tw, th), interpolation=interp)

    def render(self) -> np.ndarray | None:
        if not self._kept:
            return None
        picks = np.unique(np.linspace(0, len(self._kept) - 1, min(self.columns, len(self._kept))).round().astype(int))
        chosen = [self._kept[i] for i in picks]
        gap = 4
        n_lines = max(len(lines) for _, lines, _ in chosen)
        label_h = 6 + 18 * n_lines
        tw = self.thumb_width
        th = max(t.shape[0] for _, _, rows in chosen for t in rows)
        n_rows = max(len(rows) for _, _, rows in chosen)
        sheet = np.full((label_h + n_rows * (th + gap), len(chosen) * (tw + gap) + gap, 3), 32, np.uint8)
        for c, (_, lines, rows) in enumerate(chosen):
            x = gap + c * (tw + gap)
            for k, line in enumerate(lines):
                put_text(sheet, line, (x + 2, 18 + 18 * k), 0.45)
            for r, thumb in enumerate(rows):
                y = label_h + r * (th + gap)
                sheet[y : y + thumb.shape[0], x : x + tw] = thumb
        return sheet

    def save(self, path: str | Path) -> bool:
        sheet = self.render()
        if sheet is None:
            return False
        write_png(path, sheet)
        return True
