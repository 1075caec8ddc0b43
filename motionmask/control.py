"""The daemon's control endpoint: JSON requests over ZeroMQ, one JSON reply each.

    {"cmd": "ping"}    -> {"ok": true, "cmd": "ping", "pid": ..., "uptime_s": ...}
    {"cmd": "status"}  -> {"ok": true, "cmd": "status", "cameras": {...}, "buffer": {...}, ...}
    anything else      -> {"ok": false, "error": "..."}

Clients use a plain REQ socket (`request()` below, or any ZeroMQ binding). The server side is a
ROUTER rather than a REP: a REP socket that meets a message it cannot answer (a DEALER peer with no
envelope, a reply it failed to send) is stuck in the wrong state for every later client, while a
ROUTER answers each message on its own. Every message gets exactly one reply, whatever it holds,
and nothing a client sends can raise out of `handle()`.
"""

from __future__ import annotations

import errno
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import zmq

from common import json_input
from common.errors import UserError
from common.log import log_event

log = logging.getLogger("motionmask.control")

DEFAULT_ENDPOINT = "tcp://127.0.0.1:5556"
MAX_REQUEST_BYTES = 64 << 10  # a request is a few bytes of JSON; a peer sending more is cut off
_MAX_REPLY_TO_JUNK = 200  # characters of an unreadable request echoed back in the error
# Bad requests are logged one line this often at most, with the count of the ones in between:
# whoever can reach the port must not be able to flood the journal (the soak's junk fault, bench/soak/junk.py).
BAD_LOG_EVERY_S = 10.0

Handler = Callable[[dict[str, Any]], dict[str, Any]]


class ControlUnavailable(Exception):
    """Nothing answered at the endpoint within the timeout."""


def bind_error(endpoint: str, key: str, e: zmq.ZMQError) -> UserError:
    """A bind failure as the one-line message a user can act on."""
    if e.errno == errno.EADDRINUSE:
        return UserError(
            f"{key} {endpoint} is already in use (another motionmask daemon?); "
            f"stop that process or set {key} to a free port"
        )
    return UserError(f"{key} {endpoint} cannot be bound: {e.strerror}; use e.g. {DEFAULT_ENDPOINT}")


