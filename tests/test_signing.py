"""Signed bundles (docs/signing.md): `motionmask keys --signing` makes a private 0600 pair; the
exporter signs the manifest; a device with a pinned key refuses, with one log line and its model
kept in service, a bundle signed by another key, a manifest edited after signing, a replayed
older version (also after a restart), an expired bundle, a missing signature and an oversized
download; a good signed bundle goes end to end over a real BundleServer on 127.0.0.1."""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import threading
import time
from pathlib import Path

import pytest
import zmq
from _export_data import exported

from common.errors import UserError
from exporter.bundle import MANIFEST_FILE, publish_bundle, read_pointer, versions, write_pointer
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
from exporter.transfer import BundleRefused, BundleServer, DeviceAgent, IntegrityError, PullConfig
from motionmask.cli import main

FAST = dict(timeout_s=0.5, retries=2, backoff_s=0.1, backoff_max_s=0.5, poll_s=30.0, attempts=3)


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    return exported(tmp_path_factory)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    a_priv, a_pub = create_signing_keys(d, "a")
    b_priv, _ = create_signing_keys(d, "b")
    return {
        "a": Signer.from_file(a_priv),
        "b": Signer.from_file(b_priv),
        "pin": TrustedKey.from_file(a_pub),
        "pub": a_pub,
    }


def sign_copy(exports: Path, version: str, dest: Path, signer: Signer | None, days: float = 30.0) -> Path:
    """Publish one exported bundle again into dest, signed by `signer` (None: unsigned), the way
    the exporter does; LATEST points at it."""
    dest.mkdir(parents=True, exist_ok=True)
    m = json.loads((exports / version / MANIFEST_FILE).read_bytes())
    return publish_bundle(
        dest,
        version,
        {"model.onnx": (exports / version / "model.onnx").read_bytes()},
        m,
        signer=signer,
        expiry_days=days,
    )


def server_for(folder: Path, **kw) -> BundleServer:
    return BundleServer(folder, "tcp://127.0.0.1:*", "tcp://127.0.0.1:*", watch_s=0.05, **kw).start()


def no_temp(folder: Path) -> bool:
    return not [p.name for p in folder.iterdir() if p.name.startswith(".")]


def rejected(caplog) -> list[str]:
    return [r.message for r in caplog.records if "event=bundle_rejected" in r.message]


@pytest.fixture(scope="module")
def served_v1(exports, keys, tmp_path_factory) -> Path:
    """v1 signed by key a, once for the module (served read-only; copy it to change it)."""
    served = tmp_path_factory.mktemp("served") / "v1"
    sign_copy(exports, versions(exports)[0], served, keys["a"])
    return served


@pytest.fixture(scope="module")
def served_v2(exports, keys, served_v1, tmp_path_factory) -> Path:
    """v1 and v2 signed by key a after served_v1 (so above its sequence), LATEST v2; once for the
    module, served read-only: a test that edits it works on a copy."""
    served = tmp_path_factory.mktemp("served") / "v2"
    for v in versions(exports):
        sign_copy(exports, v, served, keys["a"])
    return served


def copy_of(folder: Path, dest: Path) -> Path:
    shutil.copytree(folder, dest)
    return dest


@pytest.fixture
def device_on_v1(exports, keys, served_v1, tmp_path):
    """A device that pulled the signed v1 over a real socket: TRUST.json holds v1's sequence."""
    v1 = versions(exports)[0]
    served, dev = served_v1, tmp_path / "device"
    with server_for(served) as server:
        got = DeviceAgent(server.endpoint, dev, PullConfig(**FAST), trusted=keys["pin"]).run(once=True)
    assert got.version == v1 and read_pointer(dev) == v1 and (dev / v1 / SIG_FILE).is_file()
    seq = json.loads((served / v1 / MANIFEST_FILE).read_bytes())["sequence"]
    assert read_trust(dev)["sequence"] == seq and read_trust(dev)["version"] == v1
    return dev


