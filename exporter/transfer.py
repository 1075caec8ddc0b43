"""Bundles to devices over ZeroMQ: the exporter announces, devices pull in chunks and check.

Server (`BundleServer`, run by the daemon or `motionmask export --serve`), two sockets:

  PUB     export.announce_endpoint   [b"model", JSON info] when LATEST changes, and again every
                                     export.announce_interval_s for devices that were away
  ROUTER  export.endpoint            one JSON frame per request, answered by [JSON header] or
                                     [JSON header, bytes]; every header echoes the request's "id"

  {"op": "hello"}                                    -> {"ok", "protocol", "announce"}
  {"op": "latest"}                                   -> {"ok", "version", "files": {name: {sha256, bytes}}}
  {"op": "chunk", "version", "file", "offset", "size"} -> {"ok", "offset", "size"} + the bytes

JSON info = what "latest" answers: the version and every file of the bundle with its sha256 and
size (manifest.json included, hashed as served). An unknown op, a bad request or a pruned
version is answered {"ok": false, "error": ...}, never left hanging; replies to a device that is
gone are dropped by ZeroMQ, so a vanished device never blocks the server.

Signed bundles (exporter/signing.py, docs/signing.md): a bundle the exporter signed carries
manifest.sig, served as one more file. A device with a pinned key fetches it and the manifest
first (each capped at a few KB), checks the signature, the expiry and the sequence against the
highest it installed, and only then fetches the files, at their signed lengths; a refusal is
final for that version (one log line, BundleRefused) and the bundle in service stays.

Device (`DeviceAgent`, `motionmask device`): asks "hello" and "latest" on start, subscribes to
announcements, and also asks "latest" every poll_s (a PUB message can be missed). A version
whose sha256 differs from the one in service is pulled: manifest first, then each file, `window`
chunks in flight; a request unanswered for timeout_s makes the device reconnect and ask again,
and after `retries` silent rounds the pull fails (device offline, exporter down) and is tried
again after a backoff. Every file is checked against the announced sha256 and size (a torn or
tampered transfer is rejected, and retried up to `attempts` times per version), the bundle is
loaded and run once with ONNX Runtime, and only then installed: renamed into place, LATEST
swapped atomically, PREVIOUS kept for rollback. Until then the previous bundle stays in service.

No torch here.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import zmq

from common import json_input
from common.errors import UserError
from common.log import log_event
from exporter.bundle import (
    FILE_RE,
    LATEST,
    MANIFEST_FILE,
    MODEL_FILE,
    TMP_PREFIX,
    VERSION_RE,
    check_version_name,
    install_bundle,
    load_bundle,
    parse_manifest,
    read_pointer,
    resolve_bundle,
    sha256_bytes,
    sha256_file,
)
from exporter.pulls import PullLog
from exporter.signing import (
    MAX_MANIFEST_BYTES,
    MAX_SIG_BYTES,
    SIG_FILE,
    SignatureError,
    TrustedKey,
    check_fresh,
    read_trust,
    write_trust,
)

logger = logging.getLogger(__name__)

PROTOCOL = 1
TOPIC = b"model"
MAX_CHUNK = 4 << 20
MAX_FILE = 4 << 30
MAX_FILES = 16
SKIP = "SKIP"  # a device folder's pointer to a version it was rolled back from: never pulled again


class TransferError(UserError):
    """A pull that did not complete (no answer, refused); the bundle in service stays."""


class IntegrityError(TransferError):
    """A pulled file whose size or sha256 is not the announced one: torn or tampered."""


class BundleRefused(IntegrityError):
    """A bundle the device's trust policy refuses (unsigned, wrongly signed, older, expired,
    oversized): never retried, logged once. kind: as exporter.signing.SignatureError."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


# ----------------------------------------------------------------------------------------------
# Serving


def _bind(sock: zmq.Socket, endpoint: str, key: str) -> str:
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as e:
        raise UserError(
            f"{key} {endpoint}: cannot listen there ({e.strerror}); pick a free port or interface"
        ) from None
    return sock.getsockopt_string(zmq.LAST_ENDPOINT)


def bundle_info(exports: Path, version: str) -> dict[str, Any]:
    """What an announcement and "latest" say about a version: its files, sha256 and sizes."""
    d = exports / version
    body = (d / MANIFEST_FILE).read_bytes()
    m = parse_manifest(body, d / MANIFEST_FILE)
    files = {MANIFEST_FILE: {"sha256": sha256_bytes(body), "bytes": len(body)}}
    with contextlib.suppress(FileNotFoundError):
        sig = (d / SIG_FILE).read_bytes()
        files[SIG_FILE] = {"sha256": sha256_bytes(sig), "bytes": len(sig)}
    for name, meta in m["files"].items():
        files[name] = {"sha256": meta["sha256"], "bytes": int(meta["bytes"])}
    return {
        "version": version,
        "files": files,
        "step": m.get("source", {}).get("step"),
        "created": m.get("created"),
        "protocol": PROTOCOL,
    }


