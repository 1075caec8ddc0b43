"""Bundles as a device receives them (exporter/transfer.py, bundle.py, signing.py, runtime.py)
under any input: announcements, chunk replies, manifests, signatures, TRUST.json and the
manifest fields a runner reads either pass or raise the project's own errors (TransferError and
IntegrityError, UserError, SignatureError); a device never dies of what an exporter sends it,
and the bundle server answers every request. End to end: a Hypothesis batch of junk to a real
BundleServer, after which a device still pulls and runs its bundle.

Hypothesis settings: tests/_fuzz.py (derandomized, no database; MOTIONMASK_FUZZ=deep for more).
The model is a 200-byte ONNX graph (mean of the channels / 255) made here: real ONNX Runtime
sessions in seconds, no trained net needed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq
from _fuzz import (
    byte_mutations,
    deeply_nested_json,
    dict_mutations,
    fuzz,
    json_bytes,
    json_values,
    malformed_json_bytes,
)
from hypothesis import example, given
from hypothesis import strategies as st

from common.errors import UserError
from exporter.bundle import MANIFEST_FILE, MODEL_FILE, parse_manifest, publish_bundle, read_pointer, write_pointer
from exporter.runtime import BundleRunner
from exporter.signing import (
    SIG_FILE,
    TRUST_FILE,
    SignatureError,
    Signer,
    TrustedKey,
    check_fresh,
    create_signing_keys,
    read_trust,
)
from exporter.transfer import (
    BundleServer,
    Channel,
    DeviceAgent,
    PullConfig,
    TransferError,
    check_announcement,
    download_file,
    verified_floor,
)

VERSION = "20261206T080000Z-s0000005"
FAST = PullConfig(timeout_s=0.15, retries=1, backoff_s=0.05, backoff_max_s=0.1, poll_s=30.0, attempts=2, chunk_kb=4)


def tiny_onnx(height: int = 24, width: int = 32) -> bytes:
    """image (N x H x W x 3 uint8) -> mask (N x H x W): the channels' mean / 255."""
    import onnx.helper as h
    from onnx import TensorProto as T

    g = h.make_graph(
        [
            h.make_node("Cast", ["image"], ["f"], to=T.FLOAT),
            h.make_node("ReduceMean", ["f"], ["m"], axes=[3], keepdims=0),
            h.make_node("Div", ["m", "c255"], ["mask"]),
        ],
        "tiny",
        [h.make_tensor_value_info("image", T.UINT8, ["N", height, width, 3])],
        [h.make_tensor_value_info("mask", T.FLOAT, ["N", height, width])],
        [h.make_tensor("c255", T.FLOAT, [], [255.0])],
    )
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 13)])
    m.ir_version = 8
    return m.SerializeToString()


MODEL = tiny_onnx()
SPEC = {
    "input": {"name": "image", "dtype": "uint8", "shape": ["N", 24, 32, 3], "height": 24, "width": 32},
    "outputs": [{"name": "mask"}],
    "preprocessing": {"resize": "fit", "fit_box": [32, 24]},
    "source": {"step": 5},
}


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzzkeys")
    priv, pub = create_signing_keys(d, "a")
    return Signer.from_file(priv), TrustedKey.from_file(pub)


@pytest.fixture(scope="module")
def published(tmp_path_factory, keys) -> Path:
    """An exports folder with one signed bundle of the tiny model, as the exporter writes it."""
    d = tmp_path_factory.mktemp("fuzzexports")
    publish_bundle(d, VERSION, {MODEL_FILE: MODEL}, SPEC, signer=keys[0])
    return d


def manifest_of(published: Path) -> dict[str, Any]:
    return json.loads((published / VERSION / MANIFEST_FILE).read_bytes())


def test_the_valid_bundle_runs(published, keys):
    body = (published / VERSION / MANIFEST_FILE).read_bytes()
    keys[1].verify(body, (published / VERSION / SIG_FILE).read_bytes(), "v")
    assert check_fresh(parse_manifest(body, "v"), None, "v") > 0
    runner = BundleRunner(published, provider="cpu", threads=1)
    frame = np.full((30, 40, 3), 51, np.uint8)
    assert np.allclose(runner(frame), 0.2)


