"""Malformed and oversized messages to every socket a `motionmask run` daemon binds, for
bench.soak. Each function sends its batch and returns how many messages it sent; none waits
for a reply longer than a second (a daemon that answers junk with an error is fine, one that
stops answering is what the soak then catches)."""

from __future__ import annotations

import argparse
import json
import random
import socket
import sys
import time
from urllib.parse import urlsplit

import zmq

BIG = 1 << 20  # an oversized message: far beyond any request the daemon expects


def send_raw(host: str, port: int, data: bytes, wait_s: float, read: int) -> None:
    """Connect, send `data`, read up to `read` bytes of any answer within `wait_s`; a refused or
    reset connection is an answer too."""
    try:
        with socket.create_connection((host, port), timeout=1.0) as s:
            s.sendall(data)
            s.settimeout(wait_s)
            try:
                s.recv(read)
            except OSError:
                pass
    except OSError:
        pass


def _host_port(endpoint: str) -> tuple[str, int]:
    u = urlsplit(endpoint.replace("tcp://", "http://"))
    return u.hostname or "127.0.0.1", int(u.port or 0)


def raw_tcp(endpoint: str, rng: random.Random) -> int:
    """Bytes that are not ZMTP (or HTTP): a random blob, an HTTP request to a ZeroMQ port, a ZMTP
    greeting with a bogus version and mechanism, and a connection closed half way through."""
    host, port = _host_port(endpoint)
    blobs = [
        rng.randbytes(rng.randrange(1, 4096)),
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\xff" + b"\x00" * 8 + b"\x7f" + bytes([9, 9]) + b"NOPE".ljust(20, b"\x00") + b"\x00" * 31,
        b"\xff\x00\x00\x00\x00\x00\x00\x00\x01\x7f\x03",  # a greeting cut off
        rng.randbytes(BIG),
    ]
    for blob in blobs:
        send_raw(host, port, blob, 0.2, 64)
    return len(blobs)


def _zsock(ctx: zmq.Context, kind: int, endpoint: str) -> zmq.Socket:
    s = ctx.socket(kind)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RCVTIMEO, 1000)
    s.setsockopt(zmq.SNDTIMEO, 1000)
    s.connect(endpoint)
    return s


def _drain(s: zmq.Socket, n: int, wait_s: float = 1.0) -> None:
    deadline = time.monotonic() + wait_s
    for _ in range(n):
        left = deadline - time.monotonic()
        if left <= 0 or not s.poll(left * 1e3):
            return
        s.recv_multipart()


def zmq_router(endpoint: str, rng: random.Random, requests: list[dict]) -> int:
    """A ROUTER that parses JSON (control, bundle server): junk frames, multipart, non-objects,
    wrong types, oversized frames, plus `requests` that are well formed JSON with bad fields."""
    ctx = zmq.Context()
    sent = 0
    try:
        s = _zsock(ctx, zmq.DEALER, endpoint)
        msgs: list[list[bytes]] = [
            [b""],
            [b"\x00\xff\xfe"],
            [rng.randbytes(512)],
            [b"{", b"}"],
            [b"[]"],
            [b"null"],
            [b"1e999"],
            [b'{"cmd": 5, "op": 5}'],
            [json.dumps({"cmd": "status" * 1000}).encode()],
            [b'{"cmd":' * 5000 + b"1" + b"}" * 5000],  # nesting deeper than the parser's recursion
            [rng.randbytes(BIG)],
            [b"x"] * 300,
            *[[json.dumps(r).encode()] for r in requests],
        ]
        for m in msgs:
            try:
                s.send_multipart(m)
                sent += 1
            except zmq.ZMQError:
                pass
        _drain(s, len(msgs))
        s.close(0)
        # a REQ that sends and never reads its reply, and a PUSH (a socket type a ROUTER refuses)
        for kind in (zmq.REQ, zmq.PUSH):
            t = _zsock(ctx, kind, endpoint)
            try:
                t.send(b'{"cmd": "status"}')
                sent += 1
            except zmq.ZMQError:
                pass
            t.close(0)
    finally:
        ctx.destroy(0)
    return sent


