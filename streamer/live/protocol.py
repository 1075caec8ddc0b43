"""Wire format of live masks (schema 1), shared by the publisher and every client.
docs/protocol.md is the human-readable spec; keep the two in step.

Two framings carry the same header and payload:
  multipart (3 frames): topic | header JSON | payload
  single frame:         topic | 0x00 | header length (uint32 big-endian) | header JSON | payload
The single frame exists because ZeroMQ's CONFLATE keeps one *part* of a message; starting it with
the topic keeps prefix subscription working.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from typing import Any

try:
    import cv2
except ModuleNotFoundError:  # device-only install: NumPy stand-ins on predict's path (common/npcv.py)
    from common import npcv as cv2
import numpy as np

from common import json_input

SCHEMA = 1
TOPIC_ROOT = "mask"
ENCODINGS = ("png", "u8")
SEP = b"\x00"
MAX_TOPIC = 255  # bytes; bounds the search for the separator in a single frame
MAX_SIDE = 16384  # pixels; a header claiming more is foreign or hostile
_PNG_SIG = b"\x89PNG\r\n\x1a\n"
_LEN = struct.Struct(">I")
# Masks are piecewise constant: no row filter plus run-length deflate is faster than OpenCV's
# default PNG settings and smaller too (docs/benchmarks.md, "Small measurements behind the code").
PNG_PARAMS = [
    cv2.IMWRITE_PNG_COMPRESSION,
    1,
    cv2.IMWRITE_PNG_STRATEGY,
    cv2.IMWRITE_PNG_STRATEGY_RLE,
    cv2.IMWRITE_PNG_FILTER,
    cv2.IMWRITE_PNG_FILTER_NONE,
]
_TOKEN_BAD = re.compile(r"[^A-Za-z0-9_-]")

# key -> accepted types; header fields a client relies on. Extra keys are ignored, so adding
# a field does not need a new schema version; changing or removing one does.
_REQUIRED: dict[str, tuple[type, ...]] = {
    "schema": (int,),
    "camera": (str,),
    "kind": (str,),
    "frame": (int,),
    "shot": (int,),
    "seq": (int,),
    "capture_ns": (int,),
    "publish_ns": (int,),
    "width": (int,),
    "height": (int,),
    "encoding": (str,),
    "model_version": (str,),
}


class ProtocolError(ValueError):
    """A message that is not a schema-1 mask; the text says why, in a few words."""


@dataclass
class Message:
    topic: str
    header: dict[str, Any]
    payload: bytes


def topic_token(name: str) -> str:
    """A camera or kind name as it appears between the dots of a topic."""
    return _TOKEN_BAD.sub("_", name) or "_"


def topic_for(camera: str, kind: str) -> str:
    return f"{TOPIC_ROOT}.{topic_token(camera)}.{topic_token(kind)}"


def encode_payload(mask_u8: np.ndarray, encoding: str) -> bytes:
    if encoding == "u8":
        return np.ascontiguousarray(mask_u8).tobytes()
    if encoding == "png":
        ok, buf = cv2.imencode(".png", mask_u8, PNG_PARAMS)
        if not ok:
            raise ProtocolError("PNG encoding failed")
        return buf.tobytes()
    raise ValueError(f"unknown encoding {encoding!r}; use one of {', '.join(ENCODINGS)}")


def make_header(
    camera: str,
    kind: str,
    frame: int,
    shot: int,
    seq: int,
    capture_ns: int,
    publish_ns: int,
    width: int,
    height: int,
    encoding: str,
    model_version: str = "",
    publisher: str = "",
) -> dict[str, Any]:
    """`publisher` (optional on the wire) names one publisher instance, so that a subscriber
    tells a restart from lost masks when `seq` starts again."""
    hdr = {
        "schema": SCHEMA,
        "camera": camera,
        "kind": kind,
        "frame": int(frame),
        "shot": int(shot),
        "seq": int(seq),
        "capture_ns": int(capture_ns),
        "publish_ns": int(publish_ns),
        "width": int(width),
        "height": int(height),
        "encoding": encoding,
        "model_version": model_version,
    }
    if publisher:
        hdr["publisher"] = publisher
    return hdr


def header_bytes(header: dict[str, Any]) -> bytes:
    return json.dumps(header, separators=(",", ":")).encode()


def pack_multipart(topic: str, header: bytes, payload: bytes) -> list[bytes]:
    return [topic.encode(), header, payload]


def pack_single(topic: str, header: bytes, payload: bytes) -> bytes:
    return b"".join((topic.encode(), SEP, _LEN.pack(len(header)), header, payload))


def parse(parts: list[bytes]) -> Message:
    """Split a received message of either framing (told apart by its part count) and check the
    header. The payload is checked against the header by `decode_mask`."""
    if len(parts) == 3:
        topic_b, hdr_b, payload = parts
    elif len(parts) == 1:
        topic_b, hdr_b, payload = _split_single(parts[0])
    else:
        raise ProtocolError(f"wrong part count {len(parts)} (want 3, or 1 for the single-frame framing)")
    try:
        topic = topic_b.decode("ascii")
    except UnicodeDecodeError:
        raise ProtocolError("topic is not ASCII") from None
    try:
        header = json_input.loads(hdr_b)
    except ValueError:  # UnicodeDecodeError, nesting too deep and huge numbers included
        raise ProtocolError("header is not JSON") from None
    _check_header(header, topic)
    return Message(topic, header, bytes(payload))


def _split_single(frame: bytes) -> tuple[bytes, bytes, bytes]:
    cut = frame.find(SEP, 0, MAX_TOPIC + 1)
    if cut < 0:
        if frame.startswith(TOPIC_ROOT.encode() + b".") and len(frame) <= MAX_TOPIC:
            # What CONFLATE leaves of a multipart message: a sign of the wrong endpoint.
            raise ProtocolError(
                "got a bare topic: a latest-only subscriber must connect to the "
                "publisher's latest_endpoint (single-frame framing)"
            )
        raise ProtocolError("single frame without a topic separator")
    start = cut + 1 + _LEN.size
    if len(frame) < start:
        raise ProtocolError("single frame truncated before the header length")
    (n,) = _LEN.unpack_from(frame, cut + 1)
    if len(frame) < start + n:
        raise ProtocolError(f"single frame truncated: header length {n} exceeds the frame")
    return frame[:cut], frame[start : start + n], frame[start + n :]


def _check_header(header: Any, topic: str) -> None:
    if not isinstance(header, dict):
        raise ProtocolError("header is not a JSON object")
    schema = header.get("schema")
    if schema != SCHEMA:
        raise ProtocolError(f"unknown schema version {schema!r} (this client reads {SCHEMA})")
    for key, types in _REQUIRED.items():
        v = header.get(key)
        if not isinstance(v, types) or isinstance(v, bool):
            raise ProtocolError(f"header field {key!r} missing or of the wrong type")
    if header["encoding"] not in ENCODINGS:
        raise ProtocolError(f"unknown encoding {header['encoding']!r}")
    w, h = header["width"], header["height"]
    if not (0 < w <= MAX_SIDE and 0 < h <= MAX_SIDE):
        raise ProtocolError(f"implausible size {w}x{h}")
    want = topic_for(header["camera"], header["kind"])
    if topic != want:
        raise ProtocolError(f"topic {topic!r} does not match the header (want {want!r})")


def decode_mask(msg: Message) -> np.ndarray:
    """The payload as an H x W uint8 array, checked against the header's size."""
    w, h = msg.header["width"], msg.header["height"]
    data = msg.payload
    if msg.header["encoding"] == "u8":
        if len(data) != w * h:
            raise ProtocolError(f"payload size mismatch: {len(data)} bytes for {w}x{h} u8")
        return np.frombuffer(data, np.uint8).reshape(h, w).copy()  # writable, like the PNG path
    # Check the PNG's own size before decoding so that a forged header cannot make us inflate
    # a huge image.
    if len(data) < 33 or data[:8] != _PNG_SIG or data[12:16] != b"IHDR":
        raise ProtocolError("payload is not a PNG")
    pw, ph = struct.unpack_from(">II", data, 16)
    if (pw, ph) != (w, h):
        raise ProtocolError(f"payload size mismatch: PNG is {pw}x{ph}, header says {w}x{h}")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ProtocolError("PNG payload does not decode")
    if img.dtype != np.uint8 or img.ndim != 2:
        raise ProtocolError(f"PNG is not 8-bit single-channel (shape {img.shape}, {img.dtype})")
    return img