class BundleServer:
    """Serves an exports folder to devices: announces LATEST on PUB, answers chunk requests on
    ROUTER. One thread; start() binds (a busy port raises UserError there), close() stops."""

    def __init__(
        self,
        exports: str | Path,
        endpoint: str = "tcp://127.0.0.1:5560",
        announce_endpoint: str = "tcp://127.0.0.1:5561",
        *,
        announce_interval_s: float = 5.0,
        rate_limit_mbps: float = 0.0,
        watch_s: float = 0.5,
        context: zmq.Context | None = None,
    ):
        self.exports = Path(exports)
        self.requested = (endpoint, announce_endpoint)
        self.announce_interval_s = announce_interval_s
        self.rate = rate_limit_mbps * 1e6 / 8 if rate_limit_mbps > 0 else 0.0  # bytes per second
        self.watch_s = watch_s
        self.ctx = context or zmq.Context.instance()
        self.endpoint = self.announce_endpoint = ""
        self.stats = collections.Counter()
        self._stop = threading.Event()
        self._announce_now = threading.Event()
        self._thread: threading.Thread | None = None
        self._info: dict[str, Any] | None = None
        self._latest_stat: tuple | None = None
        self._files: dict[str, dict[str, int]] = {}  # version -> its files' sizes
        self.pulls = PullLog()  # which device (peer address) pulled which version, and when

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> BundleServer:
        self._router = self.ctx.socket(zmq.ROUTER)
        self._pub = self.ctx.socket(zmq.PUB)
        for s in (self._router, self._pub):
            s.setsockopt(zmq.LINGER, 0)
        try:
            self.endpoint = _bind(self._router, self.requested[0], "export.endpoint")
            self.announce_endpoint = _bind(self._pub, self.requested[1], "export.announce_endpoint")
        except BaseException:
            self._router.close()
            self._pub.close()
            raise
        self._thread = threading.Thread(target=self._loop, name="bundle-server", daemon=True)
        self._thread.start()
        log_event(
            logger, "bundle_server_start", exports=self.exports, endpoint=self.endpoint, announce=self.announce_endpoint
        )
        return self

    def announce(self) -> None:
        """Announce LATEST now (the daemon calls this right after publishing)."""
        self._announce_now.set()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
            log_event(
                logger,
                "bundle_server_stop",
                requests=self.stats["requests"],
                chunks=self.stats["chunks"],
                mb=self.stats["bytes"] / 2**20,
            )

    def __enter__(self) -> BundleServer:
        return self.start() if self._thread is None else self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the thread --------------------------------------------------------------------------
    def _loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self._router, zmq.POLLIN)
        queue: collections.deque = collections.deque()  # (send_at, frames) held back by the rate limit
        next_send = time.monotonic()
        last_watch = last_announce = 0.0
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                if now - last_watch >= self.watch_s:
                    last_watch = now
                    if self._refresh():
                        self._announce_now.set()
                if self._announce_now.is_set() or (self._info and now - last_announce >= self.announce_interval_s):
                    self._announce_now.clear()
                    last_announce = now
                    if self._info:
                        self._pub.send_multipart([TOPIC, json.dumps(self._info).encode()])
                while queue and queue[0][0] <= now:
                    self._router.send_multipart(queue.popleft()[1])
                wait = 100.0 if not queue else max(0.0, (queue[0][0] - now) * 1e3)
                if not dict(poller.poll(min(100.0, wait))):
                    continue
                while True:
                    try:
                        parts = self._router.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    frames = [f.bytes for f in parts]
                    try:
                        reply = [frames[0], *self._answer(frames[1:], _peer(parts[-1], self.endpoint))]
                    except Exception as e:  # noqa: BLE001 - one bad request must not stop the server
                        log_event(logger, "bundle_server_error", logging.ERROR, error=f"{type(e).__name__}: {e}")
                        reply = [
                            frames[0],
                            json.dumps({"ok": False, "error": "internal error", "code": "bad"}).encode(),
                        ]
                    size = sum(len(f) for f in reply[1:])
                    if self.rate:
                        next_send = max(next_send, time.monotonic()) + size / self.rate
                        queue.append((next_send - size / self.rate, reply))
                    else:
                        self._router.send_multipart(reply)
        except zmq.ContextTerminated:
            pass
        except Exception as e:  # noqa: BLE001 - a server thread must say why it stopped
            log_event(logger, "bundle_server_error", logging.ERROR, error=f"{type(e).__name__}: {e}")
        finally:
            self._router.close(0)
            self._pub.close(0)

    def _refresh(self) -> bool:
        """Re-read LATEST when it changed; True when there is a new version to announce."""
        try:
            st = os.stat(self.exports / LATEST)
            key = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            key = None
        if key == self._latest_stat:
            return False
        self._latest_stat = key
        version = read_pointer(self.exports)
        if version is None:
            self._info = None
            return False
        if self._info and self._info["version"] == version:
            return False
        try:
            info = bundle_info(self.exports, version)
        except (OSError, UserError) as e:
            log_event(logger, "bundle_unservable", logging.WARNING, version=version, error=str(e))
            self._latest_stat = None  # look again next time
            return False
        self._info = info
        self._files[version] = {n: f["bytes"] for n, f in info["files"].items()}
        log_event(logger, "bundle_announce", version=version, sha256=info["files"][MODEL_FILE]["sha256"][:16])
        return True

    def status(self) -> dict[str, Any]:
        """For the daemon's status: where it serves, what it announces, its counters, and the
        pulls (exporter.pulls.PullLog)."""
        info = self._info
        return {
            "endpoint": self.endpoint,
            "announce_endpoint": self.announce_endpoint,
            "dir": str(self.exports),
            "announced": info["version"] if info else None,
            "requests": self.stats["requests"],
            "chunks": self.stats["chunks"],
            **self.pulls.status(),
        }

    def _answer(self, frames: list[bytes], peer: str = "") -> list[bytes]:
        self.stats["requests"] += 1
        req: dict[str, Any] = {}
        try:
            if len(frames) != 1:
                raise ValueError("expected one JSON frame")
            parsed = json_input.loads(frames[0])
            if not isinstance(parsed, dict):
                raise ValueError("expected a JSON object")
            req = parsed
            op = req.get("op")
            if op == "hello":
                return [self._hdr(req, ok=True, protocol=PROTOCOL, announce=self.announce_endpoint)]
            if op == "latest":
                self._refresh()
                if not self._info:
                    return [self._hdr(req, ok=False, error="no bundle published yet", code="empty")]
                return [self._hdr(req, ok=True, **self._info)]
            if op == "chunk":
                return self._chunk(req, peer)
            raise ValueError(f"unknown op {op!r}")
        except (ValueError, TypeError, KeyError, OverflowError) as e:  # OverflowError: an infinite offset
            self.stats["bad_requests"] += 1
            return [self._hdr(req, ok=False, error=f"bad request: {e}", code="bad")]

    def _chunk(self, req: dict[str, Any], peer: str = "") -> list[bytes]:
        version, name = req["version"], req["file"]
        offset, size = int(req["offset"]), int(req["size"])
        if not (
            isinstance(version, str) and VERSION_RE.match(version) and isinstance(name, str) and FILE_RE.match(name)
        ):
            raise ValueError("version and file must be names")
        check = self._files.get(version)
        if check is None and (self.exports / version / MANIFEST_FILE).is_file():
            try:
                check = self._files[check_version_name(version)] = {
                    n: f["bytes"] for n, f in bundle_info(self.exports, version)["files"].items()
                }
            except (OSError, UserError):
                check = None
        if check is None:
            return [self._hdr(req, ok=False, error=f"version {version} is not here (pruned?)", code="gone")]
        if name not in check:
            raise ValueError(f"{name} is not a file of {version}")
        if offset < 0 or not 0 < size <= MAX_CHUNK:
            raise ValueError(f"offset {offset} / size {size} out of range (size 1..{MAX_CHUNK})")
        try:
            with open(self.exports / version / name, "rb") as f:
                f.seek(offset)
                data = f.read(size)
        except OSError:
            return [self._hdr(req, ok=False, error=f"version {version} is not here (pruned?)", code="gone")]
        self.stats["chunks"] += 1
        self.stats["bytes"] += len(data)
        self.pulls.chunk(peer or "unknown", version, name, offset, len(data), check)
        return [self._hdr(req, ok=True, version=version, file=name, offset=offset, size=len(data)), data]

    @staticmethod
    def _hdr(req: dict[str, Any], **fields: Any) -> bytes:
        return json.dumps({"id": req.get("id"), **fields}).encode()