def refuse(served: Path, dev: Path, keys, caplog, kind: str, endpoint: str | None = None, **agent) -> str:
    """Pull from `served` with the pinned key: refused with `kind`, one log line, v1 stays."""
    v1 = read_pointer(dev)
    caplog.clear()
    caplog.set_level(logging.INFO)
    with server_for(served) as server:
        with pytest.raises(BundleRefused) as e:
            DeviceAgent(
                endpoint or server.endpoint,
                dev,
                PullConfig(**FAST),
                trusted=keys["pin"],
                **({"announce": server.announce_endpoint} if endpoint else {}),
                **agent,
            ).run(once=True)
    assert e.value.kind == kind, e.value
    lines = rejected(caplog)
    assert len(lines) == 1 and f"check={kind}" in lines[0] and f"in_service={v1}" in lines[0], lines
    assert read_pointer(dev) == v1 and BundleRunner(dev, provider="cpu").version == v1 and no_temp(dev)
    return lines[0]


# ----------------------------------------------------------------------------------------------


def test_keys_command_writes_a_private_pair_and_never_prints_the_key(tmp_path, capsys):
    d = tmp_path / "k"
    assert main(["keys", str(d), "--name", "exporter", "--signing"]) == 0
    out = capsys.readouterr()
    priv, pub = d / "exporter.sign_key", d / "exporter.sign_pub"
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600 and stat.S_IMODE(pub.stat().st_mode) == 0o644
    assert b"PRIVATE KEY" in priv.read_bytes() and b"PUBLIC KEY" in pub.read_bytes()
    secret_line = priv.read_text().splitlines()[1]
    assert secret_line not in out.out + out.err and "key id:" in out.out
    assert Signer.from_file(priv).key_id == TrustedKey.from_file(pub).key_id
    assert repr(Signer.from_file(priv)).startswith("Signer(key_id=")
    # never replaced by accident: devices pinned the old public key
    assert main(["keys", str(d), "--name", "exporter", "--signing"]) == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    os.chmod(priv, 0o644)
    with pytest.raises(UserError, match="chmod 600"):
        Signer.from_file(priv)
    with pytest.raises(UserError, match="that is the private key"):
        TrustedKey.from_file(priv)
    with pytest.raises(SystemExit):
        main(["keys", "--help"])
    assert "--name exporter --signing" in capsys.readouterr().out
    # the CurveZMQ pair goes through the same private-file writer (common.atomic.write_private)
    assert main(["keys", str(d), "--name", "server"]) == 0
    curve_secret, curve_public = d / "server.key_secret", d / "server.key"
    assert stat.S_IMODE(curve_secret.stat().st_mode) == 0o600 and stat.S_IMODE(curve_public.stat().st_mode) == 0o644
    assert b"secret-key" in curve_secret.read_bytes() and b"secret-key" not in curve_public.read_bytes()
    assert not [p.name for p in d.iterdir() if p.name.startswith(".")]  # no temp file or folder left


def test_export_signs_when_a_key_is_configured(tmp_path_factory, tmp_path, keys, capsys):
    from _export_data import SAMPLE, trained_checkpoint

    ckpt = trained_checkpoint(tmp_path_factory)
    out = tmp_path / "exports"
    key = Path(keys["a"].path)
    assert (
        main(
            [
                "export",
                "--checkpoint",
                str(ckpt),
                "--out",
                str(out),
                "--signing-key",
                str(key),
                "--frames",
                str(SAMPLE),
                "--quiet",
            ]
        )
        == 0
    )
    v = read_pointer(out)
    body = (out / v / MANIFEST_FILE).read_bytes()
    keys["pin"].verify(body, (out / v / SIG_FILE).read_bytes(), v)
    m = json.loads(body)
    assert m["key_id"] == keys["a"].key_id and m["expires_unix"] > time.time() + 29 * 86400
    assert m["sequence"] >= int(time.time() * 1000) - 600_000
    # a key others can read: one line, before any work
    loose = tmp_path / "loose.sign_key"
    loose.write_bytes(key.read_bytes())
    os.chmod(loose, 0o644)
    capsys.readouterr()
    t0 = time.monotonic()
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(out), "--signing-key", str(loose)]) == 2
    err = capsys.readouterr().err
    assert "--signing-key" in err and "chmod 600" in err and len(err.strip().splitlines()) == 1, err
    assert time.monotonic() - t0 < 5 and versions(out) == [v]


