"""bench.soak (issue 22): a short soak of a real daemon under a seeded fault schedule, and the
regressions it found, each with a test that failed before its fix."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

# A real training run in a process whose files may not grow past a few KB (RLIMIT_FSIZE: the
# kernel refuses the write with EFBIG, as a full disk refuses it with ENOSPC; no root needed).
_FULL_DISK = textwrap.dedent("""
    import logging, resource, signal, sys
    sys.path[:0] = [sys.argv[2], sys.argv[3]]
    from _learner_data import make_ring, tiny_config
    from learner.checkpoint import find_resume
    from learner.samples import RingFeed
    from learner.train import Limits, Trainer, fit

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    run = sys.argv[1]
    ring = make_ring(8, 64, 48)
    try:
        cfg = tiny_config()
        cfg.crops.size = 32
        cfg.train.batch = 4
        cfg.checkpoint.every_steps = 2
        fit(Trainer(cfg), RingFeed(ring), run, Limits(steps=2), progress=False)  # one whole checkpoint
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a refused write returns EFBIG, as ENOSPC would
        hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))  # the soft limit: it can be raised again
        trainer = Trainer(cfg)
        trainer.load_state_dict(find_resume(run)[1], run)
        s = fit(trainer, RingFeed(ring), run, Limits(steps=8), progress=False)
        resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
        path, state = find_resume(run)
        print(s.step, state["step"], path.name)
    finally:
        ring.close()