def _peer(frame: zmq.Frame, endpoint: str) -> str:
    """The device's address as ZeroMQ saw the connection (the protocol carries no device id)."""
    if not endpoint.startswith("tcp://"):
        return "local"
    try:
        return str(frame.get("Peer-Address"))
    except (zmq.ZMQError, AttributeError, TypeError):
        return "unknown"


# ----------------------------------------------------------------------------------------------
# Pulling


@dataclass
class PullConfig:
    timeout_s: float = 5.0  # a request unanswered this long: reconnect and ask again
    retries: int = 3  # silent rounds in a row before a pull fails (offline); then backoff
    window: int = 4  # chunks in flight
    chunk_kb: int = 256
    backoff_s: float = 1.0  # first wait after a failed pull or an unreachable exporter; doubles
    backoff_max_s: float = 30.0
    poll_s: float = 30.0  # ask for the latest version this often, announcements or not
    attempts: int = 3  # failed pulls of one version (torn, tampered, unusable) before it is skipped
    keep: int = 2  # bundles kept in --dir: the one in service and the previous one


class Channel:
    """A DEALER to the server with request ids; reset() drops the connection and its queues."""

    def __init__(self, endpoint: str, context: zmq.Context | None = None):
        self.endpoint = endpoint
        self.ctx = context or zmq.Context.instance()
        self._next_id = 0
        self.sock: zmq.Socket | None = None
        self.reset()

    def reset(self) -> None:
        if self.sock is not None:
            self.sock.close(0)
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RECONNECT_IVL, 100)
        self.sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        try:
            self.sock.connect(self.endpoint)
        except zmq.ZMQError as e:
            raise UserError(
                f"--endpoint {self.endpoint}: not a ZeroMQ endpoint ({e.strerror}); e.g. tcp://exporter-host:5560"
            ) from None

    def send(self, msg: dict[str, Any]) -> int:
        self._next_id += 1
        self.sock.send(json.dumps({**msg, "id": self._next_id}).encode())
        return self._next_id

    def recv(self, timeout_s: float) -> tuple[dict[str, Any], bytes | None] | None:
        if not self.sock.poll(timeout_s * 1e3):
            return None
        frames = self.sock.recv_multipart()
        try:
            hdr = json_input.loads(frames[0])
        except ValueError:
            return {"id": None}, None
        if not isinstance(hdr, dict):
            return {"id": None}, None
        if not isinstance(hdr.get("id"), int) or isinstance(hdr["id"], bool):
            hdr["id"] = None  # ours are ints; anything else (a list: unhashable) answers no request of ours
        return hdr, (frames[1] if len(frames) > 1 else None)

    def request(self, msg: dict[str, Any], timeout_s: float, retries: int) -> tuple[dict[str, Any], bytes | None]:
        for _ in range(retries + 1):
            rid = self.send(msg)
            deadline = time.monotonic() + timeout_s
            while (left := deadline - time.monotonic()) > 0:
                got = self.recv(left)
                if got is None:
                    break
                if got[0].get("id") == rid:
                    return got
            self.reset()
        raise TransferError(
            f"{self.endpoint}: no answer to {msg.get('op')!r} after {retries + 1} tries of "
            f"{timeout_s:g} s (exporter down, or this device is offline)"
        )

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close(0)
            self.sock = None


