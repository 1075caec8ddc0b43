"""Wire format of training samples between a rig and a remote learner (schema 1); the human
spec is docs/protocol.md, "Training samples between machines". Keep the two in step.

One ZeroMQ multipart message per sample:

    header JSON | frame JPEG | trimap PNG | motion probability PNG [| flow]

and per tracked-patch pair (learner.heads.embedding):

    header JSON | query JPEG | tracked JPEG

The header names the schema and its version first, so that a learner tells a foreign or newer
message from a damaged one and drops either with a count, never a crash. Everything a sender
claims is checked before any pixel is decoded: the image sizes are read from the JPEG and PNG
headers themselves, so a forged header cannot make the learner inflate a huge image.
"""

from __future__ import annotations

import json
import struct
import time
import zlib
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from common import json_input

SCHEMA = "motionmask.sample"
VERSION = 1
KINDS = ("sample", "pair")
MAX_HEADER = 4096  # bytes: a larger first part is not ours
MAX_NAME = 64
_PNG_SIG = b"\x89PNG\r\n\x1a\n"
# The trimap (three levels) and the motion probability (smooth blobs): fast deflate, no row filter
_PNG_PARAMS = [
    cv2.IMWRITE_PNG_COMPRESSION,
    1,
    cv2.IMWRITE_PNG_STRATEGY,
    cv2.IMWRITE_PNG_STRATEGY_RLE,
    cv2.IMWRITE_PNG_FILTER,
    cv2.IMWRITE_PNG_FILTER_NONE,
]
_INT = (int,)
_SAMPLE_FIELDS: dict[str, tuple[type, ...]] = {
    "rig": (str,),
    "camera": (str,),
    "seq": _INT,
    "sent_ns": _INT,
    "frame": _INT,
    "shot": _INT,
    "capture_time": (int, float),
    "width": _INT,
    "height": _INT,
    "valid": (list,),
    "source_hw": (list,),
    "flow": (bool,),
    "rig_sent": _INT,
    "rig_dropped": _INT,
}
_PAIR_FIELDS: dict[str, tuple[type, ...]] = {
    "rig": (str,),
    "camera": (str,),
    "seq": _INT,
    "sent_ns": _INT,
    "shot": _INT,
    "t0": _INT,
    "t1": _INT,
    "track": _INT,
    "patch": _INT,
    "rig_sent": _INT,
    "rig_dropped": _INT,
}


class WireError(ValueError):
    """A message that is not a schema-1 sample this learner can take; `reason` is a short tag
    for counters (header, version, size, payload, ...), the text says more."""

    def __init__(self, reason: str, text: str) -> None:
        super().__init__(text)
        self.reason = reason


@dataclass
class WireSample:
    header: dict[str, Any]
    image: np.ndarray  # H x W x 3 uint8 RGB
    trimap: np.ndarray  # H x W uint8
    prob: np.ndarray  # H x W uint8
    flow: np.ndarray | None  # H x W x 2 float16, or None


@dataclass
class WirePair:
    header: dict[str, Any]
    query: np.ndarray  # P x P x 3 uint8 RGB
    tracked: np.ndarray


# ---- encoding (the rig) -------------------------------------------------------------------


