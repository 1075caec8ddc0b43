"""NumPy stand-ins for the few OpenCV calls on a device's path (`motionmask predict --model`):
resize, colour conversions, the shot histogram, the trimap's dilation and border fill, PNG
encoding. A device-only install (`pip install motionmask`, no OpenCV) imports this module as
`cv2`; with OpenCV installed (the rig role) OpenCV itself runs and this module is unused.

Same signatures and constants as the cv2 calls they replace; results match OpenCV's to within
one grey level (uint8 rounding; tests/test_npcv.py compares them). Any other cv2 name raises
ModuleNotFoundError(name="cv2"), which the command line turns into its one-line role error."""

from __future__ import annotations

import struct
import zlib
from typing import Any

import numpy as np

INTER_NEAREST, INTER_LINEAR, INTER_AREA = 0, 1, 3
BORDER_REPLICATE = 1
COLOR_BGR2RGB, COLOR_RGB2BGR, COLOR_RGB2GRAY, COLOR_RGB2HSV = 4, 4, 7, 41
MORPH_ELLIPSE = 2
IMWRITE_PNG_COMPRESSION, IMWRITE_PNG_STRATEGY, IMWRITE_PNG_FILTER = 16, 17, 19
IMWRITE_PNG_STRATEGY_RLE, IMWRITE_PNG_FILTER_NONE = 3, 8  # rows are always written unfiltered here


def __getattr__(name: str) -> Any:
    raise ModuleNotFoundError(f"OpenCV (cv2.{name}) is not installed: it comes with the rig role", name="cv2")


def _cast(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(x), info.min, info.max).astype(dtype)
    return x.astype(dtype, copy=False)


