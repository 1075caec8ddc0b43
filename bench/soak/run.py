"""The soak from start to finish: bring the rig up, inject faults until the time is up, stop
everything as systemd would, and summarize (bench/soak/__init__.py says what and why)."""

from __future__ import annotations

import argparse
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import OUT, save_json
from bench.soak.checks import alive, children_of, shm_segments
from bench.soak.faults import Faults, schedule
from bench.soak.monitor import Monitor
from bench.soak.probes import device_current, exports_latest, healthy
from bench.soak.report import SoakRun, Stopped, summarize, table
from bench.soak.rig import Rig
from bench.soak.settings import KINDS, SoakFailure, log, wait_until
from bench.soak.subscribers import Subscribers


def soak(
    minutes: float, seed: int, work: Path, only: list[str] | None = None, quiet_minutes: float = 0.0, once: bool = False
) -> dict[str, Any]:
    rng = random.Random(seed)
    rig = Rig(work, seed)
    log(f"work dir {work}; tmpfs run dir: {rig.tmpfs}; ports {rig.ports}")
    subs = monitor = None
    faults = Faults(rig, rng)
    problems: list[str] = []
    try:
        subs = bring_up(rig, "each fault once" if once else f"faults for {minutes:g} min")
        monitor = Monitor(rig)
        monitor.start()
        soak_s = inject_faults(rig, faults, rng, seed, only, None if once else minutes, problems)
        quiet_from = None
        if quiet_minutes > 0:  # no faults: the steady state, where growth means a leak
            log(f"{quiet_minutes:g} min without faults")
            quiet_from = time.monotonic() - monitor.t0
            time.sleep(quiet_minutes * 60)
    finally:
        stopped = shut_down(rig, monitor, subs)
    return summarize(
        SoakRun(
            seed,
            None if once else minutes,
            soak_s,
            quiet_from,
            quiet_minutes,
            problems,
            rig,
            monitor,
            subs,
            faults.events,
            stopped,
        )
    )


def bring_up(rig: Rig, plan: str) -> Subscribers:
    """The network camera, the daemon and the subscribers; then, once an export is out, the device."""
    t_start = time.monotonic()
    rig.start_stream()
    rig.start_daemon()
    subs = Subscribers(rig.cfg["publish"]["endpoint"])
    if wait_until(lambda: healthy(rig), 180) is None:
        subs.close()
        raise SoakFailure(f"the rig never came up; see {rig.logs}/daemon.log")
    wait_until(lambda: exports_latest(rig) is not None, 180)
    rig.start_device()
    if wait_until(lambda: device_current(rig), 120) is None:
        subs.close()
        raise SoakFailure(f"the device never installed a bundle; see {rig.logs}/device.log")
    log(f"rig up in {time.monotonic() - t_start:.0f} s; {plan}")
    return subs


def inject_faults(
    rig: Rig,
    faults: Faults,
    rng: random.Random,
    seed: int,
    only: list[str] | None,
    minutes: float | None,
    problems: list[str],
) -> float:
    """One fault after another, in the seeded order, until `minutes` are up (None: every kind
    once); the seconds it took. A daemon that exits on its own is a problem, and is started again."""
    kinds = [k for k in (only or KINDS) if k != "disk_full" or rig.tmpfs]
    order = schedule(rng, kinds)
    log(f"seed {seed}: fault order starts {', '.join(order[: len(kinds)])}")
    if minutes is None:
        order = order[: len(kinds)]
    t_faults = time.monotonic()
    end = math.inf if minutes is None else t_faults + minutes * 60
    i = 0
    while i < len(order) and time.monotonic() < end:
        kind = order[i]
        i += 1
        faults.run(kind)
        if rig.daemon.poll() is not None and kind != "daemon_kill":
            problems.append(f"the daemon exited {rig.daemon.returncode} after {kind}")
            log(problems[-1])
            rig.start_daemon()
            wait_until(lambda: healthy(rig), 150)
        gap = rng.uniform(3, 10)
        if i < len(order):
            time.sleep(max(0.0, min(gap, end - time.monotonic())))
    return time.monotonic() - t_faults


