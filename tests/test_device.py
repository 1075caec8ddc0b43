"""Bundles to devices over real ZeroMQ sockets on loopback: a device pulls the latest bundle,
follows announcements, keeps the previous one for rollback; a tampered transfer is rejected
and retried; an exporter that vanishes mid-transfer, or a device that does, hangs nobody and
leaves the bundle in service untouched; junk requests are answered; the CLI says each in one
line."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import pytest
import zmq
from _export_data import copy_version, exported

from exporter.bundle import PREVIOUS, read_pointer, sha256_file, versions
from exporter.runtime import BundleRunner
from exporter.transfer import BundleServer, Channel, DeviceAgent, IntegrityError, PullConfig
from motionmask.cli import main

FAST = dict(timeout_s=0.5, retries=2, backoff_s=0.1, backoff_max_s=0.5, poll_s=30.0, attempts=3)


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    return exported(tmp_path_factory)


def server_for(folder: Path, **kw) -> BundleServer:
    return BundleServer(folder, "tcp://127.0.0.1:*", "tcp://127.0.0.1:*", watch_s=0.05, **kw).start()


def wait_for(cond, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return False


def no_temp(folder: Path) -> bool:
    return not [p.name for p in folder.iterdir() if p.name.startswith(".")]


def test_device_pulls_follows_announcements_and_keeps_the_previous_bundle(exports, tmp_path):
    v1, v2 = versions(exports)
    served, dev = tmp_path / "served", tmp_path / "device"
    copy_version(exports, v1, served)
    with server_for(served) as server:
        got = DeviceAgent(server.endpoint, dev, PullConfig(**FAST)).run(once=True)
        assert got.version == v1 and got.previous is None and read_pointer(dev) == v1
        for name in ("model.onnx", "model.int8.onnx"):  # both models travel (and passed the smoke test)
            assert sha256_file(dev / v1 / name) == sha256_file(exports / v1 / name)
        runner = BundleRunner(dev, provider="cpu")  # the device's model in service
        assert runner.version == v1 and runner.precision == "int8"
        assert DeviceAgent(server.endpoint, dev, PullConfig(**FAST)).run(once=True) is None  # up to date

        # a running device (polling only every 30 s) gets v2 from the announcement
        stop = threading.Event()
        installed = []
        agent = DeviceAgent(server.endpoint, dev, PullConfig(**FAST), on_install=installed.append)
        t = threading.Thread(target=agent.run, args=(stop,))
        t.start()
        try:
            time.sleep(0.3)  # connected and subscribed
            copy_version(exports, v2, served)
            assert wait_for(lambda: read_pointer(dev) == v2, 5.0)
        finally:
            stop.set()
            t.join(5)
        assert not t.is_alive()
        assert [i.version for i in installed] == [v2] and installed[0].previous == v1
        assert read_pointer(dev, PREVIOUS) == v1 and versions(dev) == sorted([v1, v2]) and no_temp(dev)
        assert runner.reload_if_changed() and runner.version == v2  # hot-loaded by the runtime

        # rollback, from the CLI: v1 back in service, and the agent does not pull v2 again
        assert main(["device", "--dir", str(dev), "--rollback"]) == 0
        assert read_pointer(dev) == v1 and read_pointer(dev, PREVIOUS) == v2
        assert DeviceAgent(server.endpoint, dev, PullConfig(**FAST)).run(once=True) is None
        assert read_pointer(dev) == v1 and runner.reload_if_changed() and runner.version == v1


class TamperingProxy:
    """A real ZeroMQ hop between devices and the server (a man in the middle, or a bad link): it
    relays each device's requests on its own DEALER and flips one byte in the first `times`
    model.onnx chunks it relays back."""

    def __init__(self, server: str, times: int):
        self.ctx = zmq.Context.instance()
        self.front = self.ctx.socket(zmq.ROUTER)
        self.front.bind("tcp://127.0.0.1:*")
        self.endpoint = self.front.getsockopt_string(zmq.LAST_ENDPOINT)
        self.server, self.times, self.tampered = server, times, 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        backs: dict[bytes, zmq.Socket] = {}
        poller = zmq.Poller()
        poller.register(self.front, zmq.POLLIN)
        while not self.stop.is_set():
            ready = dict(poller.poll(50))
            if self.front in ready:
                ident, *request = self.front.recv_multipart()
                if ident not in backs:
                    backs[ident] = self.ctx.socket(zmq.DEALER)
                    backs[ident].connect(self.server)
                    poller.register(backs[ident], zmq.POLLIN)
                backs[ident].send_multipart(request)
            for ident, back in backs.items():
                if back in ready:
                    hdr, *data = back.recv_multipart()
                    if data and json.loads(hdr).get("file") == "model.onnx" and self.tampered < self.times:
                        b = bytearray(data[0])
                        b[len(b) // 3] ^= 0x01
                        data = [bytes(b)]
                        self.tampered += 1
                    self.front.send_multipart([ident, hdr, *data])
        for back in backs.values():
            back.close(0)
        self.front.close(0)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)


def test_a_tampered_transfer_is_rejected_and_retried(exports, tmp_path, caplog):
    v1, v2 = versions(exports)
    served, dev = tmp_path / "served", tmp_path / "device"
    copy_version(exports, v1, served)
    copy_version(exports, v1, dev)  # the device runs v1
    copy_version(exports, v2, served)
    caplog.set_level(logging.INFO)
    with server_for(served) as server:
        proxy = TamperingProxy(server.endpoint, times=1)
        try:
            got = DeviceAgent(proxy.endpoint, dev, PullConfig(**FAST), announce=server.announce_endpoint).run(once=True)
        finally:
            proxy.close()
    assert proxy.tampered == 1 and got.version == v2 and read_pointer(dev) == v2
    rejected = [r.message for r in caplog.records if "event=bundle_rejected" in r.message]
    assert len(rejected) == 1 and "sha256" in rejected[0] and "torn or tampered" in rejected[0]
    assert f"in_service={v1}" in rejected[0]
    assert sha256_file(dev / v2 / "model.onnx") == sha256_file(exports / v2 / "model.onnx") and no_temp(dev)

    # tampered every time: given up after --attempts, one line, v1 stays in service
    dev2 = tmp_path / "device2"
    copy_version(exports, v1, dev2)
    with server_for(served) as server:
        proxy = TamperingProxy(server.endpoint, times=1000)
        try:
            with pytest.raises(IntegrityError, match="torn or tampered"):
                DeviceAgent(proxy.endpoint, dev2, PullConfig(**FAST), announce=server.announce_endpoint).run(once=True)
        finally:
            proxy.close()
    assert read_pointer(dev2) == v1 and versions(dev2) == [v1] and no_temp(dev2)


def test_exporter_gone_mid_transfer_then_back(exports, tmp_path, caplog):
    v1, v2 = versions(exports)
    served, dev = tmp_path / "served", tmp_path / "device"
    copy_version(exports, v1, dev)
    copy_version(exports, v2, served)
    size = (served / v2 / "model.onnx").stat().st_size
    cfg = PullConfig(**{**FAST, "chunk_kb": 16, "window": 2, "timeout_s": 0.3, "retries": 1, "backoff_s": 0.2})
    # a throttled link: the transfer takes about 2 s
    server = server_for(served, rate_limit_mbps=size * 8 / 2.0 / 1e6)
    endpoint = server.endpoint
    caplog.set_level(logging.INFO)
    result: dict = {}
    agent = DeviceAgent(endpoint, dev, cfg)

    def pull() -> None:
        try:
            result["got"] = agent.run(once=True)
        except Exception as e:  # noqa: BLE001 - the test reads it
            result["error"] = e

    t = threading.Thread(target=pull)
    t.start()
    assert wait_for(lambda: server.stats["chunks"] >= 3, 5.0)
    server.close()  # the exporter goes away mid-transfer
    assert wait_for(lambda: any("event=pull_failed" in r.message for r in caplog.records), 5.0)
    assert read_pointer(dev) == v1 and BundleRunner(dev).version == v1  # still in service meanwhile
    server = BundleServer(served, endpoint, "tcp://127.0.0.1:*", watch_s=0.05).start()  # back, same address
    try:
        t.join(15)
        assert not t.is_alive() and "error" not in result, result
    finally:
        server.close()
    assert result["got"].version == v2 and read_pointer(dev) == v2 and read_pointer(dev, PREVIOUS) == v1
    failed = [r.message for r in caplog.records if "event=pull_failed" in r.message]
    assert failed and "no answer" in failed[0] and f"in_service={v1}" in failed[0]
    assert no_temp(dev)


def test_a_device_that_vanishes_mid_transfer_blocks_nobody(exports, tmp_path):
    v1 = versions(exports)[0]
    served = tmp_path / "served"
    copy_version(exports, v1, served)
    with server_for(served) as server:
        gone = Channel(server.endpoint)
        for off in range(0, 16 * 4096 * 20, 16 * 4096):  # 20 chunk requests, then the device is gone
            gone.send({"op": "chunk", "version": v1, "file": "model.onnx", "offset": off, "size": 16 * 4096})
        gone.close()
        t0 = time.monotonic()
        got = DeviceAgent(server.endpoint, tmp_path / "other", PullConfig(**FAST)).run(once=True)
        assert got.version == v1 and time.monotonic() - t0 < 5


def test_junk_requests_are_answered_and_nothing_outside_is_served(exports, tmp_path):
    v1 = versions(exports)[0]
    served = tmp_path / "served"
    copy_version(exports, v1, served)
    (tmp_path / "secret").write_text("do not serve")
    with server_for(served) as server:
        ch = Channel(server.endpoint)
        asks = [
            b"not json",
            b"[1, 2]",
            json.dumps({"op": "format_disk"}).encode(),
            json.dumps({"op": "chunk", "version": "..", "file": "secret", "offset": 0, "size": 10}).encode(),
            json.dumps({"op": "chunk", "version": v1, "file": "../../secret", "offset": 0, "size": 10}).encode(),
            json.dumps({"op": "chunk", "version": v1, "file": "LATEST", "offset": 0, "size": 10}).encode(),
            json.dumps({"op": "chunk", "version": v1, "file": "model.onnx", "offset": 0, "size": 1 << 30}).encode(),
            json.dumps(
                {"op": "chunk", "version": "20000101T000000Z-s0000001", "file": "model.onnx", "offset": 0, "size": 10}
            ).encode(),
        ]
        for raw in asks:
            ch.sock.send(raw)
            got = ch.recv(2.0)
            assert got is not None and got[0]["ok"] is False and got[1] is None, (raw, got)
        hdr, data = ch.request({"op": "chunk", "version": v1, "file": "model.onnx", "offset": 0, "size": 100}, 2.0, 0)
        assert hdr["ok"] and data == (served / v1 / "model.onnx").read_bytes()[:100]
        ch.close()


def test_device_cli_once_and_offline_errors(exports, tmp_path, capsys):
    v1 = versions(exports)[0]
    served, dev = tmp_path / "served", tmp_path / "device"
    copy_version(exports, v1, served)
    with server_for(served) as server:
        assert main(["device", "--endpoint", server.endpoint, "--dir", str(dev), "--once"]) == 0
        assert f"installed {v1}" in capsys.readouterr().err
        assert main(["device", "--endpoint", server.endpoint, "--dir", str(dev), "--once"]) == 0
        assert f"up to date ({v1})" in capsys.readouterr().err
        # the bundle in service got damaged on the device's disk: pulled again, whole
        model = dev / v1 / "model.onnx"
        model.write_bytes(model.read_bytes()[:1000])
        assert main(["device", "--endpoint", server.endpoint, "--dir", str(dev), "--once"]) == 0
        assert f"installed {v1}" in capsys.readouterr().err
        assert sha256_file(model) == sha256_file(exports / v1 / "model.onnx") and no_temp(dev)
        port = server.endpoint.rsplit(":", 1)[1]
    # the exporter is gone: one line, exit 2, the bundle in service named
    t0 = time.monotonic()
    rc = main(
        [
            "device",
            "--endpoint",
            f"tcp://127.0.0.1:{port}",
            "--dir",
            str(dev),
            "--once",
            "--timeout",
            "0.2",
            "--retries",
            "0",
            "--attempts",
            "2",
        ]
    )
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if "error" in x]
    assert rc == 2 and len(lines) == 1 and "no answer" in lines[0] and f"still in service: {v1}" in lines[0], err
    assert time.monotonic() - t0 < 5
    assert main(["device", "--dir", str(tmp_path / "empty"), "--rollback"]) == 2
    assert "no such bundle" in capsys.readouterr().err
    assert main(["device", "--dir", str(dev), "--once"]) == 2
    assert "--endpoint URL is required" in capsys.readouterr().err
    assert no_temp(dev)


def test_device_with_a_full_disk_keeps_its_bundle(exports, tmp_path):
    import shutil
    import subprocess
    import sys

    if not shutil.which("unshare") or subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode:
        pytest.skip("user namespaces (unshare -rm) are not available here")
    v1, v2 = versions(exports)
    served, mnt = tmp_path / "served", tmp_path / "small"
    copy_version(exports, v2, served)
    mnt.mkdir()
    with server_for(served) as server:
        # a private 1 MiB tmpfs as the device's disk, v1 in service: v2 (0.4 MB + margin) does not fit
        script = (
            f"mount -t tmpfs -o size=1m tmpfs {mnt} && cp -r {exports / v1} {mnt}/ && echo {v1} > {mnt}/LATEST "
            f"&& {sys.executable} -m motionmask.cli device --endpoint {server.endpoint} --dir {mnt} --once "
            f"--attempts 1; rc=$?; ls -A {mnt} > {tmp_path / 'ls'}; exit $rc"
        )
        proc = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=60)
    lines = [x for x in proc.stderr.splitlines() if "error" in x]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "no space left for bundle" in lines[0] and f"still in service: {v1}" in lines[0]
    assert (tmp_path / "ls").read_text().split() == sorted([v1, "LATEST"])
