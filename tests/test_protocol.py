"""Wire format: both encodings, both framings, and every way a message can be malformed."""

import json

import numpy as np
import pytest

from streamer.live import protocol
from streamer.live.protocol import ProtocolError


def _mask(h=48, w=64, seed=0):
    rng = np.random.default_rng(seed)
    m = np.zeros((h, w), np.uint8)
    m[10:30, 5:40] = 255
    m[35:, 50:] = 128
    m[rng.random((h, w)) < 0.05] = 7  # odd values survive too: the payload is lossless
    return m


def _pack(mask, encoding="png", framing="multipart", camera="cam0", kind="motion", **over):
    h, w = mask.shape
    hdr = protocol.make_header(camera, kind, 12, 3, 5, 1000, 2000, w, h, encoding, "v7")
    hdr.update(over)
    payload = protocol.encode_payload(mask, encoding)
    hb = protocol.header_bytes(hdr)
    topic = protocol.topic_for(camera, kind)
    if framing == "multipart":
        return protocol.pack_multipart(topic, hb, payload)
    return [protocol.pack_single(topic, hb, payload)]


@pytest.mark.parametrize("encoding", ["png", "u8"])
@pytest.mark.parametrize("framing", ["multipart", "single"])
def test_round_trip_is_lossless(encoding, framing):
    mask = _mask()
    msg = protocol.parse(_pack(mask, encoding, framing))
    out = protocol.decode_mask(msg)
    assert out.dtype == np.uint8 and out.shape == mask.shape
    np.testing.assert_array_equal(out, mask)
    out[0, 0] = 1  # callers may draw on it
    assert msg.topic == "mask.cam0.motion"
    assert msg.header["frame"] == 12 and msg.header["shot"] == 3 and msg.header["seq"] == 5
    assert msg.header["model_version"] == "v7" and msg.header["encoding"] == encoding


def test_png_of_a_real_mask_is_small():
    yy, xx = np.mgrid[:480, :640]
    mask = (((xx - 300) ** 2 + (yy - 200) ** 2) < 120**2).astype(np.uint8) * 255
    assert len(protocol.encode_payload(mask, "png")) < 20_000  # vs 307 200 bytes raw


def test_single_frame_starts_with_topic_so_prefix_subscription_works():
    frame = _pack(_mask(), "png", "single", camera="cam1", kind="trimap")[0]
    assert frame.startswith(b"mask.cam1.trimap\x00")


def test_topic_tokens_never_contain_dots_or_separators():
    assert protocol.topic_for("clip.mp4", "motion") == "mask.clip_mp4.motion"
    assert protocol.topic_for("rtsp://10.0.0.2/s1", "trimap") == "mask.rtsp___10_0_0_2_s1.trimap"
    # the header keeps the real name and the topic check accepts it
    msg = protocol.parse(_pack(_mask(), camera="clip.mp4"))
    assert msg.header["camera"] == "clip.mp4"


def _header_of(parts):
    return json.loads(parts[1])


def _with_header(parts, **over):
    hdr = _header_of(parts)
    hdr.update(over)
    return [parts[0], json.dumps(hdr).encode(), parts[2]]


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda p: p[:2], "wrong part count 2"),
        (lambda p: p + [b"x"], "wrong part count 4"),
        (lambda p: [p[0], b"{not json", p[2]], "not JSON"),
        (lambda p: [p[0], b"\xff\xfe", p[2]], "not JSON"),
        (lambda p: [p[0], b"[1, 2]", p[2]], "not a JSON object"),
        (lambda p: _with_header(p, schema=2), "unknown schema version 2"),
        (lambda p: _with_header(p, schema=None), "unknown schema version"),
        (lambda p: _with_header(p, frame="12"), "'frame'"),
        (lambda p: _with_header(p, seq=True), "'seq'"),
        (lambda p: _with_header(p, encoding="jpeg"), "unknown encoding"),
        (lambda p: _with_header(p, width=0), "implausible size"),
        (lambda p: _with_header(p, width=100000), "implausible size"),
        (lambda p: _with_header(p, camera="cam9"), "does not match the header"),
        (lambda p: [b"\xffbad", p[1], p[2]], "not ASCII"),
    ],
)
def test_malformed_headers_are_rejected_with_a_reason(make, reason):
    parts = make(_pack(_mask(), "u8"))
    with pytest.raises(ProtocolError, match=reason):
        protocol.decode_mask(protocol.parse(parts))


@pytest.mark.parametrize(
    "encoding, payload, reason",
    [
        ("u8", b"\x00" * 100, "payload size mismatch: 100 bytes"),
        ("png", b"GIF89a" + b"\x00" * 40, "not a PNG"),
        ("png", None, "payload size mismatch: PNG is 32x16"),
    ],
)
def test_payload_that_disagrees_with_header_is_rejected(encoding, payload, reason):
    parts = _pack(_mask(), encoding)
    if payload is None:  # a valid PNG of another size
        payload = protocol.encode_payload(np.zeros((16, 32), np.uint8), "png")
    with pytest.raises(ProtocolError, match=reason):
        protocol.decode_mask(protocol.parse([parts[0], parts[1], payload]))


def test_corrupt_png_body_is_rejected():
    parts = _pack(_mask(), "png")
    png = bytearray(parts[2])
    png[40:] = b"\x00" * (len(png) - 40)
    with pytest.raises(ProtocolError, match="does not decode"):
        protocol.decode_mask(protocol.parse([parts[0], parts[1], bytes(png)]))


def test_colour_png_is_rejected():
    import cv2

    ok, buf = cv2.imencode(".png", np.zeros((48, 64, 3), np.uint8))
    parts = _pack(_mask(), "png")
    with pytest.raises(ProtocolError, match="single-channel"):
        protocol.decode_mask(protocol.parse([parts[0], parts[1], buf.tobytes()]))


@pytest.mark.parametrize(
    "frame, reason",
    [
        (b"mask.cam0.motion", "latest_endpoint"),  # what CONFLATE leaves of a multipart message
        (b"hello world", "without a topic separator"),
        (b"mask.cam0.motion\x00\x00\x00", "truncated before the header length"),
        (b"mask.cam0.motion\x00\x00\x00\x10\x00{}", "header length 4096 exceeds"),
    ],
)
def test_malformed_single_frames_are_rejected(frame, reason):
    with pytest.raises(ProtocolError, match=reason):
        protocol.parse([frame])


def test_extra_header_fields_are_ignored_for_forward_compatibility():
    parts = _with_header(_pack(_mask(), "u8"), future_field={"a": 1})
    assert protocol.decode_mask(protocol.parse(parts)).shape == (48, 64)
