"""What a learner receives from rigs (motionmask/sample_wire.py, docs/protocol.md) under any
input: parse_header and decode_sample / decode_pair return a checked sample or raise WireError
(which the receiver counts by its reason), never anything else, never hang.

Hypothesis settings: tests/_fuzz.py (derandomized, no database; MOTIONMASK_FUZZ=deep for more).
"""

from __future__ import annotations

import json

import numpy as np
from _fuzz import byte_mutations, dict_mutations, fuzz, json_bytes, malformed_json_bytes
from hypothesis import example, given
from hypothesis import strategies as st

from motionmask.sample_wire import WireError, decode_pair, decode_sample, encode_pair, encode_sample, parse_header

H, W = 24, 32
RNG = np.random.default_rng(0)
IMAGE = np.dstack([np.tile(np.linspace(0, 255, W), (H, 1))] * 3).astype(np.uint8)  # smooth: JPEG keeps it
TRIMAP = np.where(RNG.random((H, W)) > 0.5, 255, 0).astype(np.uint8)
PROB = RNG.integers(0, 256, (H, W), dtype=np.uint8)
FLOW = RNG.normal(size=(H, W, 2)).astype(np.float16)
SAMPLE = encode_sample(
    rig="r1",
    camera="cam0",
    seq=3,
    frame=7,
    shot=1,
    capture_time=1.5,
    image=IMAGE,
    trimap=TRIMAP,
    prob=PROB,
    flow=FLOW,
    valid=(0, 0, H, W),
    source_hw=(H, W),
)
PAIR = encode_pair(
    rig="r1",
    camera="cam0",
    seq=4,
    shot=1,
    t0=0,
    t1=30,
    track=2,
    query=IMAGE[:16, :16].copy(),
    tracked=IMAGE[8:24, 8:24].copy(),
)
SAMPLE_HDR, PAIR_HDR = json.loads(SAMPLE[0]), json.loads(PAIR[0])


def receive(parts: list[bytes]) -> None:
    """What the learner's receiver does with one message; WireError is the one error allowed."""
    try:
        hdr = parse_header(parts)
        if hdr["kind"] == "sample":
            s = decode_sample(hdr, parts, (H, W))
            assert s.image.shape == (H, W, 3) and s.trimap.shape == s.prob.shape == (H, W)
            assert s.flow is None or s.flow.shape == (H, W, 2)
        else:
            p = decode_pair(hdr, parts, 16)
            assert p.query.shape[:2] == p.tracked.shape[:2] == (16, 16)
    except WireError as e:
        assert e.reason and str(e)


def test_the_valid_messages_decode():
    hdr = parse_header(SAMPLE)
    s = decode_sample(hdr, SAMPLE, (H, W))
    assert (s.trimap == TRIMAP).all() and (s.prob == PROB).all() and (s.flow == FLOW).all()
    assert np.abs(s.image.astype(int) - IMAGE).mean() < 4  # JPEG: lossy, but this picture
    p = decode_pair(parse_header(PAIR), PAIR, 16)
    assert p.query.shape == (16, 16, 3)


@fuzz(200)
@given(
    header=st.one_of(
        malformed_json_bytes(SAMPLE_HDR, ("extra",)), dict_mutations(SAMPLE_HDR, ("extra",)).map(json_bytes)
    ),
    parts=st.lists(st.one_of(st.sampled_from(SAMPLE[1:]), st.binary(max_size=64)), max_size=5),
)
@example(header=b"[" * 5000, parts=SAMPLE[1:])
@example(header=json_bytes(dict(SAMPLE_HDR, width=10**30)), parts=SAMPLE[1:])
@example(header=json_bytes(dict(SAMPLE_HDR, valid=[True, 0, 1e300, None])), parts=SAMPLE[1:])
def test_sample_headers(header, parts):
    receive([header, *parts])


@fuzz(200)
@given(k=st.integers(1, len(SAMPLE) - 1), data=st.data())
def test_sample_payloads(k, data):
    parts = list(SAMPLE)
    parts[k] = data.draw(st.one_of(byte_mutations(SAMPLE[k]), st.binary(max_size=256)))
    receive(parts)


@fuzz(100)
@given(
    header=st.one_of(malformed_json_bytes(PAIR_HDR), dict_mutations(PAIR_HDR).map(json_bytes)),
    k=st.integers(1, 2),
    data=st.data(),
)
def test_pairs(header, k, data):
    parts = [header, *PAIR[1:]]
    parts[k] = data.draw(st.one_of(st.just(PAIR[k]), byte_mutations(PAIR[k])))
    receive(parts)
