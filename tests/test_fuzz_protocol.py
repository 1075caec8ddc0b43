"""Live-mask headers (streamer/live/protocol.py, docs/protocol.md) under any input: a subscriber's
parser returns a schema-1 mask or raises ProtocolError, never anything else, never hangs.

Hypothesis settings: tests/_fuzz.py (derandomized, no database; MOTIONMASK_FUZZ=deep for more).
"""

from __future__ import annotations

import struct

import numpy as np
from _fuzz import byte_mutations, deeply_nested_json, dict_mutations, fuzz, json_bytes, malformed_json_bytes
from hypothesis import example, given
from hypothesis import strategies as st

from streamer.live import protocol
from streamer.live.protocol import ProtocolError

MASK = np.zeros((12, 16), np.uint8)
MASK[3:9, 4:12] = 255
HEADER = protocol.make_header("cam0", "motion", 12, 3, 5, 1000, 2000, 16, 12, "png", "v7", "pub1")
TOPIC = protocol.topic_for("cam0", "motion").encode()
PNG = protocol.encode_payload(MASK, "png")
U8 = protocol.encode_payload(MASK, "u8")


def parse_and_decode(parts: list[bytes]) -> np.ndarray | None:
    """What motionmask.client does with a message: ProtocolError is the one error allowed."""
    try:
        msg = protocol.parse(parts)
        mask = protocol.decode_mask(msg)
    except ProtocolError:
        return None
    h = msg.header
    assert mask.dtype == np.uint8 and mask.shape == (h["height"], h["width"])
    return mask


def single(topic: bytes, header: bytes, payload: bytes) -> bytes:
    return topic + b"\x00" + struct.pack(">I", len(header)) + header + payload


def test_the_valid_messages_parse():
    hb = protocol.header_bytes(HEADER)
    assert (parse_and_decode([TOPIC, hb, PNG]) == MASK).all()
    assert (parse_and_decode([single(TOPIC, hb, PNG)]) == MASK).all()
    u8 = protocol.header_bytes(dict(HEADER, encoding="u8"))
    assert (parse_and_decode([TOPIC, u8, U8]) == MASK).all()


headers = st.one_of(malformed_json_bytes(HEADER), dict_mutations(HEADER, ("publisher", "extra")).map(json_bytes))
payloads = st.one_of(st.just(PNG), st.just(U8), byte_mutations(PNG), st.binary(max_size=64))
topics = st.one_of(st.just(TOPIC), st.binary(max_size=40), byte_mutations(TOPIC))


@fuzz(300)
@given(topic=topics, header=headers, payload=payloads)
@example(topic=TOPIC, header=b"[" * 5000, payload=PNG)  # was RecursionError, out of motionmask.client
@example(topic=TOPIC, header=b'{"schema": 1, "width": ' + b"9" * 5000 + b"}", payload=PNG)
def test_multipart_messages(topic, header, payload):
    parse_and_decode([topic, header, payload])


@fuzz(300)
@given(topic=topics, header=headers, payload=payloads, claimed=st.one_of(st.none(), st.integers(0, 2**32 - 1)))
@example(topic=TOPIC, header=b"[" * 5000, payload=b"", claimed=None)
def test_single_frame_messages(topic, header, payload, claimed):
    frame = single(topic, header, payload)
    if claimed is not None:  # a header length that lies, up to 4 GiB
        cut = frame.find(b"\x00")
        if cut >= 0 and len(frame) >= cut + 5:
            frame = frame[: cut + 1] + struct.pack(">I", claimed) + frame[cut + 5 :]
    parse_and_decode([frame])


@fuzz(200)
@given(parts=st.lists(st.binary(max_size=80), max_size=5))
def test_any_frames(parts):
    parse_and_decode(parts)


@fuzz(200)
@given(frame=byte_mutations(single(TOPIC, protocol.header_bytes(HEADER), PNG)))
def test_single_frame_byte_mutations(frame):
    parse_and_decode([frame])


@fuzz(100)
@given(nesting=deeply_nested_json)
def test_deeply_nested_headers(nesting):
    parse_and_decode([TOPIC, nesting.encode(), PNG])
    parse_and_decode([single(TOPIC, nesting.encode(), PNG)])


@fuzz(150)
@given(
    w=st.integers(-(2**40), 2**40),
    h=st.integers(-(2**40), 2**40),
    png_w=st.integers(0, 2**32 - 1),
    png_h=st.integers(0, 2**32 - 1),
)
def test_a_forged_size_never_inflates_a_huge_image(w, h, png_w, png_h):
    """A header and a PNG that agree on a huge size (or lie) are refused before decoding."""
    hb = protocol.header_bytes(dict(HEADER, width=w, height=h))
    forged = PNG[:16] + struct.pack(">II", png_w, png_h) + PNG[24:]
    parse_and_decode([TOPIC, hb, forged])