def test_signature_and_freshness_checks(keys):
    body = json.dumps({"version": "v", "sequence": 10, "expires_unix": int(time.time()) + 60}).encode()
    sig = keys["a"].sign(body)
    keys["pin"].verify(body, sig, "b")  # good
    for bad_body, bad_sig, kind in [
        (body, None, "unsigned"),
        (body, keys["b"].sign(body), "wrong_key"),
        (body.replace(b"10", b"11"), sig, "bad_signature"),
        (body, sig.replace(b'"ed25519"', b'"rsa"'), "bad_signature"),
        (body, b"{" * 5000, "oversized"),
        (body, b"not json", "bad_signature"),
    ]:
        with pytest.raises(SignatureError) as e:
            keys["pin"].verify(bad_body, bad_sig, "b")
        assert e.value.kind == kind
    m = json.loads(body)
    assert check_fresh(m, {"sequence": 9, "version": "u"}, "b") == 10
    assert check_fresh(m, {"sequence": 10, "version": "v"}, "b") == 10  # the same bundle again (a re-pull)
    for trust, now, kind in [
        ({"sequence": 11, "version": "w"}, None, "rollback"),
        ({"sequence": 10, "version": "w"}, None, "rollback"),
        (None, time.time() + 120, "expired"),
    ]:
        with pytest.raises(SignatureError) as e:
            check_fresh(m, trust, "b", now)
        assert e.value.kind == kind


def test_a_good_signed_bundle_goes_end_to_end(exports, keys, device_on_v1, served_v2, tmp_path, caplog):
    v1, v2 = versions(exports)
    dev = device_on_v1
    served = served_v2
    m2 = json.loads((served / v2 / MANIFEST_FILE).read_bytes())
    assert (
        m2["key_id"] == keys["a"].key_id
        and m2["expires"].endswith("Z")
        and m2["sequence"] > read_trust(dev)["sequence"]
    )
    caplog.set_level(logging.INFO)
    # a running device, by announcement, over the real sockets
    with server_for(served) as server:
        stop = threading.Event()
        agent = DeviceAgent(server.endpoint, dev, PullConfig(**FAST), trusted=keys["pin"])
        t = threading.Thread(target=agent.run, args=(stop,))
        t.start()
        try:
            deadline = time.monotonic() + 10
            while read_pointer(dev) != v2 and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            stop.set()
            t.join(5)
    assert read_pointer(dev) == v2 and BundleRunner(dev, provider="cpu").version == v2
    assert read_trust(dev) == {**read_trust(dev), "sequence": m2["sequence"], "version": v2, "key_id": keys["a"].key_id}
    assert (dev / v2 / SIG_FILE).read_bytes() == (served / v2 / SIG_FILE).read_bytes() and no_temp(dev)
    assert not rejected(caplog) and "event=bundles_verified" in caplog.text and "bundles_unverified" not in caplog.text

    # the CLI with the pinned key: up to date; a device without a key takes it and says so once
    assert (
        main(
            [
                "device",
                "--endpoint",
                "tcp://127.0.0.1:1",
                "--dir",
                str(dev),
                "--once",
                "--trusted-key",
                str(tmp_path / "missing.pub"),
            ]
        )
        == 2
    )
    caplog.clear()
    with server_for(served) as server:
        assert (
            main(
                [
                    "device",
                    "--endpoint",
                    server.endpoint,
                    "--dir",
                    str(dev),
                    "--once",
                    "--trusted-key",
                    str(keys["pub"]),
                ]
            )
            == 0
        )
        plain = tmp_path / "plain"
        assert DeviceAgent(server.endpoint, plain, PullConfig(**FAST)).run(once=True).version == v2
    assert caplog.text.count("event=bundles_unverified") == 1 and read_pointer(plain) == v2