# -- manifests, signatures, freshness, TRUST.json ------------------------------------------

MANIFEST_EXAMPLE = {
    "format": "motionmask-bundle",
    "format_version": 1,
    "version": VERSION,
    "sha256": "0" * 64,
    "files": {MODEL_FILE: {"sha256": "0" * 64, "bytes": 197}},
    **SPEC,
}


@fuzz(200)
@given(
    raw=st.one_of(
        malformed_json_bytes(MANIFEST_EXAMPLE),
        dict_mutations(MANIFEST_EXAMPLE["files"][MODEL_FILE]).map(
            lambda e: json_bytes(dict(MANIFEST_EXAMPLE, files={MODEL_FILE: e}))
        ),
    )
)
@example(raw=json_bytes(dict(MANIFEST_EXAMPLE, format_version=[1])))  # was TypeError from int()
@example(raw=json_bytes(dict(MANIFEST_EXAMPLE, format_version=float("inf"))))  # was OverflowError
@example(raw=b"[" * 100000)  # was RecursionError
@example(raw=b'{"format": "motionmask-bundle", "n": ' + b"9" * 5000 + b"}")  # was ValueError, not UserError
@example(raw=json_bytes(dict(MANIFEST_EXAMPLE, files={MODEL_FILE: {"sha256": "0" * 64, "bytes": "x"}})))
def test_manifests(raw):
    try:
        m = parse_manifest(raw, "pulled")
    except UserError:
        return
    # what every reader then relies on
    for meta in m["files"].values():
        assert isinstance(meta["sha256"], str) and int(meta.get("bytes", 0)) >= 0
    assert isinstance(m.get("source", {}), dict)


@fuzz(150)
@given(
    sig=st.one_of(malformed_json_bytes({"alg": "ed25519", "key_id": "0" * 16, "sig": "AAAA"}), st.binary(max_size=64)),
    body=st.one_of(st.none(), st.binary(max_size=64)),
)
@example(sig=b"[" * 4000, body=None)  # was RecursionError
def test_signature_files(published, keys, sig, body):
    good = (published / VERSION / MANIFEST_FILE).read_bytes()
    with pytest.raises(SignatureError):
        keys[1].verify(good if body is None else body, sig, "pulled")


@fuzz(100)
@given(sig=byte_mutations(b'{"alg": "ed25519", "key_id": "0123456789abcdef", "sig": "' + b"A" * 88 + b'"}\n'))
def test_signature_byte_mutations(published, keys, sig):
    with pytest.raises(SignatureError):
        keys[1].verify((published / VERSION / MANIFEST_FILE).read_bytes(), sig, "pulled")


trusts = st.one_of(st.none(), st.fixed_dictionaries({"sequence": st.integers()}, optional={"version": json_values}))


@fuzz(120)
@given(m=dict_mutations({"sequence": 10**12, "expires_unix": 2**40, "version": VERSION, "expires": "x"}), trust=trusts)
def test_freshness(m, trust):
    try:
        seq = check_fresh(m, trust, "pulled")
    except SignatureError as e:
        assert e.kind in ("bad_signature", "expired", "rollback")
        return
    assert isinstance(seq, int)


@fuzz(80)
@given(
    raw=st.one_of(
        malformed_json_bytes({"sequence": 5, "version": VERSION, "key_id": "k"}), deeply_nested_json.map(str.encode)
    )
)
@example(raw=b"[" * 100000)  # was RecursionError
def test_trust_files(tmp_path_factory, raw):
    d = tmp_path_factory.mktemp("trust", numbered=True)
    (d / TRUST_FILE).write_bytes(raw)
    got = read_trust(d)
    assert got is None or (isinstance(got, dict) and type(got["sequence"]) is int)
    shutil.rmtree(d)