def _jpeg(rgb: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise WireError("encode", "JPEG encoding failed")
    return buf.tobytes()


def _png(gray: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", gray, _PNG_PARAMS)
    if not ok:
        raise WireError("encode", "PNG encoding failed")
    return buf.tobytes()


def encode_sample(
    *,
    rig: str,
    camera: str,
    seq: int,
    frame: int,
    shot: int,
    capture_time: float,
    image: np.ndarray,
    trimap: np.ndarray,
    prob: np.ndarray,
    flow: np.ndarray | None,
    valid: tuple[int, ...],
    source_hw: tuple[int, ...],
    quality: int = 90,
    rig_sent: int = 0,
    rig_dropped: int = 0,
) -> list[bytes]:
    """The parts of one sample message. `rig_sent`/`rig_dropped` are the rig's running totals, so
    that the learner's status shows what a rig lost before it ever reached the network."""
    h, w = trimap.shape
    hdr = {
        "schema": SCHEMA,
        "version": VERSION,
        "kind": "sample",
        "rig": rig,
        "camera": camera,
        "seq": int(seq),
        "sent_ns": time.time_ns(),
        "frame": int(frame),
        "shot": int(shot),
        "capture_time": float(capture_time),
        "width": int(w),
        "height": int(h),
        "valid": [int(v) for v in valid],
        "source_hw": [int(v) for v in source_hw],
        "flow": flow is not None,
        "rig_sent": int(rig_sent),
        "rig_dropped": int(rig_dropped),
    }
    parts = [json.dumps(hdr, separators=(",", ":")).encode(), _jpeg(image, quality), _png(trimap), _png(prob)]
    if flow is not None:
        parts.append(zlib.compress(np.ascontiguousarray(flow, "<f2").tobytes(), 1))
    return parts


def encode_pair(
    *,
    rig: str,
    camera: str,
    seq: int,
    shot: int,
    t0: int,
    t1: int,
    track: int,
    query: np.ndarray,
    tracked: np.ndarray,
    quality: int = 90,
    rig_sent: int = 0,
    rig_dropped: int = 0,
) -> list[bytes]:
    hdr = {
        "schema": SCHEMA,
        "version": VERSION,
        "kind": "pair",
        "rig": rig,
        "camera": camera,
        "seq": int(seq),
        "sent_ns": time.time_ns(),
        "shot": int(shot),
        "t0": int(t0),
        "t1": int(t1),
        "track": int(track),
        "patch": int(query.shape[0]),
        "rig_sent": int(rig_sent),
        "rig_dropped": int(rig_dropped),
    }
    return [json.dumps(hdr, separators=(",", ":")).encode(), _jpeg(query, quality), _jpeg(tracked, quality)]


# ---- decoding (the learner) ---------------------------------------------------------------


def parse_header(parts: list[bytes]) -> dict[str, Any]:
    """The checked header of a received message (no pixels decoded yet)."""
    if not parts or len(parts[0]) > MAX_HEADER:
        raise WireError("header", "first part missing or too long for a header")
    try:
        hdr = json_input.loads(bytes(parts[0]))  # a deeply nested header: ValueError, not RecursionError
    except (UnicodeDecodeError, ValueError):
        raise WireError("header", "header is not JSON") from None
    if not isinstance(hdr, dict) or hdr.get("schema") != SCHEMA:
        raise WireError("foreign", "not a motionmask sample (schema)")
    if hdr.get("version") != VERSION:
        raise WireError("version", f"sample schema version {hdr.get('version')!r}; this learner reads {VERSION}")
    kind = hdr.get("kind")
    if kind not in KINDS:
        raise WireError("header", f"unknown kind {kind!r}")
    for key, types in (_SAMPLE_FIELDS if kind == "sample" else _PAIR_FIELDS).items():
        v = hdr.get(key)
        ok = isinstance(v, bool) if types == (bool,) else isinstance(v, types) and not isinstance(v, bool)
        if not ok:
            raise WireError("header", f"header field {key!r} missing or of the wrong type")
    for key in ("rig", "camera"):
        if not 0 < len(hdr[key]) <= MAX_NAME or "/" in hdr[key]:
            raise WireError("header", f"header field {key!r} must be 1-{MAX_NAME} characters without '/'")
    want = (5 if hdr.get("flow") else 4) if kind == "sample" else 3
    if len(parts) != want:
        raise WireError("header", f"{len(parts)} parts, a {kind} has {want}")
    return hdr


def _jpeg_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a JPEG's frame header, without decoding it."""
    if data[:2] != b"\xff\xd8":
        raise WireError("payload", "frame is not a JPEG")
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            raise WireError("payload", "JPEG markers are damaged")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        (length,) = struct.unpack_from(">H", data, i + 2)
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # SOFn
            if i + 9 > n:
                break
            h, w = struct.unpack_from(">HH", data, i + 5)
            return w, h
        i += 2 + length
    raise WireError("payload", "JPEG has no frame header")


def _png_size(data: bytes) -> tuple[int, int]:
    if len(data) < 33 or data[:8] != _PNG_SIG or data[12:16] != b"IHDR":
        raise WireError("payload", "label is not a PNG")
    w, h = struct.unpack_from(">II", data, 16)
    return w, h


def _decode_jpeg(data: bytes, w: int, h: int) -> np.ndarray:
    if _jpeg_size(data) != (w, h):
        raise WireError("size", f"JPEG is {_jpeg_size(data)}, the header says {w}x{h}")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None or img.shape != (h, w, 3):
        raise WireError("payload", "JPEG does not decode")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _decode_png(data: bytes, w: int, h: int, what: str) -> np.ndarray:
    if _png_size(data) != (w, h):
        raise WireError("size", f"{what} PNG is {_png_size(data)}, the header says {w}x{h}")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None or img.dtype != np.uint8 or img.shape != (h, w):
        raise WireError("payload", f"{what} PNG does not decode to {w}x{h} 8-bit grey")
    return img


def decode_sample(hdr: dict[str, Any], parts: list[bytes], slot_hw: tuple[int, int]) -> WireSample:
    """The pixels of a sample whose header parse_header checked; its size must be this
    learner's slot size (buffer.train_width x train_height on both sides)."""
    w, h = hdr["width"], hdr["height"]
    if (h, w) != tuple(slot_hw):
        raise WireError(
            "slot_size",
            f"samples of {w}x{h}; this learner's buffer holds "
            f"{slot_hw[1]}x{slot_hw[0]}: set the same buffer.train_width/train_height on both",
        )
    if (
        len(hdr["valid"]) != 4
        or len(hdr["source_hw"]) != 2
        or not all(isinstance(v, int) and 0 <= v <= 1 << 16 for v in hdr["valid"] + hdr["source_hw"])
    ):
        raise WireError("header", "valid or source_hw malformed")
    image = _decode_jpeg(bytes(parts[1]), w, h)
    trimap = _decode_png(bytes(parts[2]), w, h, "trimap")
    prob = _decode_png(bytes(parts[3]), w, h, "probability")
    flow = None
    if hdr["flow"]:
        want = h * w * 2 * 2
        try:
            raw = zlib.decompressobj().decompress(bytes(parts[4]), want + 1)
        except zlib.error:
            raise WireError("payload", "flow does not inflate") from None
        if len(raw) != want:
            raise WireError("size", f"flow holds {len(raw)} bytes, {w}x{h} float16 pairs are {want}")
        flow = np.frombuffer(raw, "<f2").reshape(h, w, 2).astype(np.float16)
    return WireSample(hdr, image, trimap, prob, flow)


def decode_pair(hdr: dict[str, Any], parts: list[bytes], patch: int) -> WirePair:
    p = hdr["patch"]
    if p != patch:
        raise WireError(
            "slot_size",
            f"pairs of {p}x{p} patches; this learner's pair store holds {patch}: "
            f"set the same streamer.patches.size on both",
        )
    return WirePair(hdr, _decode_jpeg(bytes(parts[1]), p, p), _decode_jpeg(bytes(parts[2]), p, p))


__all__ = [
    "KINDS",
    "SCHEMA",
    "VERSION",
    "WireError",
    "WirePair",
    "WireSample",
    "decode_pair",
    "decode_sample",
    "encode_pair",
    "encode_sample",
    "parse_header",
]