def test_another_key_an_edited_manifest_and_no_signature_are_refused(
    exports, keys, device_on_v1, served_v2, tmp_path, caplog
):
    v2 = versions(exports)[1]
    dev = device_on_v1
    sign_copy(exports, v2, tmp_path / "other-key", keys["b"])
    line = refuse(tmp_path / "other-key", dev, keys, caplog, "wrong_key")
    assert keys["a"].key_id in line and keys["b"].key_id in line

    edited = copy_of(served_v2, tmp_path / "edited")
    m = json.loads((edited / v2 / MANIFEST_FILE).read_bytes())
    m["quality"] = {"holdout_iou": 0.99}  # anything: the bytes are what is signed
    (edited / v2 / MANIFEST_FILE).write_text(json.dumps(m, indent=2) + "\n")
    assert "altered after signing" in refuse(edited, dev, keys, caplog, "bad_signature")

    unsigned = tmp_path / "unsigned"
    sign_copy(exports, v2, unsigned, None)
    assert not (unsigned / v2 / SIG_FILE).exists()
    assert "refuses unsigned bundles" in refuse(unsigned, dev, keys, caplog, "unsigned")
    stripped = copy_of(served_v2, tmp_path / "stripped")
    (stripped / v2 / SIG_FILE).unlink()  # a signed bundle whose signature was dropped on the way
    refuse(stripped, dev, keys, caplog, "unsigned")

    # a running agent hears the refused version announced again and again: one line, v1 stays
    caplog.clear()
    with server_for(tmp_path / "other-key", announce_interval_s=0.05) as server:
        stop = threading.Event()
        agent = DeviceAgent(server.endpoint, dev, PullConfig(**{**FAST, "poll_s": 0.1}), trusted=keys["pin"])
        t = threading.Thread(target=agent.run, args=(stop,))
        t.start()
        time.sleep(1.5)
        stop.set()
        t.join(5)
    assert len(rejected(caplog)) == 1 and read_pointer(dev) == versions(exports)[0]


def test_a_replayed_older_version_is_refused_also_after_a_restart(
    exports, keys, device_on_v1, served_v2, tmp_path, caplog
):
    v1, v2 = versions(exports)
    dev = device_on_v1
    served = copy_of(served_v2, tmp_path / "served")  # LATEST is rewritten below
    with server_for(served) as server:
        assert DeviceAgent(server.endpoint, dev, PullConfig(**FAST), trusted=keys["pin"]).run(once=True).version == v2
    high = read_trust(dev)["sequence"]
    # the server (or whoever answers) replays v1, validly signed but older: a fresh agent (a
    # restarted device) still knows the highest sequence it installed
    write_pointer(served, v1)
    caplog.clear()
    caplog.set_level(logging.INFO)
    with server_for(served) as server:
        with pytest.raises(BundleRefused) as e:
            DeviceAgent(server.endpoint, dev, PullConfig(**FAST), trusted=keys["pin"]).run(once=True)
    assert e.value.kind == "rollback" and f"not above {high}" in str(e.value)
    assert len(rejected(caplog)) == 1 and read_pointer(dev) == v2 and BundleRunner(dev).version == v2
    # TRUST.json lost (a damaged disk): the signed bundle in service is the floor
    (dev / TRUST_FILE).unlink()
    with server_for(served) as server:
        with pytest.raises(BundleRefused, match="not above"):
            DeviceAgent(server.endpoint, dev, PullConfig(**FAST), trusted=keys["pin"]).run(once=True)
    assert read_pointer(dev) == v2


def test_an_expired_bundle_is_refused(exports, keys, device_on_v1, tmp_path, caplog):
    v2 = versions(exports)[1]
    stale = tmp_path / "stale"
    sign_copy(exports, v2, stale, keys["a"], days=1e-9)  # expired as soon as it is written
    assert "expired at" in refuse(stale, device_on_v1, keys, caplog, "expired")