@fuzz(40)
@given(sequence=json_values)
@example(sequence=float("inf"))  # was OverflowError from int() when TRUST.json is gone
@example(sequence="12")
def test_the_floor_from_the_bundle_in_service(published, keys, tmp_path_factory, sequence):
    """TRUST.json lost: the floor is the sequence of the bundle in service, if the pinned key
    signed it. Whatever that manifest holds, the answer is an int floor or none."""
    d = tmp_path_factory.mktemp("floor", numbered=True)
    shutil.copytree(published / VERSION, d / VERSION)
    m = manifest_of(published)
    m["sequence"] = sequence
    body = json_bytes(m)
    (d / VERSION / MANIFEST_FILE).write_bytes(body)
    (d / VERSION / SIG_FILE).write_bytes(keys[0].sign(body))
    write_pointer(d, VERSION)
    got = verified_floor(d, keys[1])
    assert got is None or (type(got["sequence"]) is int and got["version"] == VERSION)
    shutil.rmtree(d)


# -- announcements -------------------------------------------------------------------------

INFO = {
    "version": VERSION,
    "protocol": 1,
    "step": 5,
    "created": "2026-12-06T08:00:00Z",
    "files": {
        MANIFEST_FILE: {"sha256": "a" * 64, "bytes": 900},
        SIG_FILE: {"sha256": "b" * 64, "bytes": 150},
        MODEL_FILE: {"sha256": "c" * 64, "bytes": len(MODEL)},
    },
}


@fuzz(150)
@given(
    info=st.one_of(
        json_values,
        dict_mutations(INFO),
        dict_mutations(INFO["files"]).map(lambda f: dict(INFO, files=f)),
        dict_mutations(INFO["files"][MODEL_FILE]).map(
            lambda e: dict(INFO, files=dict(INFO["files"], **{MODEL_FILE: e}))
        ),
    )
)
@example(info=dict(INFO, version="../../etc"))  # was UserError, which no device loop catches: the agent died
@example(info=[INFO])  # was AttributeError
def test_announcements(info):
    try:
        got = check_announcement(info)
    except TransferError:
        return
    assert got["files"][MODEL_FILE]["bytes"] >= 0


# -- the runner's view of a manifest -------------------------------------------------------


@fuzz(25, deadline_s=10)
@given(spec=dict_mutations(SPEC))
@example(spec=dict(SPEC, input=[]))  # was AttributeError out of the device's smoke test
@example(spec=dict(SPEC, outputs=[{"nom": "mask"}]))  # was KeyError
@example(spec=dict(SPEC, preprocessing={"resize": "fit", "fit_box": [0, "x"]}))  # was ValueError at the first frame
@example(spec=dict(SPEC, source={"step": "five"}))  # was ValueError from runner.step
def test_runner_reads_any_manifest_spec(tmp_path_factory, spec):
    d = tmp_path_factory.mktemp("spec", numbered=True)
    publish_bundle(d, VERSION, {MODEL_FILE: MODEL}, spec)
    try:
        runner = BundleRunner(d, provider="cpu", threads=1)
    except UserError:
        shutil.rmtree(d)
        return
    assert runner(np.full((30, 40, 3), 51, np.uint8)).shape == (30, 40)
    assert isinstance(runner.step, int)
    shutil.rmtree(d)


# -- the server's view of a request ---------------------------------------------------------

CHUNK = {"op": "chunk", "version": VERSION, "file": MODEL_FILE, "offset": 0, "size": 64, "id": 1}


@fuzz(200)
@given(raw=malformed_json_bytes(CHUNK, ("op",)))
@example(raw=json_bytes(dict(CHUNK, offset=float("inf"))))  # was OverflowError: "internal error", logged ERROR
@example(raw=b"[" * 100000)  # was RecursionError, the same
@example(raw=json_bytes(dict(CHUNK, version="../" + VERSION)))
def test_server_requests(published, raw):
    srv = BundleServer(published)  # not started: _answer is what the server thread sends back
    reply = srv._answer([raw])
    hdr = json.loads(reply[0])
    assert isinstance(hdr, dict) and isinstance(hdr["ok"], bool)
    if hdr["ok"] and len(reply) == 2:
        body = (published / VERSION / hdr["file"]).read_bytes()
        assert reply[1] == body[hdr["offset"] : hdr["offset"] + hdr["size"]]