class ControlServer:
    """A ROUTER socket answering JSON requests through `handlers` (cmd -> function(request) ->
    reply dict). Not thread-safe: poll `socket` and call `handle()` from one thread (the daemon's
    main loop does), or run `serve()` in a thread of its own."""

    def __init__(
        self, ctx: zmq.Context, endpoint: str, handlers: dict[str, Handler], key: str = "daemon.control_endpoint"
    ) -> None:
        self.handlers = handlers
        self.requests = 0
        self.errors = 0
        self._bad_logged_at = -BAD_LOG_EVERY_S
        self._bad_unlogged = 0
        s = ctx.socket(zmq.ROUTER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.MAXMSGSIZE, MAX_REQUEST_BYTES)
        s.setsockopt(zmq.SNDHWM, 100)  # replies to clients that never read them are dropped, not queued
        try:
            s.bind(endpoint)
        except zmq.ZMQError as e:
            s.close(0)
            raise bind_error(endpoint, key, e) from None
        self.socket = s
        self.endpoint = s.getsockopt_string(zmq.LAST_ENDPOINT)

    def handle(self, budget: int = 50) -> int:
        """Answer up to `budget` waiting requests without blocking; returns how many."""
        n = 0
        while n < budget:
            try:
                parts = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            n += 1
            self._answer(parts)
        return n

    def serve(self, stop: Callable[[], bool], poll_ms: int = 100) -> None:
        """Answer requests until stop() is true (for running the server in a thread of its own)."""
        while not stop():
            if self.socket.poll(poll_ms):
                self.handle()

    def _answer(self, parts: list[bytes]) -> None:
        # ROUTER prepends the peer's identity; a REQ peer adds an empty delimiter frame, which the
        # reply must carry back. A DEALER or foreign peer may send none: answer it all the same.
        ident, rest = parts[0], parts[1:]
        envelope = [ident]
        if rest and rest[0] == b"":
            envelope.append(b"")
            rest = rest[1:]
        reply = self.reply_for(rest)
        try:
            self.socket.send_multipart(envelope + [json.dumps(reply, default=str).encode()], zmq.NOBLOCK)
        except zmq.ZMQError as e:  # the peer is gone or never reads: its problem, not the daemon's
            log_event(log, "control_reply_dropped", logging.DEBUG, error=e)

    def reply_for(self, frames: list[bytes]) -> dict[str, Any]:
        self.requests += 1
        try:
            request = self._parse(frames)
            cmd = request["cmd"]
            handler = self.handlers.get(cmd)
            if handler is None:
                raise ValueError(f"unknown cmd {str(cmd)[:64]!r}; known: {', '.join(sorted(self.handlers))}")
            return {"ok": True, "cmd": cmd, **handler(request)}
        except ValueError as e:
            self.errors += 1
            now = time.monotonic()
            if now - self._bad_logged_at >= BAD_LOG_EVERY_S:
                log_event(
                    log,
                    "control_bad_request",
                    logging.WARNING,
                    reason=e,
                    **({"not_logged_since": self._bad_unlogged} if self._bad_unlogged else {}),
                )
                self._bad_logged_at, self._bad_unlogged = now, 0
            else:
                self._bad_unlogged += 1
            return {"ok": False, "error": str(e)}
        except Exception as e:  # a bug in a handler must not take the daemon down; say so instead
            self.errors += 1
            log.exception("event=control_handler_failed cmd=%s", frames[:1])
            return {"ok": False, "error": f"internal error: {type(e).__name__}: {e}"}

    @staticmethod
    def _parse(frames: list[bytes]) -> dict[str, Any]:
        if len(frames) != 1:
            raise ValueError(f"expected one frame holding a JSON object, got {len(frames)} frames")
        raw = frames[0]
        try:
            request = json_input.loads(raw.decode("utf-8"))
        except ValueError:  # not UTF-8, not JSON, nested too deeply, a number too long
            shown = raw[:_MAX_REPLY_TO_JUNK].decode("utf-8", "replace")
            raise ValueError(f'request is not JSON: {shown!r}; send e.g. {{"cmd": "status"}}') from None
        if not isinstance(request, dict):
            raise ValueError(f'request must be a JSON object like {{"cmd": "status"}}, got {type(request).__name__}')
        if not isinstance(request.get("cmd"), str):
            raise ValueError('request has no "cmd" string; send e.g. {"cmd": "status"}')
        return request

    def close(self) -> None:
        self.socket.close(0)


def request(endpoint: str, cmd: str = "status", timeout: float = 2.0, **fields: Any) -> dict[str, Any]:
    """Send one request and return the reply. Never waits longer than `timeout` seconds: raises
    ControlUnavailable when nothing answers (no daemon, wrong endpoint, firewall)."""
    if "://" not in endpoint:
        raise UserError(f"endpoint {endpoint!r} is not a ZeroMQ endpoint; use e.g. {DEFAULT_ENDPOINT}")
    ctx = zmq.Context()
    try:
        s = ctx.socket(zmq.REQ)
        s.setsockopt(zmq.LINGER, 0)  # an unanswered request must not hold up our exit
        ms = max(1, int(timeout * 1000))
        s.setsockopt(zmq.SNDTIMEO, ms)
        s.setsockopt(zmq.RCVTIMEO, ms)
        try:
            s.connect(endpoint)
        except zmq.ZMQError as e:
            raise UserError(f"endpoint {endpoint}: {e.strerror}; use e.g. {DEFAULT_ENDPOINT}") from None
        deadline = time.monotonic() + timeout
        try:
            s.send(json.dumps({"cmd": cmd, **fields}).encode())
            left = deadline - time.monotonic()
            if left <= 0 or not s.poll(int(left * 1000)):
                raise ControlUnavailable(endpoint)
            raw = s.recv()
        except zmq.Again:
            raise ControlUnavailable(endpoint) from None
        return parse_reply(endpoint, raw)
    finally:
        ctx.destroy(linger=0)


def parse_reply(endpoint: str, raw: bytes) -> dict[str, Any]:
    """A control reply as a dict; UserError for anything else (the peer is not a motionmask daemon)."""
    try:
        reply = json_input.loads(raw)
    except ValueError:
        raise UserError(
            f"{endpoint} answered with something that is not JSON: is it a motionmask daemon's control endpoint?"
        ) from None
    if not isinstance(reply, dict):
        raise UserError(f"{endpoint} answered {type(reply).__name__}, not a JSON object")
    return reply


__all__ = ["ControlServer", "ControlUnavailable", "DEFAULT_ENDPOINT", "bind_error", "parse_reply", "request"]