def _linear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """OpenCV's half-pixel bilinear sampling along one axis: indices i0, i1 and weight of i1."""
    x = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    i0 = np.minimum(np.floor(x).astype(np.intp), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, (x - i0).astype(np.float32)


def _area_matrix(n_in: int, n_out: int) -> np.ndarray:
    """n_out x n_in weights: each output cell averages the input cells it covers (by overlap)."""
    edges = np.arange(n_out + 1) * (n_in / n_out)
    lo, hi = edges[:-1, None], edges[1:, None]
    cells = np.arange(n_in)[None, :]
    overlap = np.clip(np.minimum(hi, cells + 1) - np.maximum(lo, cells), 0.0, None)
    return (overlap / (n_in / n_out)).astype(np.float32)


def _area_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """The area weights as K taps per output cell (indices and weights, K x n_out): a few gathers
    instead of a dense n_out x n_in product."""
    m = _area_matrix(n_in, n_out)
    start = np.floor(np.arange(n_out) * (n_in / n_out)).astype(np.intp)
    k = int(np.count_nonzero(m, axis=1).max())
    idx = np.minimum(start[None, :] + np.arange(k)[:, None], n_in - 1)
    w = np.where(start[None, :] + np.arange(k)[:, None] < n_in, m[np.arange(n_out)[None, :], idx], 0.0)
    return idx, w.astype(np.float32)


def _resize_axis(a: np.ndarray, n_out: int, axis: int, interpolation: int) -> np.ndarray:
    n_in = a.shape[axis]
    if n_in == n_out:
        return a
    if interpolation == INTER_NEAREST:
        return np.take(a, np.minimum((np.arange(n_out) * (n_in / n_out)).astype(np.intp), n_in - 1), axis=axis)
    if interpolation == INTER_AREA and n_out < n_in:
        if n_in % n_out == 0:
            f = n_in // n_out
            shape = a.shape[:axis] + (n_out, f) + a.shape[axis + 1 :]
            return a.reshape(shape).mean(axis=axis + 1, dtype=np.float32)
        idx, w = _area_taps(n_in, n_out)
        shape = [1] * a.ndim
        shape[axis] = n_out
        return sum(np.take(a, i, axis=axis) * wk.reshape(shape) for i, wk in zip(idx, w))
    i0, i1, w = _linear_taps(n_in, n_out)
    shape = [1] * a.ndim
    shape[axis] = n_out
    w = w.reshape(shape)
    return np.take(a, i0, axis=axis) * (1.0 - w) + np.take(a, i1, axis=axis) * w


def resize(src: np.ndarray, dsize: tuple[int, int], interpolation: int = INTER_LINEAR) -> np.ndarray:
    """cv2.resize(src, (width, height), interpolation=INTER_NEAREST | INTER_LINEAR | INTER_AREA)."""
    w, h = dsize
    a = src if interpolation == INTER_NEAREST else src.astype(np.float32)
    out = _resize_axis(_resize_axis(a, h, 0, interpolation), w, 1, interpolation)
    return np.ascontiguousarray(_cast(out, src.dtype))


def copyMakeBorder(src: np.ndarray, top: int, bottom: int, left: int, right: int, borderType: int) -> np.ndarray:
    if borderType != BORDER_REPLICATE:
        raise ModuleNotFoundError("OpenCV (cv2.copyMakeBorder other than BORDER_REPLICATE)", name="cv2")
    pad = [(top, bottom), (left, right)] + [(0, 0)] * (src.ndim - 2)
    return np.pad(src, pad, mode="edge")


def cvtColor(src: np.ndarray, code: int) -> np.ndarray:
    if code == COLOR_RGB2BGR:  # == COLOR_BGR2RGB, as in OpenCV
        return np.ascontiguousarray(src[..., ::-1])
    if code == COLOR_RGB2GRAY:
        return _cast(src[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32), src.dtype)
    if code == COLOR_RGB2HSV and src.dtype == np.uint8:
        r, g, b = (src[..., c].astype(np.float32) for c in range(3))
        v = np.maximum(np.maximum(r, g), b)  # not max(axis=-1): numpy is slow over a 3-wide last axis
        diff = v - np.minimum(np.minimum(r, g), b)
        s = np.where(v > 0, diff * 255.0 / np.maximum(v, 1.0), 0.0)
        d = np.maximum(diff, 1e-6)
        hue = np.where(
            v == r, 60.0 * (g - b) / d, np.where(v == g, 120.0 + 60.0 * (b - r) / d, 240.0 + 60.0 * (r - g) / d)
        )
        hue = np.where(diff > 0, hue, 0.0)
        hue = np.where(hue < 0, hue + 360.0, hue)
        hsv = np.stack([np.rint(hue / 2.0) % 180, np.rint(s), v], axis=-1)
        return hsv.astype(np.uint8)
    raise ModuleNotFoundError(f"OpenCV (cv2.cvtColor code {code})", name="cv2")


def convertScaleAbs(src: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    return _cast(np.abs(src.astype(np.float32) * alpha + beta), np.dtype(np.uint8))


def calcHist(
    images: list[np.ndarray], channels: list[int], mask: None, histSize: list[int], ranges: list[float]
) -> np.ndarray:
    """Uniform bins over [lo, hi) per channel, as float32 counts of shape histSize."""
    img = images[0]
    flat = np.zeros(img.shape[:2], np.intp)
    keep = np.ones(img.shape[:2], bool)
    for k, (c, n) in enumerate(zip(channels, histSize)):
        lo, hi = ranges[2 * k], ranges[2 * k + 1]
        v = img[..., c].astype(np.float64)
        keep &= (v >= lo) & (v < hi)
        flat = flat * n + np.clip(((v - lo) * n / (hi - lo)).astype(np.intp), 0, n - 1)
    counts = np.bincount(flat[keep], minlength=int(np.prod(histSize)))
    return counts.astype(np.float32).reshape(histSize)


def getStructuringElement(shape: int, ksize: tuple[int, int]) -> np.ndarray:
    if shape != MORPH_ELLIPSE:
        raise ModuleNotFoundError(f"OpenCV (cv2.getStructuringElement shape {shape})", name="cv2")
    kw, kh = ksize
    r, c = kh // 2, kw // 2
    k = np.zeros((kh, kw), np.uint8)
    for i in range(kh):
        dy = i - r
        if abs(dy) <= r:
            dx = int(round(c * np.sqrt((r * r - dy * dy) / (r * r)))) if r else c
            k[i, max(c - dx, 0) : min(c + dx + 1, kw)] = 1
    return k


def dilate(src: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Maximum over the kernel's footprint (anchor at its centre); outside the image counts as 0."""
    kh, kw = kernel.shape
    ay, ax = kh // 2, kw // 2
    h, w = src.shape
    padded = np.zeros((h + kh - 1, w + kw - 1), src.dtype)
    padded[ay : ay + h, ax : ax + w] = src
    out = np.zeros_like(src)
    for i, j in zip(*np.nonzero(kernel)):
        np.maximum(out, padded[i : i + h, j : j + w], out=out)
    return out


def floodFill(
    image: np.ndarray, mask: None, seedPoint: tuple[int, int], newVal: int
) -> tuple[int, np.ndarray, None, None]:
    """4-connected fill, in place, of the region of the seed's value that holds the seed."""
    x, y = seedPoint
    region = image == image[y, x]
    filled = np.zeros_like(region)
    filled[y, x] = True
    while True:  # whole runs along rows, then columns, until nothing grows: a few passes for usual shapes
        grown = _spread_runs(_spread_runs(filled, region, 1), region, 0)
        if (grown == filled).all():
            break
        filled = grown
    image[filled] = newVal
    return int(filled.sum()), image, None, None


def _spread_runs(filled: np.ndarray, region: np.ndarray, axis: int) -> np.ndarray:
    """`filled` plus every run of `region` along `axis` that holds a filled pixel."""
    out = filled.copy()
    for flip in (False, True):
        f = np.flip(filled, axis) if flip else filled
        r = np.flip(region, axis) if flip else region
        run = np.cumsum(~r, axis=axis)  # one number along each run of the region
        reach = r & (np.maximum.accumulate(np.where(f, run + 1, 0), axis=axis) == run + 1)
        out |= np.flip(reach, axis) if flip else reach
    return out


def imencode(ext: str, img: np.ndarray, params: list[int] | None = None) -> tuple[bool, np.ndarray]:
    """PNG of a uint8 gray or BGR image (OpenCV's channel order), as cv2.imencode(".png", ...)."""
    if ext.lower() != ".png" or img.dtype != np.uint8 or img.ndim not in (2, 3):
        raise ModuleNotFoundError(f"OpenCV (cv2.imencode {ext} {img.dtype} {img.shape})", name="cv2")
    opts = dict(zip((params or [])[::2], (params or [])[1::2]))
    level = opts.get(IMWRITE_PNG_COMPRESSION, 1)
    strategy = zlib.Z_RLE if opts.get(IMWRITE_PNG_STRATEGY) == IMWRITE_PNG_STRATEGY_RLE else zlib.Z_DEFAULT_STRATEGY
    h, w = img.shape[:2]
    if img.ndim == 2:
        colour, rows = 0, img
    else:
        colour, rows = 2, img[..., 2::-1].reshape(h, w * 3)  # BGR in, RGB in the file
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rows], axis=1).tobytes()  # filter 0 on every row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, colour, 0, 0, 0))
        + chunk(b"IDAT", _deflate(raw, level, strategy))
        + chunk(b"IEND", b"")
    )
    return True, np.frombuffer(png, np.uint8)


def _deflate(data: bytes, level: int, strategy: int) -> bytes:
    z = zlib.compressobj(level, zlib.DEFLATED, zlib.MAX_WBITS, 8, strategy)
    return z.compress(data) + z.flush()
