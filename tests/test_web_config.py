"""The console's rules that need no running daemon: loopback unless a token, the token gate,
redaction of camera credentials, latest-frame-wins, a port in use."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest
import yaml

from common.errors import UserError
from motionmask.web.config import WebConfig, is_loopback
from motionmask.web.redact import redact
from motionmask.web.stream import LiveStore


def _one_line_error(cmd: list[str]) -> str:
    r = subprocess.run([sys.executable, "-m", "motionmask.cli", *cmd], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


def test_daemon_refuses_to_open_the_console_without_a_token(tmp_path):
    cfg = tmp_path / "open.yaml"
    cfg.write_text(
        yaml.safe_dump({"cameras": [{"name": "a", "source": "tests/data/sample.mp4"}], "web": {"host": "0.0.0.0"}})
    )
    line = _one_line_error(["run", "--config", str(cfg)])
    assert line.startswith("motionmask run: error:") and "web.host 0.0.0.0" in line and "web.token" in line


def test_console_refuses_to_open_without_a_token():
    line = _one_line_error(["console", "--host", "0.0.0.0", "--port", "0"])
    assert "--token" in line and "0.0.0.0" in line


def test_loopback_rule():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4") and not is_loopback("rig.local")
    WebConfig(host="0.0.0.0", token="s3cret").validate()
    WebConfig(host="0.0.0.0", enabled=False).validate()
    with pytest.raises(ValueError, match="web.token"):
        WebConfig(host="192.168.1.4").validate()


@pytest.mark.filterwarnings("ignore")  # starlette: its TestClient on httpx
def test_token_gate():
    from starlette.testclient import TestClient

    from motionmask.web.app import build_app
    from motionmask.web.feed import DaemonFeed

    feed = DaemonFeed("tcp://127.0.0.1:1")  # never started: no daemon needed
    with TestClient(build_app(feed, token="s3cret")) as c:
        assert c.get("/api/status").status_code == 401
        assert c.get("/api/status", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/api/status", headers={"Authorization": "Bearer s3cret"}).status_code == 503  # no daemon yet
        r = c.get("/?token=s3cret", follow_redirects=False)
        assert r.status_code == 303 and "motionmask_token=s3cret" in r.headers["set-cookie"]
        c.cookies.set("motionmask_token", "s3cret")
        assert c.get("/api/events").status_code == 200
    with TestClient(build_app(feed)) as c:
        assert c.get("/api/events").status_code == 200 and "motionmask" in c.get("/").text


def test_credentials_never_reach_the_page():
    st = {
        "cameras": {
            "door": {
                "source": "rtsp://admin:hunter2@10.0.0.7:554/live",
                "last_error": "rtsp://admin:hunter2@10.0.0.7:554/live: connection refused",
            }
        }
    }
    out = redact(st)
    assert "hunter2" not in repr(out) and "admin" not in repr(out)
    assert out["cameras"]["door"]["last_error"] == "rtsp://10.0.0.7:554/live: connection refused"


def _hdr(kind: str, frame: int, camera: str = "a") -> dict:
    return {"camera": camera, "kind": kind, "frame": frame, "capture_ns": frame, "encoding": "png"}


def test_latest_picture_wins_and_matches_its_frame():
    s = LiveStore()
    for i in range(5):
        s.put_mask(_hdr("motion", i), b"m%d" % i)
        s.put_mask(_hdr("trimap", i), b"t%d" % i)
        if i in (1, 3):
            s.put_frame(dict(_hdr("frame", i), encoding="jpeg"), b"f%d" % i)
    tick, fh, jpeg, mh, mask = s.latest("a", "motion")
    assert (fh["frame"], jpeg, mh["frame"], mask) == (3, b"f3", 3, b"m3")  # the mask of the frame shown
    assert tick == 4  # motion masks 0 and 1 (no frame yet), then frames 1 and 3 only
    assert s.latest("a", "student")[3] is None and s.latest("zz", "motion")[0] == 0


def test_port_in_use_is_one_line():
    from motionmask.web.server import listen

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        with pytest.raises(UserError, match="already in use"):
            listen("127.0.0.1", busy.getsockname()[1])
