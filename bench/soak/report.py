"""The soak's figures from what it recorded, and the table it prints."""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.common import cpu_model
from bench.soak.checks import slope_per_hour
from bench.soak.monitor import Monitor
from bench.soak.rig import Rig
from bench.soak.settings import BOUND_S, KINDS, WARMUP_S
from bench.soak.subscribers import Subscribers


def growth_rates(procs: dict[int, dict], span_s: float) -> dict[str, dict[str, float]]:
    """How fast the rig's RSS, open files and threads grow while it runs: each process's
    least-squares slope after its warm-up, weighted by the share of the soak it ran for, summed
    (restarts reset a process's memory, so one slope over the whole tree would measure the fault
    schedule, not a leak). Per role and "all"."""
    out: dict[str, dict[str, float]] = {k: defaultdict(float) for k in ("rss", "fds", "threads")}
    for p in procs.values():
        keep = [i for i, t in enumerate(p["t"]) if t - p["t"][0] >= WARMUP_S]
        if len(keep) < 10 or span_s <= 0:
            continue
        t = [p["t"][i] for i in keep]
        weight = (t[-1] - t[0]) / span_s
        for k in out:
            rate = slope_per_hour(t, [p[k][i] for i in keep]) * weight
            out[k][p["role"]] += rate
            out[k]["all"] += rate
    return {
        k: {r: round(v, 2) for r, v in sorted(d.items())} | {"all": round(d.get("all", 0.0), 2)} for k, d in out.items()
    }


def percentile(xs: list[float], q: float) -> float | None:
    return round(float(np.percentile(xs, q)), 1) if xs else None


def machine() -> str:
    return f"{cpu_model()}, {os.cpu_count()} cores"