def check_announcement(info: dict[str, Any]) -> dict[str, Any]:
    """An announcement or "latest" answer, checked before any of it names a file or folder here.
    TransferError for anything else: the agent backs off and asks again, and keeps running."""
    if not isinstance(info, dict):
        raise TransferError(f"announcement is a {type(info).__name__}, not a JSON object")
    try:
        version = check_version_name(info.get("version"))
    except UserError as e:
        raise TransferError(f"announcement: {e}") from None
    files = info.get("files")
    if (
        not isinstance(files, dict)
        or not 0 < len(files) <= MAX_FILES
        or MANIFEST_FILE not in files
        or MODEL_FILE not in files
    ):
        raise TransferError(f"announcement of {version}: files must include {MANIFEST_FILE} and {MODEL_FILE}")
    for name, meta in files.items():
        if not (
            isinstance(name, str)
            and FILE_RE.match(name)
            and isinstance(meta, dict)
            and isinstance(meta.get("sha256"), str)
            and len(meta["sha256"]) == 64
            and isinstance(meta.get("bytes"), int)
            and not isinstance(meta["bytes"], bool)
            and 0 <= meta["bytes"] <= MAX_FILE
        ):
            raise TransferError(f"announcement of {version}: bad entry for file {name!r}")
    return info


def download_file(
    ch: Channel,
    version: str,
    name: str,
    meta: dict[str, Any],
    dest: Path,
    cfg: PullConfig,
    progress: Callable[[int], None] | None = None,
) -> None:
    """One file of a bundle into dest, `window` chunks in flight; checked against meta's size and
    sha256 (IntegrityError), TransferError when the server stays silent or refuses."""
    size = int(meta["bytes"])
    fd = os.open(dest, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.ftruncate(fd, size)
        _fetch_chunks(ch, version, name, size, fd, cfg, progress)
        os.fsync(fd)
    finally:
        os.close(fd)
    got = sha256_file(dest)
    if got != meta["sha256"]:
        raise IntegrityError(
            f"{name} of {version}: sha256 {got[:12]}... is not the announced "
            f"{meta['sha256'][:12]}...: torn or tampered transfer"
        )


def _fetch_chunks(
    ch: Channel, version: str, name: str, size: int, fd: int, cfg: PullConfig, progress: Callable[[int], None] | None
) -> None:
    """Every chunk of the file written at its offset in fd. A silent round reconnects and asks
    again for every chunk in flight; an answer from before a reconnect is dropped."""
    chunk = max(4096, min(MAX_CHUNK, cfg.chunk_kb * 1024))
    pending = collections.deque(range(0, size, chunk))
    inflight: dict[int, int] = {}  # request id -> offset
    silent = 0
    while pending or inflight:
        while pending and len(inflight) < cfg.window:
            off = pending.popleft()
            rid = ch.send(
                {"op": "chunk", "version": version, "file": name, "offset": off, "size": min(chunk, size - off)}
            )
            inflight[rid] = off
        got = ch.recv(cfg.timeout_s)
        if got is None:
            silent += 1
            if silent > cfg.retries:
                raise TransferError(
                    f"{ch.endpoint}: no answer for {silent} x {cfg.timeout_s:g} s while pulling "
                    f"{name} of {version} (exporter down, or this device is offline)"
                )
            log_event(
                logger, "pull_retry", version=version, file=name, silent=silent, missing=len(pending) + len(inflight)
            )
            ch.reset()  # a fresh connection: whatever the old one had queued is gone
            pending.extendleft(sorted(inflight.values(), reverse=True))
            inflight.clear()
            continue
        hdr, data = got
        off = inflight.pop(hdr.get("id"), None)
        if off is None:
            continue  # an answer to a request made before a reconnect
        if not hdr.get("ok"):
            raise TransferError(f"exporter refused {name} of {version}: {hdr.get('error')}")
        want = min(chunk, size - off)
        if hdr.get("offset") != off or data is None or len(data) != want:
            raise IntegrityError(
                f"{name} of {version}: torn chunk at offset {off} "
                f"({0 if data is None else len(data)} bytes, expected {want})"
            )
        os.pwrite(fd, data, off)
        silent = 0
        if progress:
            progress(len(data))


def smoke_test(bundle_dir: Path) -> None:
    """Load each model of the bundle (fp32, and 8-bit where it has one) with ONNX Runtime on the
    CPU and run one frame: a bundle that does not run here (an opset this onnxruntime lacks, a
    damaged graph) is never swapped in."""
    from exporter.bundle import load_bundle
    from exporter.runtime import BundleRunner

    try:
        precisions = ["fp32"] + (["int8"] if load_bundle(bundle_dir).int8_path else [])
        for precision in precisions:
            runner = BundleRunner(bundle_dir, provider="cpu", threads=1, precision=precision)
            runner.run(np.zeros((1, runner.height, runner.width, 3), np.uint8))
    except (UserError, ValueError, RuntimeError) as e:
        raise IntegrityError(f"bundle {bundle_dir.name} does not run here: {e}") from None


def _fetch_capped(
    ch: Channel, version: str, name: str, meta: dict[str, Any] | None, cap: int, staging: Path, cfg: PullConfig
) -> bytes:
    """A small file of the bundle (manifest, signature) whose length nothing signed yet: never more
    than `cap` bytes, whatever the announcement says."""
    if meta["bytes"] > cap:
        raise BundleRefused(
            "oversized",
            f"bundle {version}: {name} is announced at {meta['bytes']} bytes, more than the {cap} this device accepts",
        )
    download_file(ch, version, name, meta, staging / name, cfg)
    return (staging / name).read_bytes()


def verified_floor(dest: Path, trusted: TrustedKey) -> dict[str, Any] | None:
    """The highest sequence this device installed under `trusted`: DEVICE/TRUST.json, or, when that
    is missing or unreadable, the bundle in service if the pinned key signed it."""
    trust = read_trust(dest)
    if trust is not None:
        return trust
    try:
        b = load_bundle(dest, check_hash=False)
        body = (b.dir / MANIFEST_FILE).read_bytes()
        trusted.verify(body, (b.dir / SIG_FILE).read_bytes(), b.version)
    except (UserError, OSError):
        return None
    seq = b.manifest.get("sequence")
    return {"sequence": seq, "version": b.version} if isinstance(seq, int) and not isinstance(seq, bool) else None


def pull_bundle(
    ch: Channel, dest: Path, info: dict[str, Any], cfg: PullConfig, trusted: TrustedKey | None = None
) -> tuple[Path, str | None]:
    """Download, check and install one announced bundle into dest; returns (bundle dir, previous).

    With a pinned key (trusted): the signature and the manifest first (each capped), the signature
    checked, then expiry and sequence against DEVICE/TRUST.json, and only then each file, at the
    length and sha256 the signed manifest gives; TRUST.json is raised once the bundle is installed.
    A refusal raises BundleRefused before a byte of the model is fetched."""
    info = check_announcement(info)
    version, files = info["version"], info["files"]
    staging = dest / f"{TMP_PREFIX}{version}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        if trusted is not None and SIG_FILE not in files:
            trusted.verify(b"", None, f"bundle {version}")  # raises: unsigned, before anything is fetched
        staging.mkdir(parents=True)
        m, sequence = _pull_manifest(ch, dest, staging, info, cfg, trusted)
        _check_space(dest, m, version)
        _pull_files(ch, staging, info, m, cfg)
        _check_staged(staging)
        done = install_bundle(dest, staging, cfg.keep)
        if trusted is not None:
            write_trust(dest, sequence, version, trusted.key_id)
        return done
    except SignatureError as e:
        shutil.rmtree(staging, ignore_errors=True)
        raise BundleRefused(e.kind, str(e)) from None
    except OSError as e:  # a full or failing disk: the pull fails, the agent backs off and tries again
        shutil.rmtree(staging, ignore_errors=True)
        raise TransferError(f"{dest}: {e.strerror or e} while pulling bundle {version}") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _pull_manifest(
    ch: Channel, dest: Path, staging: Path, info: dict[str, Any], cfg: PullConfig, trusted: TrustedKey | None
) -> tuple[dict[str, Any], int | None]:
    """The bundle's manifest (and its signature, when announced) into staging: (the parsed manifest,
    its sequence once checked fresh against a pinned key, else None)."""
    version, files = info["version"], info["files"]
    where = f"bundle {version}"
    sig = None
    if SIG_FILE in files:  # kept with the bundle even when unpinned: a key pinned later can use it
        sig = _fetch_capped(ch, version, SIG_FILE, files[SIG_FILE], MAX_SIG_BYTES, staging, cfg)
    body = _fetch_capped(ch, version, MANIFEST_FILE, files[MANIFEST_FILE], MAX_MANIFEST_BYTES, staging, cfg)
    if trusted is not None:
        trusted.verify(body, sig, where)
    try:
        m = parse_manifest(body, f"{version}/{MANIFEST_FILE} (pulled)")
    except UserError as e:  # announced with this sha256, so the exporter's own: rejected, not fatal
        raise IntegrityError(str(e)) from None
    if m["version"] != version:
        raise IntegrityError(f"{version}: the pulled manifest names version {m['version']}")
    sequence = check_fresh(m, verified_floor(dest, trusted), where) if trusted is not None else None
    return m, sequence


def _check_space(dest: Path, manifest: dict[str, Any], version: str) -> None:
    # the space the manifest says it needs (signed, with a pinned key), not what an announcement claims
    need = sum(int(f.get("bytes") or 0) for f in manifest["files"].values()) + (1 << 20)
    free = shutil.disk_usage(dest).free
    if free < need:
        raise TransferError(
            f"{dest}: no space left for bundle {version} (needs {need / 2**20:.1f} MB, {free / 2**20:.1f} MB free)"
        )


def _pull_files(ch: Channel, staging: Path, info: dict[str, Any], manifest: dict[str, Any], cfg: PullConfig) -> None:
    """Every file the manifest lists, at the manifest's own length and hash (signed when a key is pinned)."""
    version, files = info["version"], info["files"]
    for name, meta in manifest["files"].items():
        theirs = files.get(name)
        if theirs is None or theirs["sha256"] != meta["sha256"] or theirs["bytes"] != meta.get("bytes"):
            raise IntegrityError(f"{version}: the announcement and the manifest disagree on {name}")
        download_file(ch, version, name, {"sha256": meta["sha256"], "bytes": int(meta["bytes"])}, staging / name, cfg)


def _check_staged(staging: Path) -> None:
    try:
        load_bundle(staging)  # every file against the manifest, once more, as it lies on disk
    except UserError as e:
        raise IntegrityError(str(e)) from None
    smoke_test(staging)


def in_service(dest: Path, check_hash: bool = False) -> tuple[str, str] | None:
    """(version, model sha256) of the bundle in service in a device folder, or None (none, or,
    with check_hash, one that is damaged)."""
    try:
        b = load_bundle(dest, check_hash=check_hash)
    except (UserError, OSError) as e:
        if check_hash and read_pointer(dest):
            log_event(logger, "bundle_damaged", logging.WARNING, dir=dest, error=str(e), action="pull it again")
        return None
    return b.version, b.sha256


def announce_address(endpoint: str, announced: str) -> str:
    """The PUB address to connect to: the announce port on the host this device reached the
    server at (a server binds tcp://*:port or 0.0.0.0; the device knows the host it dialled)."""
    a, e = urlsplit(announced), urlsplit(endpoint)
    if a.scheme != "tcp" or e.scheme != "tcp" or not a.port or not e.hostname:
        return announced
    host = f"[{e.hostname}]" if ":" in e.hostname else e.hostname
    return f"tcp://{host}:{a.port}"


@dataclass
class Installed:
    version: str
    path: Path
    previous: str | None
    step: int | None
    sha256: str
    seconds: float
    bytes: int


class _Schedule:
    """When the agent asks the exporter next: poll_s after a success, a doubling backoff after each
    failure. In backoff an announcement waits too (the exporter repeats them)."""

    def __init__(self, cfg: PullConfig) -> None:
        self.cfg = cfg
        self.backoff = cfg.backoff_s
        self.next_check = 0.0
        self.tries = 0
        self.failing = False

    def due(self, announced: dict[str, Any] | None) -> bool:
        return (announced is not None and not self.failing) or time.monotonic() >= self.next_check

    def succeeded(self) -> None:
        self.backoff, self.failing = self.cfg.backoff_s, False
        self.next_check = time.monotonic() + self.cfg.poll_s

    def failed(self) -> float:
        """Count a failed try; returns the wait before the next one."""
        self.tries += 1
        self.failing = True
        wait = self.backoff
        self.next_check = time.monotonic() + wait
        self.backoff = min(self.cfg.backoff_max_s, self.backoff * 2)
        return wait


class DeviceAgent:
    """The device side: keep `dest` on the exporter's latest bundle. run() until stop is set
    (or, once=True, until up to date)."""

    def __init__(
        self,
        endpoint: str,
        dest: str | Path,
        cfg: PullConfig | None = None,
        announce: str | None = None,
        context: zmq.Context | None = None,
        on_install: Callable[[Installed], None] | None = None,
        trusted: TrustedKey | None = None,
    ):
        self.endpoint = endpoint
        self.trusted = trusted  # the pinned public key; None: bundles are taken unverified (as before signing)
        self.dest = Path(dest).expanduser()
        self.cfg = cfg or PullConfig()
        self.announce = announce
        self.ctx = context or zmq.Context.instance()
        self.on_install = on_install
        self.failures: collections.Counter = collections.Counter()  # (version, sha256) -> failed pulls
        self.last_error = ""
        self._checked = False
        self._skip_logged = ""

    def _prepare_dest(self) -> None:
        try:
            self.dest.mkdir(parents=True, exist_ok=True)
            probe = self.dest / f"{TMP_PREFIX}probe-{os.getpid()}"
            probe.write_bytes(b"ok")
            probe.unlink()
        except OSError as e:
            raise UserError(
                f"--dir {self.dest}: not writable ({e.strerror}); choose a folder you can write to"
            ) from None

    def sync(self, ch: Channel, info: dict[str, Any] | None = None) -> Installed | None:
        """Pull `info` (or ask for the latest) when it differs from the bundle in service."""
        if info is None:
            info = self._ask_latest(ch)
            if info is None:
                return None
        info = check_announcement(info)
        sha = info["files"][MODEL_FILE]["sha256"]
        current = in_service(self.dest, check_hash=not self._checked)  # once per run: heal a damaged bundle
        self._checked = True
        if current and current == (info["version"], sha):
            return None
        if self._rolled_back_from(info["version"], current):
            return None
        if self.failures[(info["version"], sha)] >= self.cfg.attempts:
            return None  # given up on this one; a new version is tried as soon as it is announced
        done = self._pull(ch, info, sha, current)
        if self.on_install:
            self.on_install(done)
        return done

    def _ask_latest(self, ch: Channel) -> dict[str, Any] | None:
        """The exporter's latest announcement; None when it has published nothing yet."""
        hdr, _ = ch.request({"op": "latest"}, self.cfg.timeout_s, self.cfg.retries)
        if not hdr.get("ok"):
            if hdr.get("code") == "empty":
                return None
            raise TransferError(f"exporter: {hdr.get('error')}")
        return hdr

    def _rolled_back_from(self, version: str, current: tuple[str, str] | None) -> bool:
        """True when `version` was rolled back from on this device (logged once per version)."""
        if version != read_pointer(self.dest, SKIP):
            return False
        if self._skip_logged != version:
            self._skip_logged = version
            log_event(
                logger,
                "pull_skipped",
                version=version,
                reason=f"rolled back from it ({SKIP})",
                in_service=current[0] if current else "none",
            )
        return True

    def _pull(self, ch: Channel, info: dict[str, Any], sha: str, current: tuple[str, str] | None) -> Installed:
        """Pull and install the announced bundle; an integrity failure counts against its attempts."""
        t0 = time.monotonic()
        log_event(
            logger,
            "pull_start",
            version=info["version"],
            sha256=sha[:16],
            current=current[0] if current else "none",
            mb=sum(f["bytes"] for f in info["files"].values()) / 2**20,
        )
        try:
            path, previous = pull_bundle(ch, self.dest, info, self.cfg, self.trusted)
        except IntegrityError as e:
            self._count_rejection(e, (info["version"], sha), current)
            raise
        done = Installed(
            info["version"],
            path,
            previous,
            info.get("step"),
            sha,
            time.monotonic() - t0,
            sum(f["bytes"] for f in info["files"].values()),
        )
        log_event(
            logger,
            "bundle_installed",
            version=done.version,
            previous=previous or "none",
            sha256=sha[:16],
            seconds=done.seconds,
            mb=done.bytes / 2**20,
        )
        return done

    def _count_rejection(self, e: IntegrityError, key: tuple[str, str], current: tuple[str, str] | None) -> None:
        # a refusal by the trust policy is final for this version: one line, no retries
        self.failures[key] = self.cfg.attempts if isinstance(e, BundleRefused) else self.failures[key] + 1
        left = self.cfg.attempts - self.failures[key]
        log_event(
            logger,
            "bundle_rejected",
            logging.ERROR,
            version=key[0],
            check=e.kind if isinstance(e, BundleRefused) else "integrity",
            reason=str(e),
            attempts_left=left,
            in_service=current[0] if current else "none",
        )

    def run(self, stop: threading.Event | None = None, once: bool = False) -> Installed | None:
        """Follow the exporter until `stop` is set. once=True: return after the first successful
        check (the bundle installed, or already up to date); raise the last error when every try
        failed (cfg.attempts tries, with backoff)."""
        stop = stop or threading.Event()
        self._prepare_dest()
        self._log_trust()
        ch = Channel(self.endpoint, self.ctx)
        sub: zmq.Socket | None = None
        schedule = _Schedule(self.cfg)
        announced: dict[str, Any] | None = None
        last: Installed | None = None
        try:
            while not stop.is_set():
                if schedule.due(announced):
                    try:
                        if sub is None:
                            sub = self._subscribe(ch)
                        last = self.sync(ch, announced) or last
                        schedule.succeeded()
                        self.last_error = ""
                        if once:
                            return last
                    except TransferError as e:  # IntegrityError included
                        self.last_error = str(e)
                        retry_in = schedule.failed()
                        if once and (schedule.tries >= self.cfg.attempts or isinstance(e, BundleRefused)):
                            raise
                        if not isinstance(e, IntegrityError):
                            log_event(
                                logger,
                                "pull_failed",
                                logging.WARNING,
                                error=str(e),
                                retry_in_s=retry_in,
                                in_service=(in_service(self.dest) or ("none",))[0],
                            )
                        ch.reset()
                    announced = None
                wait = max(0.0, min(schedule.next_check - time.monotonic(), 0.25))
                if sub is not None and sub.poll(wait * 1e3):
                    announced = self._announcement(sub)
                elif sub is None:
                    stop.wait(wait)
        finally:
            if sub is not None:
                sub.close(0)
            ch.close()
        return last

    def _log_trust(self) -> None:
        if self.trusted is None:
            log_event(
                logger,
                "bundles_unverified",
                logging.WARNING,
                dir=self.dest,
                note="no --trusted-key: bundles are checked against their own manifest only; pin the "
                "exporter's public key (docs/signing.md)",
            )
        else:
            floor = verified_floor(self.dest, self.trusted)
            log_event(
                logger,
                "bundles_verified",
                key_id=self.trusted.key_id,
                highest_sequence=floor["sequence"] if floor else "none",
            )

    def _announcement(self, sub: zmq.Socket) -> dict[str, Any] | None:
        """The announcement waiting on sub; None for anything else and for the periodic repeat of
        the bundle in service."""
        try:
            parts = sub.recv_multipart()
            announced = json_input.loads(parts[1]) if len(parts) == 2 and parts[0] == TOPIC else None
            if announced is not None and in_service(self.dest) == (
                announced.get("version"),
                announced.get("files", {}).get(MODEL_FILE, {}).get("sha256"),
            ):
                return None
            return announced
        except (ValueError, AttributeError):
            return None

    def _subscribe(self, ch: Channel) -> zmq.Socket:
        hdr, _ = ch.request({"op": "hello"}, self.cfg.timeout_s, 0)
        if not hdr.get("ok") or hdr.get("protocol") != PROTOCOL:
            raise TransferError(f"{self.endpoint}: not a motionmask bundle server (protocol {hdr.get('protocol')})")
        address = self.announce or announce_address(self.endpoint, str(hdr.get("announce", "")))
        sub = self.ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.SUBSCRIBE, TOPIC)
        sub.connect(address)
        log_event(logger, "device_connected", endpoint=self.endpoint, announce=address)
        return sub


def rollback_device(dest: str | Path) -> tuple[str, str]:
    """Put the previous bundle back in service (LATEST <-> PREVIOUS) and remember the version
    rolled back from in DIR/SKIP, so that a running agent does not pull it again (a newer
    version is pulled as usual)."""
    from exporter.bundle import rollback, write_pointer

    resolve_bundle(dest)
    now, was = rollback(dest)
    if was:
        write_pointer(dest, was, SKIP)
    return now, was
