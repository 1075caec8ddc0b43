"""Control endpoint over real loopback sockets: replies, malformed and foreign messages, timeouts."""

import json
import socket
import threading
import time

import pytest
import zmq
from _media import free_port

from common.errors import UserError
from motionmask.cli import main
from motionmask.control import ControlServer, ControlUnavailable, request


@pytest.fixture
def server():
    """A ControlServer answering in a thread, as the daemon's loop would."""
    ctx = zmq.Context()
    calls = []

    def status(req):
        calls.append(req)
        return {"cameras": {"cam0": {"state": "running", "fps": 9.5}}}

    def broken(req):
        raise RuntimeError("handler bug")

    srv = ControlServer(ctx, "tcp://127.0.0.1:*", {"status": status, "ping": lambda r: {"pong": 1}, "broken": broken})
    stop = threading.Event()
    t = threading.Thread(target=srv.serve, args=(stop.is_set, 20), daemon=True)
    t.start()
    yield srv, calls
    stop.set()
    t.join(2)
    srv.close()
    ctx.term()


def _req_raw(endpoint, frames, sock_type=zmq.REQ, timeout_ms=2000):
    ctx = zmq.Context.instance()
    s = ctx.socket(sock_type)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RCVTIMEO, timeout_ms)
    s.connect(endpoint)
    try:
        s.send_multipart(frames)
        return s.recv_multipart()
    finally:
        s.close(0)


def test_ping_and_status(server):
    srv, calls = server
    assert request(srv.endpoint, "ping", timeout=2) == {"ok": True, "cmd": "ping", "pong": 1}
    st = request(srv.endpoint, "status", timeout=2, verbose=True)
    assert st["ok"] and st["cameras"]["cam0"]["fps"] == 9.5
    assert calls[-1] == {"cmd": "status", "verbose": True}


@pytest.mark.parametrize(
    "frames, match",
    [
        ([b"not json at all"], "not JSON"),
        ([b"\xff\xfe\x00binary\x01"], "not JSON"),
        ([b"[1, 2, 3]"], "JSON object"),
        ([b'{"command": "status"}'], 'no "cmd"'),
        ([b'{"cmd": 7}'], 'no "cmd"'),
        ([b'{"cmd": "reboot"}'], "unknown cmd 'reboot'; known: broken, ping, status"),
        ([b'{"cmd": "status"}', b"extra part"], "got 2 frames"),
        ([b""], "not JSON"),
    ],
)
def test_malformed_requests_get_an_error_reply_and_the_server_keeps_going(server, frames, match):
    srv, _ = server
    (raw,) = _req_raw(srv.endpoint, frames)
    reply = json.loads(raw)
    assert reply["ok"] is False and match in reply["error"]
    assert request(srv.endpoint, "ping", timeout=2)["ok"]


def test_handler_bug_is_an_error_reply(server):
    srv, _ = server
    reply = request(srv.endpoint, "broken", timeout=2)
    assert reply == {"ok": False, "error": "internal error: RuntimeError: handler bug"}
    assert srv.errors >= 1
    assert request(srv.endpoint, "ping", timeout=2)["ok"]


def test_foreign_peers_dealer_without_envelope_raw_tcp_and_oversized(server):
    srv, _ = server
    # A DEALER sends no empty delimiter: a REP socket would drop or misroute this; we answer.
    (raw,) = _req_raw(srv.endpoint, [b'{"cmd": "ping"}'], zmq.DEALER)
    assert json.loads(raw)["ok"] is True
    # Bytes that are not ZMTP at all (a port scanner, an HTTP client on the wrong port).
    port = int(srv.endpoint.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(range(256)) * 8)
        time.sleep(0.2)
    # A message over the size limit: that peer is cut off (no reply), nobody else notices.
    with pytest.raises(zmq.Again):
        _req_raw(srv.endpoint, [b"x" * (200 << 10)], timeout_ms=500)
    assert request(srv.endpoint, "status", timeout=2)["ok"]


def test_many_clients_at_once(server):
    srv, _ = server
    results = []

    def ask():
        results.append(request(srv.endpoint, "ping", timeout=5)["ok"])

    threads = [threading.Thread(target=ask) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert results == [True] * 20


def test_nothing_answering_times_out_promptly():
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    with pytest.raises(ControlUnavailable):
        request(endpoint, "status", timeout=0.3)
    assert time.monotonic() - t0 < 1.5
    # a listener that accepts TCP but never answers (a hung daemon, a foreign service)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        t0 = time.monotonic()
        with pytest.raises(ControlUnavailable):
            request(f"tcp://127.0.0.1:{s.getsockname()[1]}", "status", timeout=0.3)
        assert time.monotonic() - t0 < 1.5


def test_status_command_without_daemon_exits_1_with_one_line(capsys):
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    assert main(["status", "--endpoint", endpoint, "--timeout", "0.3"]) == 1
    assert time.monotonic() - t0 < 2.0
    err = capsys.readouterr().err.strip()
    assert err == f"motionmask status: no daemon answering at {endpoint}: is `motionmask run` running?"


def test_status_command_usage_errors(capsys):
    assert main(["status", "--endpoint", "localhost:5556", "--timeout", "0.3"]) == 2
    assert "not a ZeroMQ endpoint" in capsys.readouterr().err
    assert main(["status", "--timeout", "0"]) == 2


def test_bind_conflict_names_the_endpoint_and_key():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        endpoint = f"tcp://127.0.0.1:{s.getsockname()[1]}"
        ctx = zmq.Context()
        try:
            with pytest.raises(UserError) as e:
                ControlServer(ctx, endpoint, {})
        finally:
            ctx.term()
    msg = str(e.value)
    assert endpoint in msg and "daemon.control_endpoint" in msg and "already in use" in msg
    assert "\n" not in msg