def table(r: dict[str, Any]) -> str:
    what = "each fault once" if r["minutes"] is None else f"{r['minutes']:g} min of faults"
    lines = [
        f"soak: {what} (seed {r['seed']}), {r['machine']}",
        "",
        "| fault | injected | recovered | p50 s | p99 s | max s | bound s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for k, v in r["by_kind"].items():
        if v["injected"] or v.get("skipped"):
            skipped = " (skipped: no tmpfs)" if v.get("skipped") else ""
            lines.append(
                f"| {k} | {v['injected']}{skipped} | {v['recovered']} | {v['recover_p50_s']} "
                f"| {v['recover_p99_s']} | {v['recover_max_s']} | {v['bound_s']} |"
            )
    lines.append(
        f"| **all** | {r['faults_injected']} | {r['faults_recovered']} | {r['recover_p50_s']} "
        f"| {r['recover_p99_s']} | | |"
    )
    lines += [
        "",
        "| camera | decoded | processed | kept | motion masks received | missing by seq | restarts |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, c in r["cameras"].items():
        lines.append(
            f"| {name} | {c['decoded']} | {c['processed']} | {c['kept']} | {c['motion_masks_received']} "
            f"| {c['motion_masks_missing_by_seq']} | {c['restarts']} |"
        )
    lines += [
        "",
        f"written: {r['checkpoints_written']} checkpoints "
        f"({r['checkpoints_failed']} refused by a full disk), "
        f"{r['bundles_written']} bundles; the device installed {r['device_installs']} and rejected "
        f"{r['device_rejections']} (damaged in transit)",
        f"checkpoints checked {r['checkpoints_checked']}, unreadable {r['unreadable_checkpoints']}; "
        f"bundles checked {r['bundles_checked']}, unreadable {r['unreadable_bundles']}; device model checked "
        f"{r['device_checks']} times, unverified {r['device_unverified']}",
        f"left in /dev/shm {r['leftover_shm']}, in /tmp {r['leftover_tmp_dirs']}, processes left "
        f"{r['leftover_processes']}; shm segments {r['shm_slope_per_hour']}/h (max {r['shm_max']})",
        f"growth under faults (per-process slopes after {WARMUP_S:g} s of warm-up, weighted by lifetime): RSS "
        f"{r['growth_under_faults']['rss']['all']} MB/h ("
        + ", ".join(f"{k} {v}" for k, v in r["growth_under_faults"]["rss"].items() if k != "all")
        + f"), open files {r['growth_under_faults']['fds']['all']}/h, threads "
        f"{r['growth_under_faults']['threads']['all']}/h",
    ]
    q = r["growth_quiet"]
    if q:
        lines.append(
            f"growth without faults (the whole tree, {q['minutes']:g} min, {q['samples']} samples after "
            f"{WARMUP_S:g} s): RSS {q['rss_mb']} MB/h (daemon {q['daemon_rss_mb']}), open files {q['fds']}/h, "
            f"threads {q['threads']}/h, shm segments {q['shm']}/h"
        )
    lines += [
        f"daemon starts {r['daemon_starts']}, device starts {r['device_starts']}, final stop exit "
        f"{r['final_stop_exit']} ({r['children_killed_at_stop']} children SIGKILLed at a stop after "
        f"shutdown_timeout_s); problems: {len(r['problems'])}"
    ]
    lines += [f"  - {p}" for p in r["problems"]]
    return "\n".join(lines)


# ---- the figures -----------------------------------------------------------------------------


@dataclass
class Stopped:
    """What the final stop left: the daemon's last status and exit code, and what outlived it."""

    final_status: dict | None
    stop_code: int | None
    leftover_shm: list[str]
    leftover_tmp: list[str]
    leftover_procs: list[int]


@dataclass
class SoakRun:
    """Everything the soak recorded, for summarize()."""

    seed: int
    minutes: float | None  # None: each fault kind once (--once)
    soak_s: float
    quiet_from: float | None
    quiet_minutes: float
    problems: list[str]
    rig: Rig
    monitor: Monitor
    subs: Subscribers
    events: list[dict]
    stopped: Stopped


def summarize(r: SoakRun) -> dict[str, Any]:
    """The soak's JSON: its figures, every problem, the events and the samples."""
    m, stopped = r.monitor, r.stopped
    logs = {p.name: p.read_text(errors="replace") for p in r.rig.logs.glob("*.log")}
    daemon_log = logs.get("daemon.log", "")
    return {
        "seed": r.seed,
        "minutes": r.minutes,
        "soak_s": round(r.soak_s, 1),
        "machine": machine(),
        **fault_figures(r.events, r.rig.tmpfs),
        **file_figures(m, logs),
        "leftover_shm": len(stopped.leftover_shm),
        "leftover_processes": len(stopped.leftover_procs),
        "leftover_tmp_dirs": len(stopped.leftover_tmp),
        "daemon_tmp_dirs_seen": len(r.rig.tmp_dirs),
        **growth_figures(m.procs, m.samples, r.quiet_from, r.quiet_minutes),
        "cameras": camera_figures(m.last_status, r.subs),
        "subscriber_decode_errors": r.subs.decode_errors,
        "daemon_starts": r.rig.daemon_starts,
        "device_starts": r.rig.device_starts,
        "final_stop_exit": stopped.stop_code,
        "tracebacks_in_logs": {n: t.count("Traceback") for n, t in logs.items() if "Traceback" in t},
        # children the daemon had to SIGKILL at a stop (shutdown_timeout_s): a learner in the middle of an export
        "children_killed_at_stop": daemon_log.count("event=child_killed"),
        "problems": problems(r),
        "events": r.events,
        "samples": m.samples,
        "final_status_learner": (stopped.final_status or {}).get("learner"),
    }


def fault_figures(events: list[dict], tmpfs: bool) -> dict[str, Any]:
    """Faults injected and recovered, and the time to recover (p50, p99, max) per kind and overall."""
    injected = [e for e in events if e["injected"]]
    by_kind: dict[str, dict] = {}
    for k in KINDS:
        ks = [e for e in injected if e["kind"] == k]
        times = [e["recover_s"] for e in ks if e["recover_s"] is not None]
        by_kind[k] = {
            "injected": len(ks),
            "recovered": sum(e["recovered"] for e in ks),
            "recover_p50_s": percentile(times, 50),
            "recover_p99_s": percentile(times, 99),
            "recover_max_s": max(times) if times else None,
            "bound_s": BOUND_S[k],
        }
    by_kind["disk_full"]["skipped"] = not tmpfs
    all_times = [e["recover_s"] for e in injected if e["recover_s"] is not None]
    return {
        "faults_injected": len(injected),
        "faults_recovered": sum(e["recovered"] for e in injected),
        "faults_skipped": len(events) - len(injected),
        "by_kind": by_kind,
        "recover_p50_s": percentile(all_times, 50),
        "recover_p99_s": percentile(all_times, 99),
    }


def file_figures(m: Monitor, logs: dict[str, str]) -> dict[str, Any]:
    """Checkpoints and bundles written (from the logs) and checked (by the monitor)."""
    daemon_log = logs.get("daemon.log", "")
    device_logs = [t for n, t in logs.items() if n.startswith("device")]
    return {
        "unreadable_checkpoints": len(m.checks.bad_checkpoints),
        "unreadable_bundles": len(m.checks.bad_bundles),
        "checkpoints_written": daemon_log.count("event=checkpoint_saved"),
        "checkpoints_failed": daemon_log.count("event=checkpoint_failed"),
        "bundles_written": daemon_log.count("event=export_published"),
        "device_installs": sum(t.count("event=bundle_installed") for t in device_logs),
        "device_rejections": sum(t.count("event=bundle_rejected") for t in device_logs),
        "checkpoints_checked": m.checks.checkpoints,
        "bundles_checked": m.checks.bundles,
        "device_checks": m.device_checks,
        "device_unverified": len(m.device_bad),
    }


def growth_figures(
    procs: dict[int, dict], samples: list[dict], quiet_from: float | None, quiet_minutes: float
) -> dict[str, Any]:
    """Growth of RSS, open files, threads and shm segments: per-process slopes under faults, and
    (with --quiet-minutes) the whole tree's once the faults are over."""
    span = (samples[-1]["t"] - samples[0]["t"]) if len(samples) > 1 else 0.0
    growth = growth_rates(procs, span)
    quiet = None
    if quiet_from is not None:  # the whole tree, after a minute to settle: no restart resets anything there
        qs = [x for x in samples if x["t"] >= quiet_from + WARMUP_S and "tree_rss_mb" in x]
        quiet = {
            k: round(slope_per_hour([x["t"] for x in qs], [x[key] for x in qs]), 2)
            for k, key in (
                ("rss_mb", "tree_rss_mb"),
                ("daemon_rss_mb", "daemon_rss_mb"),
                ("fds", "tree_fds"),
                ("threads", "tree_threads"),
                ("shm", "shm"),
            )
        }
        quiet.update(minutes=quiet_minutes, samples=len(qs))
    return {
        # with --quiet-minutes: the tree's slope once the faults are over; else per-process slopes under faults
        "rss_slope_mb_per_hour": quiet["rss_mb"] if quiet else growth["rss"]["all"],
        "fds_slope_per_hour": quiet["fds"] if quiet else growth["fds"]["all"],
        "threads_slope_per_hour": quiet["threads"] if quiet else growth["threads"]["all"],
        "growth_quiet": quiet,
        "growth_under_faults": growth,
        "shm_slope_per_hour": round(slope_per_hour([x["t"] for x in samples], [x["shm"] for x in samples]), 2),
        "shm_max": max((s["shm"] for s in samples), default=0),
    }


def camera_figures(last_status: dict[int, dict], subs: Subscribers) -> dict[str, dict]:
    """Frames and masks per camera: each daemon's last status, summed over the daemons, against
    the masks the reading subscriber received."""
    cams: dict[str, Counter] = defaultdict(Counter)
    for st in last_status.values():
        for name, c in st["cameras"].items():
            cams[name]["decoded"] += c["source_stats"]["decoded"]
            cams[name]["processed"] += c["frames"]
            cams[name]["kept"] += c["kept"]
            cams[name]["dropped_stale"] += c["source_stats"]["dropped_stale"]
            cams[name]["restarts"] += c["restarts"]
    cameras = {}
    for name, c in cams.items():
        got = subs.received[(name, "motion")]
        cameras[name] = {
            **c,
            "motion_masks_received": got,
            "motion_masks_missing_by_seq": subs.gaps[(name, "motion")],
            "received_per_processed": round(got / c["processed"], 3) if c["processed"] else None,
            "other_kinds_received": {k: v for (cam, k), v in subs.received.items() if cam == name and k != "motion"},
        }
    return cameras


def problems(r: SoakRun) -> list[str]:
    """Every assertion that failed, one line each."""
    m, s = r.monitor, r.stopped
    out = (
        r.problems
        + [f"unreadable checkpoint {x}" for x in m.checks.bad_checkpoints]
        + [f"unreadable bundle {x}" for x in m.checks.bad_bundles]
        + [f"device model {x}" for x in m.device_bad]
        + [f"left in /dev/shm: {x}" for x in s.leftover_shm]
        + [f"left in /tmp: {x}" for x in s.leftover_tmp]
        + [f"process {p} outlived the stop" for p in s.leftover_procs]
    )
    out += [f"not recovered: {e['kind']} ({e['detail']})" for e in r.events if e["injected"] and not e["recovered"]]
    if s.stop_code != 0:
        out.append(f"the final SIGTERM stop exited {s.stop_code}")
    return out