def shut_down(rig: Rig, monitor: Monitor | None, subs: Subscribers | None) -> Stopped:
    """Stop everything (the daemon with SIGTERM, as systemd stops it) and see what outlived it."""
    if monitor is not None:
        monitor.stop()
    final_status = rig.status()
    if monitor is not None and final_status is not None and final_status.get("pid") in rig.daemon_pids:
        monitor.last_status[final_status["pid"]] = final_status
    kids, stop_code = stop_daemon(rig)
    stop_device(rig)
    rig.stop_stream()
    if subs is not None:
        subs.close()
    time.sleep(1.0)
    leftover_shm = shm_segments(rig.daemon_pids)
    leftover_tmp = sorted(d for d in rig.tmp_dirs if os.path.exists(d))
    leftover_procs = [k for k in kids if alive(k)]
    for k in leftover_procs:
        os.kill(k, signal.SIGKILL)
    if monitor is not None:  # the last checkpoints and bundles, written at the stop
        monitor.scan_files()
    rig.close()
    return Stopped(final_status, stop_code, leftover_shm, leftover_tmp, leftover_procs)


def stop_daemon(rig: Rig) -> tuple[list[int], int | None]:
    """SIGTERM the daemon, SIGKILL after 30 s; its children as they were, and its exit code."""
    daemon = rig.daemon
    if daemon is None or daemon.poll() is not None:
        return [], None
    kids = children_of(daemon.pid)
    daemon.send_signal(signal.SIGTERM)
    try:
        return kids, daemon.wait(30)
    except subprocess.TimeoutExpired:
        daemon.kill()
        return kids, daemon.wait(10)


def stop_device(rig: Rig) -> None:
    if rig.device is not None and rig.device.poll() is None:
        rig.device.send_signal(signal.SIGTERM)
        try:
            rig.device.wait(15)
        except subprocess.TimeoutExpired:
            rig.device.kill()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.soak",
        description="Soak a real `motionmask run` (two cameras, learner, exports, a device, subscribers) under a "
        "seeded schedule of faults; assert that each is recovered and nothing is lost or corrupted.",
        epilog="examples:\n  python -m bench.soak                       # 20 minutes of faults, seed 0\n"
        "  python -m bench.soak --minutes 2 --seed 3 --out /tmp/soak.json\n"
        "  python -m bench.soak --once --kinds camera_kill,junk   # each once: the test's soak",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--minutes", type=float, default=20.0, help="minutes of faults after the rig is up (default 20)")
    p.add_argument("--seed", type=int, default=0, help="seeds the fault order, pauses and durations (default 0)")
    p.add_argument("--out", default=str(OUT / "soak.json"), help="JSON output")
    p.add_argument(
        "--quiet-minutes",
        type=float,
        default=0.0,
        help="then this long without faults: the growth of RSS, files and threads in a steady state (default 0)",
    )
    p.add_argument(
        "--kinds", default="", help=f"comma-separated faults to draw from (default: all of {', '.join(KINDS)})"
    )
    p.add_argument(
        "--once",
        action="store_true",
        help="every fault kind (of --kinds) once, in the seeded order, "
        "then stop, however long that takes (instead of --minutes)",
    )
    p.add_argument("--keep", action="store_true", help="keep the work folder (logs, run dir, device dir)")
    args = p.parse_args(argv)
    if args.minutes <= 0:
        p.error("--minutes must be > 0")
    only = [k.strip() for k in args.kinds.split(",") if k.strip()]
    if set(only) - set(KINDS):
        p.error(f"--kinds: unknown {', '.join(sorted(set(only) - set(KINDS)))}; known: {', '.join(KINDS)}")
    work = Path(tempfile.mkdtemp(prefix="motionmask-soak-"))
    keep = args.keep
    try:
        r = soak(args.minutes, args.seed, work, only or None, args.quiet_minutes, args.once)
        keep = keep or bool(r["problems"])
    except SoakFailure as e:
        keep = True
        print(f"soak: {e}", file=sys.stderr)
        return 1
    finally:
        if keep:
            log(f"kept {work} (logs in {work / 'logs'})")
        else:
            shutil.rmtree(work, ignore_errors=True)
    save_json(args.out, r, indent=1)
    print(table(r))
    return 1 if r["problems"] else 0