""")


def test_training_goes_on_when_the_disk_refuses_checkpoints(tmp_path: Path) -> None:
    """Found by the soak's disk_full fault: torch.save on a full disk raised out of fit() and the
    daemon's learner crashed with a traceback at every checkpoint until the disk was freed. Now a
    refused checkpoint (or train.jsonl line) is one warning, training goes on, and last.pt still
    names the previous whole checkpoint."""
    out = subprocess.run(
        [sys.executable, "-c", _FULL_DISK, str(tmp_path / "run"), str(ROOT / "tests"), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["8", "2", "last.pt"], out.stdout  # trained to 8; step 2 is still the one on disk
    assert "event=checkpoint_failed" in out.stderr and "cannot write the checkpoint" in out.stderr
    assert "Traceback" not in out.stderr
    left = [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()]
    assert not [n for n in left if n.endswith(".tmp")], left  # no torn temp file left behind


@pytest.mark.slow
def test_a_short_soak_recovers_from_every_fault(tmp_path: Path) -> None:
    """Four faults, each once (a process killed and restarted by the daemon, the device killed and
    restarted, junk to every socket, a bundle damaged in transit) on a real daemon: every fault
    recovered within its bound, nothing unreadable, nothing left in /dev/shm or /tmp, the device's
    model verified at every sample. About 40 s of faults after ~40-80 s to bring the rig up."""
    out_json = tmp_path / "soak.json"
    kinds = ("camera_kill", "device_kill", "junk", "bundle_flip")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.soak",
            "--once",
            "--kinds",
            ",".join(kinds),
            "--seed",
            "7",
            "--out",
            str(out_json),
        ],
        capture_output=True,
        text=True,
        timeout=420,
        cwd=ROOT,
    )
    assert out_json.is_file(), proc.stderr[-4000:]
    r = json.loads(out_json.read_text())
    assert proc.returncode == 0, (r["problems"], proc.stderr[-4000:])
    assert r["faults_injected"] == r["faults_recovered"] == len(kinds), r["events"]
    assert {k: v["injected"] for k, v in r["by_kind"].items() if v["injected"]} == dict.fromkeys(kinds, 1)
    for key in (
        "unreadable_checkpoints",
        "unreadable_bundles",
        "leftover_shm",
        "leftover_processes",
        "leftover_tmp_dirs",
        "device_unverified",
    ):
        assert r[key] == 0, (key, r["problems"])
    assert r["checkpoints_checked"] > 0 and r["bundles_checked"] > 0 and r["device_checks"] > 0
    assert isinstance(r["rss_slope_mb_per_hour"], float)
    assert all(c["processed"] > 0 and c["motion_masks_received"] > 0 for c in r["cameras"].values()), r["cameras"]
    assert "| fault |" in proc.stdout and "soak: each fault once" in proc.stdout


def _private_dirs(pid: int) -> set[str]:
    """The folders of the unix sockets process `pid` has bound (the daemon's children.sock)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    with open("/proc/net/unix") as f:
        rows = [line.split() for line in f.readlines()[1:]]
    return {os.path.dirname(r[7]) for r in rows if len(r) >= 8 and r[6] in inodes}


def test_a_daemon_removes_the_private_folder_a_killed_one_left(tmp_path: Path, clip: Path) -> None:
    """Found by the soak's daemon_kill fault: every SIGKILLed daemon left its private folder (the
    children's ipc socket) in /tmp, one more per restart outside systemd's PrivateTmp. The next
    daemon removes it (and never the folder of a daemon that still runs)."""
    from _media import free_port

    from motionmask.control import ControlUnavailable, request

    def config(name: str) -> tuple[Path, str]:
        control = f"tcp://127.0.0.1:{free_port()}"
        cfg = {
            "streamer": {"flow": {"width": 64}, "motion": {"num_superpixels": 60}},
            "buffer": {"train_width": 64, "train_height": 48, "memory_mb": 2},
            "publish": {"endpoint": f"tcp://127.0.0.1:{free_port()}"},
            "web": {"enabled": False},
            "learner": {"enabled": False},
            "daemon": {"control_endpoint": control},
            "cameras": [{"name": "a", "source": str(clip), "loop": True}],
        }
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path, control

    def start(name: str) -> tuple[subprocess.Popen, str]:
        path, control = config(name)
        proc = subprocess.Popen(
            [sys.executable, "-m", "motionmask.cli", "run", "--config", str(path)],
            stdout=subprocess.DEVNULL,
            stderr=open(tmp_path / f"{name}.log", "wb"),
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if request(control, "ping", timeout=1.0)["ok"]:
                    return proc, control
            except ControlUnavailable:
                time.sleep(0.2)
        proc.kill()
        raise AssertionError((tmp_path / f"{name}.log").read_text()[-2000:])

    killed, _ = start("killed")
    alive, _ = start("alive")
    try:
        [gone_dir] = _private_dirs(killed.pid)
        [live_dir] = _private_dirs(alive.pid)
        killed.kill()
        killed.wait(5)
        time.sleep(1.0)  # its camera notices and exits (it watches its parent)
        assert os.path.isdir(gone_dir)  # SIGKILL: nobody removed it
        third, _ = start("third")
        try:
            assert not os.path.exists(gone_dir), "the dead daemon's folder is still there"
            assert os.path.isdir(live_dir)  # the running daemon's is untouched
        finally:
            third.terminate()
            assert third.wait(15) == 0
    finally:
        for p in (killed, alive):
            if p.poll() is None:
                p.terminate()
                p.wait(15)


def test_junk_on_the_control_socket_is_logged_once_in_a_while_not_once_per_message(caplog) -> None:
    """Found by the soak's junk fault: every malformed control request was a WARNING line quoting
    up to 200 bytes of it, so whoever can reach the port could flood the journal (and journald's
    rate limit would then drop the daemon's own lines). Every request still gets its error reply."""
    import logging

    import zmq

    from motionmask.control import ControlServer

    ctx = zmq.Context()
    srv = ControlServer(ctx, "tcp://127.0.0.1:*", {"ping": lambda r: {}})
    client = ctx.socket(zmq.DEALER)
    client.setsockopt(zmq.LINGER, 0)
    client.connect(srv.endpoint)
    try:
        with caplog.at_level(logging.INFO, logger="motionmask.control"):
            for i in range(200):
                client.send(b"\x00junk %d" % i)
            replies = 0
            deadline = time.monotonic() + 10
            while replies < 200 and time.monotonic() < deadline:
                srv.handle()
                while client.poll(10):
                    assert json.loads(client.recv())["ok"] is False
                    replies += 1
        assert replies == 200 and srv.errors == 200
        lines = [r.getMessage() for r in caplog.records if "control_bad_request" in r.getMessage()]
        assert 1 <= len(lines) <= 2, len(lines)
    finally:
        client.close(0)
        srv.close()
        ctx.term()
