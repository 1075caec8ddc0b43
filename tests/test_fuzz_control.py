"""The control endpoint (motionmask/control.py) and its client under any input: the server answers
every message with {"ok": false, "error": ...} naming the problem (never an "internal error",
which is what an exception escaping the parser becomes), the client returns a dict or raises
UserError, and `motionmask status` prints a reply or says in one line that it cannot read it.
The end-to-end test sends a Hypothesis batch over a real socket and asks for a status after it.

Hypothesis settings: tests/_fuzz.py (derandomized, no database; MOTIONMASK_FUZZ=deep for more).
"""

from __future__ import annotations

import json
import threading

import pytest
import zmq
from _fuzz import dict_mutations, fuzz, malformed_json_bytes
from hypothesis import example, given
from hypothesis import strategies as st

from common.errors import UserError
from motionmask.commands.status import describe
from motionmask.control import MAX_REQUEST_BYTES, ControlServer, parse_reply, request

HANDLERS = {"status": lambda r: {"cameras": {}}, "ping": lambda r: {"pong": 1}}
VALID = {"cmd": "status", "verbose": True}


def check_reply(reply: dict) -> None:
    assert isinstance(reply, dict) and isinstance(reply.get("ok"), bool)
    json.dumps(reply, default=str)  # what _answer sends
    if not reply["ok"]:
        assert isinstance(reply["error"], str) and not reply["error"].startswith("internal error"), reply


@pytest.fixture(scope="module")
def offline_server():
    """Parses without a thread: reply_for is what _answer sends back for each message."""
    ctx = zmq.Context()
    srv = ControlServer(ctx, "tcp://127.0.0.1:*", HANDLERS)
    yield srv
    srv.close()
    ctx.term()


@fuzz(200)
@given(raw=malformed_json_bytes(VALID, ("cmd", "id")))
@example(raw=b"[" * 60000)  # was RecursionError, answered "internal error" with a traceback in the log
@example(raw=b'{"cmd": "status", "n": ' + b"9" * 5000 + b"}")
@example(raw=b'{"cmd": ["status"]}')
def test_one_frame_requests(offline_server, raw):
    check_reply(offline_server.reply_for([raw]))


@fuzz(150)
@given(frames=st.lists(st.binary(max_size=64), max_size=5))
def test_any_frame_count(offline_server, frames):
    check_reply(offline_server.reply_for(frames))


@fuzz(150)
@given(raw=malformed_json_bytes({"ok": True, "cmd": "ping", "pid": 7, "uptime_s": 1.5}))
@example(raw=b"[" * 60000)  # was RecursionError out of control.request()
def test_client_reply_parser(raw):
    try:
        reply = parse_reply("tcp://x:1", raw)
    except UserError:
        return
    assert isinstance(reply, dict)


STATUS = {
    "ok": True,
    "cmd": "status",
    "pid": 12,
    "version": "0.1.0",
    "uptime_s": 3725.4,
    "stopping": False,
    "cameras": {
        "cam0": {
            "state": "restarting",
            "restart_in_s": 1.5,
            "fps": 9.5,
            "frames": 100,
            "shots": 2,
            "kept": 80,
            "pruned": 20,
            "drops": 0,
            "restarts": 1,
            "last_error": "",
        }
    },
    "learner": {
        "state": "running",
        "activity": "training",
        "pid": 13,
        "device": "cpu",
        "threads": 2,
        "step": 120,
        "loss": 0.25,
        "crops_per_s": 30.0,
        "checkpoint_step": 100,
        "checkpoint_age_s": 30.0,
        "bootstrap_round": 1,
        "restarts": 0,
        "last_error": "",
    },
    "buffer": {
        "name": "mm",
        "fill": 3,
        "capacity": 8,
        "fill_fraction": 0.375,
        "puts": 5,
        "drops_total": 0,
        "samples_drawn": 4,
        "by_camera": {"cam0": 3},
    },
    "pairs": {"fill": 1, "capacity": 4, "fill_fraction": 0.25, "puts": 1, "drops_total": 0, "pairs_drawn": 0},
    "publisher": {"endpoint": "tcp://127.0.0.1:5555", "sent": 10, "dropped": 0},
    "web": {"url": "http://127.0.0.1:8080", "state": "running", "clients": 1, "restarts": 1, "last_error": "x"},
}


def test_the_valid_status_prints():
    text = describe("tcp://x:1", STATUS)
    assert "cam0" in text and "restarting (1.5s)" in text and "step 120" in text


@fuzz(150)
@given(reply=dict_mutations(STATUS))
@example(reply=dict(STATUS, uptime_s=float("inf")))  # was OverflowError out of `motionmask status`
@example(reply=dict(STATUS, cameras={"cam0": {}}))  # was KeyError
@example(reply=dict(STATUS, cameras=[1]))  # was AttributeError
def test_status_of_another_version_or_a_stranger(reply):
    try:
        text = describe("tcp://x:1", reply)
    except UserError as e:
        assert "tcp://x:1" in str(e) and "\n" not in str(e)
        return
    assert isinstance(text, str)


# -- end to end over a real socket ---------------------------------------------------------


@pytest.fixture(scope="module")
def live_server():
    """A ControlServer answering in a thread, as the daemon's loop does (as tests/test_control.py)."""
    ctx = zmq.Context()
    srv = ControlServer(ctx, "tcp://127.0.0.1:*", HANDLERS)
    stop = threading.Event()
    t = threading.Thread(target=srv.serve, args=(stop.is_set, 20), daemon=True)
    t.start()
    yield srv
    stop.set()
    t.join(2)
    srv.close()
    ctx.term()


messages = st.lists(
    st.one_of(
        malformed_json_bytes(VALID).map(lambda b: [b]),
        st.lists(st.binary(max_size=64), min_size=1, max_size=4),
        st.just([b"x" * (MAX_REQUEST_BYTES + 1)]),
    ),  # over the cap: the peer is cut off
    min_size=10,
    max_size=30,
)


@fuzz(6, deadline_s=None)
@given(batch=messages)
@pytest.mark.timeout(120)
def test_junk_over_a_real_socket_then_a_valid_request(live_server, batch):
    ctx = zmq.Context.instance()
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(live_server.endpoint)
    try:
        for frames in batch:
            dealer.send_multipart([b"", *frames])  # the empty delimiter a REQ peer would send
        while dealer.poll(300):  # whatever comes back is a JSON error for its message
            reply = dealer.recv_multipart()
            assert reply[0] == b""
            check_reply(json.loads(reply[1]))
    finally:
        dealer.close(0)
    assert request(live_server.endpoint, "ping", timeout=5) == {"ok": True, "cmd": "ping", "pong": 1}
    assert request(live_server.endpoint, "status", timeout=5)["ok"] is True