# -- a device against an exporter that sends anything ---------------------------------------


class FakeExporter:
    """A ROUTER on 127.0.0.1 that speaks the bundle protocol from files in memory, honestly unless
    `mangle` (request, reply frames) -> reply frames or None (no answer) says otherwise."""

    def __init__(self, version: str, files: dict[str, bytes], mangle=None):
        self.version, self.files, self.mangle = version, files, mangle
        self.sock = zmq.Context.instance().socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind("tcp://127.0.0.1:*")
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.stop = threading.Event()
        self.chunks = 0
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def info(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "protocol": 1,
            "step": 5,
            "files": {n: {"sha256": hashlib.sha256(b).hexdigest(), "bytes": len(b)} for n, b in self.files.items()},
        }

    def answer(self, req: dict[str, Any]) -> list[bytes]:
        if req.get("op") == "latest":
            return [json.dumps({"id": req["id"], "ok": True, **self.info()}).encode()]
        if req.get("op") == "chunk":
            data = self.files[req["file"]][req["offset"] : req["offset"] + req["size"]]
            return [
                json.dumps(
                    {
                        "id": req["id"],
                        "ok": True,
                        "version": self.version,
                        "file": req["file"],
                        "offset": req["offset"],
                        "size": len(data),
                    }
                ).encode(),
                data,
            ]
        return [json.dumps({"id": req.get("id"), "ok": True, "protocol": 1, "announce": "tcp://127.0.0.1:1"}).encode()]

    def _loop(self) -> None:
        while not self.stop.is_set():
            if not self.sock.poll(20):
                continue
            ident, raw = self.sock.recv_multipart()
            req = json.loads(raw)
            reply = self.answer(req)
            if req.get("op") == "chunk":
                self.chunks += 1
                if self.mangle is not None:
                    reply = self.mangle(req, reply, self.chunks)
            if reply is not None:
                self.sock.send_multipart([ident, *reply])
        self.sock.close(0)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(2)


def mangle_with(plan: list[tuple[str, Any]]):
    """The n-th chunk reply mangled by plan[n] (then honest): a header field replaced, the bytes
    cut or altered, foreign frames, or no answer."""

    def mangle(req, reply, n):
        if n > len(plan):
            return reply
        kind, arg = plan[n - 1]
        hdr, data = json.loads(reply[0]), reply[1]
        if kind == "field":
            key, value = arg
            hdr[key] = value
            return [json_bytes(hdr), data]
        if kind == "data":
            return [reply[0], arg(data)]
        if kind == "no_data":
            return [reply[0]]
        if kind == "frames":
            return arg
        return None  # silent

    return mangle


plans = st.lists(
    st.one_of(
        st.tuples(st.just("honest"), st.none()),
        st.tuples(st.just("field"), st.tuples(st.sampled_from(["id", "ok", "offset", "size", "error"]), json_values)),
        st.tuples(
            st.just("data"), st.sampled_from([lambda b: b[:-1], lambda b: b + b"x", lambda b: b"", lambda b: b[::-1]])
        ),
        st.tuples(st.just("no_data"), st.none()),
        st.tuples(
            st.just("frames"),
            st.lists(st.one_of(st.binary(max_size=32), malformed_json_bytes(CHUNK)), min_size=1, max_size=3),
        ),
        st.tuples(st.just("silent"), st.none()),
    ),
    min_size=1,
    max_size=6,
)


