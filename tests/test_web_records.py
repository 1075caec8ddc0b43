"""What the daemon records for its console, without a daemon: the bundle server's record of which
device pulled which version (real BundleServer and DeviceAgent over loopback TCP), and the
warnings a valid config earns."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from _export_data import copy_version, exported

from exporter.bundle import versions
from exporter.transfer import BundleServer, Channel, DeviceAgent, PullConfig
from motionmask.config import load_config
from motionmask.config_warnings import config_warnings

FAST = dict(timeout_s=1.0, retries=2, backoff_s=0.1, backoff_max_s=0.5, poll_s=30.0, attempts=3)
CLIP = Path(__file__).parent / "data" / "sample.mp4"


def _bytes(folder: Path, version: str) -> int:
    return sum(p.stat().st_size for p in (folder / version).iterdir())


def test_bundle_server_records_which_device_pulled_which_version(tmp_path_factory, tmp_path):
    exports = exported(tmp_path_factory)
    v1, v2 = versions(exports)
    served = tmp_path / "served"
    copy_version(exports, v1, served)
    with BundleServer(served, "tcp://127.0.0.1:*", "tcp://127.0.0.1:*", watch_s=0.05).start() as server:
        assert server.status()["pulls_total"] == 0 and server.status()["devices"] == []
        got = DeviceAgent(server.endpoint, tmp_path / "dev1", PullConfig(**FAST)).run(once=True)
        assert got.version == v1
        st = server.status()
        assert st["pulls_total"] == 1 and st["in_progress"] == [] and st["announced"] == v1
        (pull,) = st["pulls"]
        assert pull["device"] == "127.0.0.1" and pull["version"] == v1 and pull["bytes"] == _bytes(served, v1)
        assert st["devices"] == [pull] and st["bytes_served"] == pull["bytes"]

        # half a pull (a device that went away after one chunk) is in progress, not a pull
        ch = Channel(server.endpoint)
        ch.send({"op": "chunk", "version": v1, "file": "model.onnx", "offset": 0, "size": 4096})
        assert ch.recv(5.0) is not None
        ch.close()
        st = server.status()
        assert st["pulls_total"] == 1 and [p["version"] for p in st["in_progress"]] == [v1]

        copy_version(exports, v2, served)  # a new LATEST: another device takes it
        got = DeviceAgent(server.endpoint, tmp_path / "dev2", PullConfig(**FAST)).run(once=True)
        assert got.version == v2
        st = server.status()
        assert st["pulls_total"] == 2 and [p["version"] for p in st["pulls"]] == [v2, v1]  # newest first
        assert st["pulls"][0]["time"] >= st["pulls"][1]["time"]
        # one address, one device: its last pull
        assert [(d["device"], d["version"]) for d in st["devices"]] == [("127.0.0.1", v2)]


def _cfg(tmp_path: Path, data: dict):
    path = tmp_path / "rig.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_config(path)


def test_config_warnings_name_the_key(tmp_path):
    quiet = _cfg(tmp_path, {"cameras": [{"name": "a", "source": str(CLIP)}]})
    assert config_warnings(quiet) == []

    cfg = _cfg(
        tmp_path,
        {
            "cameras": [
                {"name": "a", "source": str(CLIP)},
                {"name": "b", "source": str(tmp_path / "later.mp4")},
                {"name": "c", "source": "rtsp://user:pw@cam.local/stream"},
            ],
            "publish": {"endpoint": "tcp://*:5555"},
            "export": {"enabled": True, "endpoint": "tcp://0.0.0.0:5560"},
        },
    )
    found = {w["key"]: w for w in config_warnings(cfg)}
    assert set(found) == {"cameras[1].source", "publish.endpoint", "export.signing_key"}
    assert found["cameras[1].source"]["event"] == "source_missing" and "later.mp4" in found["cameras[1].source"]["text"]
    assert (
        "camera frames" in found["publish.endpoint"]["text"]
        and "curve_secret_file" in found["publish.endpoint"]["text"]
    )
    assert "unsigned" in found["export.signing_key"]["text"]

    # protected, or kept on this machine: nothing to say
    key = tmp_path / "k.sign_key"
    cfg = _cfg(
        tmp_path,
        {
            "cameras": [{"name": "a", "source": str(CLIP)}],
            "publish": {"endpoint": "tcp://127.0.0.1:5555"},
            "export": {"enabled": True, "endpoint": "tcp://0.0.0.0:5560", "signing_key": str(key)},
        },
    )
    assert config_warnings(cfg) == []

    cfg = _cfg(
        tmp_path,
        {
            "cameras": [{"name": "a", "source": str(CLIP)}],
            "publish": {"enabled": False},
            "export": {"enabled": True, "student_every": 5},
        },
    )
    assert {w["key"] for w in config_warnings(cfg)} == {"publish.enabled", "export.student_every"}


@pytest.mark.parametrize(
    "endpoint,beyond",
    [
        ("tcp://127.0.0.1:1", False),
        ("tcp://[::1]:1", False),
        ("tcp://localhost:1", False),
        ("tcp://*:1", True),
        ("tcp://0.0.0.0:1", True),
        ("tcp://192.168.1.4:1", True),
        ("ipc:///tmp/x", False),
    ],
)
def test_beyond_loopback(endpoint, beyond):
    from motionmask.config_warnings import beyond_loopback

    assert beyond_loopback(endpoint) is beyond


def test_console_events_from_what_the_daemon_records():
    """The console's event list from two successive status replies (as its poll sees them): config
    and camera warnings, the gate's decisions and pulls at the time the daemon recorded them (older
    than the console included), a network source dropping and coming back; newest first, each once."""
    from motionmask.web.feed import DaemonFeed

    feed = DaemonFeed("tcp://127.0.0.1:1")  # never started: fed the replies below
    t = 1_700_000_000.0
    cam = {
        "state": "running",
        "frames": 10,
        "restarts": 0,
        "source": "rtsp://cam/1",
        "source_stats": {"reconnects": 0},
        "source_link": {"state": "running", "error": "", "since": t},
    }
    first = {
        "cameras": {"a": cam},
        "warnings": [{"time": t, "key": "export.signing_key", "text": "unsigned"}],
        "learner": {
            "state": "running",
            "export": {
                "state": "exporting",
                "shipped": 1,
                "skipped": 1,
                "failed": 0,
                "decisions": [
                    {
                        "time": t + 1,
                        "step": 30,
                        "outcome": "shipped",
                        "version": "v1",
                        "reason": "first export of this run",
                    },
                    {
                        "time": t + 2,
                        "step": 60,
                        "outcome": "skipped",
                        "version": None,
                        "reason": "holdout IoU 0.3000 does not beat the last export's 0.4000",
                    },
                ],
            },
        },
        "bundle_server": {
            "pulls": [{"device": "10.0.0.7", "version": "v1", "time": t + 3, "bytes": 2 << 20, "seconds": 0.5}],
            "devices": [],
            "pulls_total": 1,
        },
    }
    feed._track(None, first)
    dropped = {
        **cam,
        "frames": 12,
        "source_stats": {"reconnects": 1},
        "source_link": {"state": "reconnecting", "error": "rtsp://cam/1: no frame within 5 s", "since": t + 4},
        "warnings": [{"time": t + 5, "key": "streamer.prune", "text": "camera a kept 3 of its first 300 frames"}],
    }
    second = {**first, "cameras": {"a": dropped}}
    feed._track(first, second)
    feed._track(second, second)  # the same records again: no new events
    back = {**dropped, "frames": 20, "source_link": {**dropped["source_link"], "state": "running", "since": t + 6}}
    feed._track(second, {**second, "cameras": {"a": back}})

    ev = feed.events()
    assert [e["time"] for e in ev] == sorted((e["time"] for e in ev), reverse=True)
    texts = [e["text"] for e in ev if e["time"] < t + 100]  # the records keep their own times
    assert texts == [
        "streamer.prune: camera a kept 3 of its first 300 frames",
        "device 10.0.0.7 pulled v1 (2.0 MB in 0.5 s)",
        "export at step 60 skipped: holdout IoU 0.3000 does not beat the last export's 0.4000",
        "export v1 shipped: first export of this run",
        "export.signing_key: unsigned",
    ]
    live = [e["text"] for e in ev if e["time"] >= t + 100]  # seen by the polls: their time
    assert live == [
        "camera a source back (after: rtsp://cam/1: no frame within 5 s)",
        "camera a source reconnecting: rtsp://cam/1: no frame within 5 s",
    ]

    feed.status = second
    ex = feed.exports()  # no exports folder here: the status's records still answer
    assert not ex["readable"] and [d["step"] for d in ex["decisions"]] == [60, 30]
    assert ex["gate"] == {"state": "exporting", "shipped": 1, "skipped": 1, "failed": 0}
    assert ex["pulls"][0]["device"] == "10.0.0.7" and ex["server"]["pulls_total"] == 1