def zmq_pub(endpoint: str, rng: random.Random) -> int:
    """A PUB's subscribers' side: subscriptions that are huge or binary, a SUB that floods
    subscribe/unsubscribe, an XSUB that sends data frames a PUB does not expect."""
    ctx = zmq.Context()
    sent = 0
    try:
        s = _zsock(ctx, zmq.SUB, endpoint)
        # (longer topics overflow the stack of this client's own libzmq, not the daemon's: see main())
        for topic in (rng.randbytes(16 << 10), b"\x00" * 1000, b"mask.", b""):
            s.setsockopt(zmq.SUBSCRIBE, topic)
            sent += 1
        for k in range(2000):
            s.setsockopt(zmq.SUBSCRIBE if k % 2 == 0 else zmq.UNSUBSCRIBE, f"t{k % 50}".encode())
            sent += 1
        _drain(s, 5, 0.3)
        s.close(0)
        x = _zsock(ctx, zmq.XSUB, endpoint)
        for m in ([b"\x02junk"], [rng.randbytes(BIG)], [b"\x01" + b"a" * 50000], [b""]):
            try:
                x.send_multipart(m)
                sent += 1
            except zmq.ZMQError:
                pass
        time.sleep(0.2)
        x.close(0)
        p = _zsock(ctx, zmq.PUSH, endpoint)  # wrong socket type: the handshake is refused
        try:
            p.send(b"x", zmq.NOBLOCK)
        except zmq.ZMQError:
            pass
        sent += 1
        p.close(0)
    finally:
        ctx.destroy(0)
    return sent


def http(url: str, rng: random.Random) -> int:
    """The web console: malformed request lines, a huge header, a bad WebSocket upgrade, a body
    bigger than announced, a slow client that stops half way."""
    host, port = _host_port(url)
    reqs = [
        b"GARBAGE\r\n\r\n",
        b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 200000 + b"\r\n\r\n",
        b"GET /ws/cameras/clip HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: !!!\r\n\r\n",
        b"POST /api/status HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n" + rng.randbytes(BIG),
        b"GET /api/cameras/..%2f..%2fetc HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /api/status HTTP/1.1\r\nHost: x\r\nContent-Le",
        rng.randbytes(4096),
    ]
    for r in reqs:
        send_raw(host, port, r, 0.5, 256)
    return len(reqs)


BUNDLE_REQUESTS = [
    {"op": "chunk", "version": "../../etc", "file": "passwd", "offset": 0, "size": 10},
    {"op": "chunk", "version": "x", "file": "model.onnx", "offset": -1, "size": 10},
    {"op": "chunk", "version": "x", "file": "model.onnx", "offset": 0, "size": 1 << 40},
    {"op": "chunk", "version": None, "file": [], "offset": "a", "size": {}},
    {"op": "chunk", "version": "x" * 5000, "file": "model.onnx", "offset": 0, "size": 1},
    {"op": "latest", "id": {"deep": [1, 2, 3]}},
    {"op": "nope"},
    {"op": None},
    {},
]
CONTROL_REQUESTS = [{"cmd": "nope"}, {"cmd": ""}, {"cmd": "status", "extra": "x" * 60000}, {"cmd": None}]


def everything(endpoints: dict[str, str], rng: random.Random) -> dict[str, int]:
    """Junk to each endpoint: control, publish, bundles, announce (tcp:// ZeroMQ) and web (http://).
    Returns messages sent per endpoint."""
    sent: dict[str, int] = {}
    for name, ep in endpoints.items():
        if not ep:
            continue
        if name == "web":
            sent[name] = http(ep, rng)
            continue
        n = raw_tcp(ep, rng)
        if name == "control":
            n += zmq_router(ep, rng, CONTROL_REQUESTS)
        elif name == "bundles":
            n += zmq_router(ep, rng, BUNDLE_REQUESTS)
        else:  # publish, announce: PUB sockets
            n += zmq_pub(ep, rng)
        sent[name] = n
    return sent


def main() -> int:
    """Run as a process of its own (bench.soak does): a client that sends junk can itself crash
    in libzmq (a SUB keeps its subscriptions in a recursive trie: a megabyte-long topic overflows
    the stack of the client's own I/O thread), and that must not take the soak down with it."""
    p = argparse.ArgumentParser(
        prog=f"python -m {__spec__.name}",
        description="Send malformed and oversized messages to a daemon's endpoints.",
        epilog='example: python -m bench.soak.junk \'{"control": "tcp://127.0.0.1:5556"}\' 0',
    )
    p.add_argument("endpoints", help="JSON object: name -> endpoint (control, publish, bundles, announce, web)")
    p.add_argument("seed", type=int)
    a = p.parse_args()
    print(json.dumps(everything(json.loads(a.endpoints), random.Random(a.seed))))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