class InflatingProxy:
    """A real ZeroMQ hop between a device and the server that lies about sizes: it announces
    `inflate` (file -> bytes) in the "latest" reply, and pads every model.onnx chunk with `pad`
    extra bytes. Counts the bytes of each file it relays."""

    def __init__(self, server: str, inflate: dict[str, int] | None = None, pad: int = 0):
        self.ctx = zmq.Context.instance()
        self.front = self.ctx.socket(zmq.ROUTER)
        self.front.bind("tcp://127.0.0.1:*")
        self.endpoint = self.front.getsockopt_string(zmq.LAST_ENDPOINT)
        self.server, self.inflate, self.pad = server, inflate or {}, pad
        self.relayed: dict[str, int] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        back = self.ctx.socket(zmq.DEALER)
        back.connect(self.server)
        ident = None
        poller = zmq.Poller()
        poller.register(self.front, zmq.POLLIN)
        poller.register(back, zmq.POLLIN)
        while not self.stop.is_set():
            ready = dict(poller.poll(50))
            if self.front in ready:
                ident, *request = self.front.recv_multipart()
                back.send_multipart(request)
            if back in ready:
                hdr, *data = back.recv_multipart()
                h = json.loads(hdr)
                for name, size in self.inflate.items():
                    if name in h.get("files", {}):
                        h["files"][name]["bytes"] = size
                if data:
                    self.relayed[h["file"]] = self.relayed.get(h["file"], 0) + len(data[0])
                    if h["file"] == "model.onnx" and self.pad:
                        data = [data[0] + b"\0" * self.pad]
                self.front.send_multipart([ident, json.dumps(h).encode(), *data])
        back.close(0)
        self.front.close(0)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)


@pytest.mark.parametrize("name", [MANIFEST_FILE, SIG_FILE])
def test_an_oversized_manifest_or_signature_is_refused_before_it_is_fetched(
    exports, keys, device_on_v1, served_v2, caplog, name
):
    served = served_v2
    with server_for(served) as server:
        proxy = InflatingProxy(server.endpoint, inflate={name: 3 << 30})
        try:
            caplog.clear()
            caplog.set_level(logging.INFO)
            with pytest.raises(BundleRefused) as e:
                DeviceAgent(
                    proxy.endpoint,
                    device_on_v1,
                    PullConfig(**FAST),
                    trusted=keys["pin"],
                    announce=server.announce_endpoint,
                ).run(once=True)
        finally:
            proxy.close()
    assert e.value.kind == "oversized" and f"{name} is announced at {3 << 30} bytes" in str(e.value)
    assert proxy.relayed.get(name, 0) == 0 and "model.onnx" not in proxy.relayed
    assert len(rejected(caplog)) == 1 and read_pointer(device_on_v1) == versions(exports)[0] and no_temp(device_on_v1)


def test_a_model_download_never_goes_beyond_the_signed_length(exports, keys, device_on_v1, served_v2, caplog):
    v1, v2 = versions(exports)
    served = served_v2
    signed = json.loads((served / v2 / MANIFEST_FILE).read_bytes())["files"]["model.onnx"]["bytes"]
    # the announcement claims a bigger model than the signed manifest: nothing of it is fetched
    with server_for(served) as server:
        proxy = InflatingProxy(server.endpoint, inflate={"model.onnx": signed + (64 << 20)})
        try:
            with pytest.raises(IntegrityError, match="disagree on model.onnx"):
                DeviceAgent(
                    proxy.endpoint,
                    device_on_v1,
                    PullConfig(**{**FAST, "attempts": 1}),
                    trusted=keys["pin"],
                    announce=server.announce_endpoint,
                ).run(once=True)
        finally:
            proxy.close()
    assert "model.onnx" not in proxy.relayed
    # the server sends more bytes than asked for: each chunk is refused as torn, the file never grows
    with server_for(served) as server:
        proxy = InflatingProxy(server.endpoint, pad=4096)
        try:
            with pytest.raises(IntegrityError, match="torn chunk"):
                DeviceAgent(
                    proxy.endpoint,
                    device_on_v1,
                    PullConfig(**{**FAST, "attempts": 1}),
                    trusted=keys["pin"],
                    announce=server.announce_endpoint,
                ).run(once=True)
        finally:
            proxy.close()
    assert read_pointer(device_on_v1) == v1 and versions(device_on_v1) == [v1] and no_temp(device_on_v1)