@fuzz(20, deadline_s=None)
@given(plan=plans)
@example(plan=[("field", ("id", [1]))])  # was TypeError (unhashable) out of download_file
@example(plan=[("frames", [b"[" * 100000])])  # was RecursionError out of Channel.recv
@pytest.mark.timeout(120)
def test_chunk_replies(tmp_path_factory, plan):
    blob = np.random.default_rng(0).integers(0, 256, 20000, np.uint8).tobytes()  # five 4 KiB chunks
    server = FakeExporter(VERSION, {"blob": blob}, mangle_with(plan))
    ch = Channel(server.endpoint)
    d = tmp_path_factory.mktemp("chunks", numbered=True)
    meta = {"sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob)}
    try:
        download_file(ch, VERSION, "blob", meta, d / "blob", FAST)
        assert (d / "blob").read_bytes() == blob  # an answer that passed is the real bytes
    except TransferError:
        pass
    finally:
        ch.close()
        server.close()
        shutil.rmtree(d)


@fuzz(25, deadline_s=None)
@given(spec=dict_mutations(MANIFEST_EXAMPLE, ("sequence", "expires_unix")), signed=st.booleans())
@example(spec=dict(MANIFEST_EXAMPLE, format_version="1"), signed=False)  # was UserError: the device died
@pytest.mark.timeout(120)
def test_a_device_against_any_manifest(tmp_path_factory, keys, spec, signed):
    """The exporter (or whoever answers) serves any manifest, consistent with its announcement
    and, when `signed`, signed by the pinned key: the device installs it or refuses it, and keeps
    running its bundle."""
    spec = dict(spec)
    if isinstance(spec.get("files"), dict) and isinstance(spec["files"].get(MODEL_FILE), dict):
        spec["files"][MODEL_FILE]["sha256"] = hashlib.sha256(MODEL).hexdigest()
        spec["files"][MODEL_FILE]["bytes"] = len(MODEL)
        spec["sha256"] = spec["files"][MODEL_FILE]["sha256"]
    body = json_bytes(spec)
    files = {MANIFEST_FILE: body, MODEL_FILE: MODEL}
    if signed:
        files[SIG_FILE] = keys[0].sign(body)
    server = FakeExporter(VERSION, files)
    dest = tmp_path_factory.mktemp("device", numbered=True)
    agent = DeviceAgent(server.endpoint, dest, FAST, trusted=keys[1] if signed else None)
    ch = Channel(server.endpoint)
    try:
        got = agent.sync(ch)
        assert got is not None and read_pointer(dest) == VERSION
        assert BundleRunner(dest, provider="cpu", threads=1).version == VERSION
    except TransferError:
        assert read_pointer(dest) is None  # nothing half-installed
    finally:
        ch.close()
        server.close()
        shutil.rmtree(dest)


# -- end to end: a real BundleServer after a batch of junk ----------------------------------

junk_batches = st.lists(
    st.one_of(
        malformed_json_bytes(CHUNK, ("op",)).map(lambda b: [b]),
        st.lists(st.binary(max_size=64), min_size=0, max_size=3),
    ),
    min_size=10,
    max_size=30,
)


@fuzz(3, deadline_s=None)
@given(batch=junk_batches)
@pytest.mark.timeout(120)
def test_junk_to_a_real_bundle_server_then_a_device_pulls(published, keys, tmp_path_factory, batch):
    with BundleServer(published, "tcp://127.0.0.1:*", "tcp://127.0.0.1:*", watch_s=0.05).start() as server:
        dealer = zmq.Context.instance().socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(server.endpoint)
        try:
            for frames in batch:
                dealer.send_multipart(frames or [b""])
            answered = 0
            while dealer.poll(300):
                hdr = json.loads(dealer.recv_multipart()[0])
                assert hdr["ok"] is True or hdr["error"] != "internal error", hdr  # a mutation may be valid
                answered += 1
            assert answered == len(batch)  # every message got its one answer
        finally:
            dealer.close(0)
        dest = tmp_path_factory.mktemp("e2e", numbered=True)
        got = DeviceAgent(server.endpoint, dest, FAST, trusted=keys[1]).run(once=True)
        assert got.version == VERSION and read_pointer(dest) == VERSION
        shutil.rmtree(dest)
