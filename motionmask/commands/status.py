"""`motionmask status`: ask a running daemon how its cameras are doing."""

from __future__ import annotations

import argparse
import json
import sys

from common.errors import UserError
from motionmask.control import DEFAULT_ENDPOINT, ControlUnavailable, request

EPILOG = f"""examples:
  motionmask status                                   # the daemon at {DEFAULT_ENDPOINT}
  motionmask status --endpoint tcp://robot:5556 --timeout 5
  motionmask status --json | jq '.cameras[] | .fps'

Exit status: 0 the daemon answered, 1 nothing answered within --timeout (is `motionmask run`
running? is daemon.control_endpoint the same?), 2 a usage error."""


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "status",
        help="per-camera fps, frames, kept/pruned, drops and the learner of a running daemon",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--endpoint",
        default=DEFAULT_ENDPOINT,
        help=f"the daemon's daemon.control_endpoint (default {DEFAULT_ENDPOINT})",
    )
    p.add_argument("--json", action="store_true", help="print the daemon's whole reply as JSON")
    p.add_argument(
        "--timeout", type=float, default=2.0, metavar="S", help="give up after S seconds without an answer (default 2)"
    )
    return p


def _duration(s: float) -> str:
    s = int(s)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def format_status(st: dict) -> str:
    pub, buf = st.get("publisher", {}), st.get("buffer", {})
    lines = [
        f"motionmask daemon pid {st.get('pid')} (v{st.get('version', '?')}), up {_duration(st.get('uptime_s', 0))}"
        f"{', stopping' if st.get('stopping') else ''}"
    ]
    if pub.get("endpoint"):
        lines.append(f"masks:  {pub['endpoint']}  sent {pub.get('sent', 0)}, dropped {pub.get('dropped', 0)}")
    else:
        lines.append("masks:  publishing off (publish.enabled: false)")
    web = st.get("web")
    if web is not None:
        lines.append(format_web(web))
    if buf:
        lines.append(
            f"buffer: {buf.get('name')}  {buf.get('fill', 0)}/{buf.get('capacity', 0)} samples "
            f"({100 * buf.get('fill_fraction', 0):.0f}%), puts {buf.get('puts', 0)}, "
            f"drops {buf.get('drops_total', 0)}, drawn {buf.get('samples_drawn', 0)}"
        )
    pairs = st.get("pairs")
    if pairs:
        lines.append(
            f"pairs:  {pairs.get('fill', 0)}/{pairs.get('capacity', 0)} tracked-patch pairs "
            f"({100 * pairs.get('fill_fraction', 0):.0f}%), puts {pairs.get('puts', 0)}, "
            f"drops {pairs.get('drops_total', 0)}, drawn {pairs.get('pairs_drawn', 0)}"
        )
    lines += _camera_table(st.get("cameras", {}), buf.get("by_camera", {}))
    if st.get("learner"):
        lines.append(format_learner(st["learner"]))
    if st.get("remote"):  # a rig's sender or a learner's receiver (motionmask/remote_roles.py)
        from motionmask.remote_roles import format_remote

        lines += format_remote(st["remote"])
    gate, served = (st.get("learner") or {}).get("export"), st.get("bundle_server")
    if gate or served:
        lines.append(format_exports(gate, served))
    for w in st.get("warnings") or []:
        lines.append(f"warning: {w.get('key')}: {w.get('text')}")
    return "\n".join(lines)


def _camera_table(cameras: dict, by_cam: dict) -> list[str]:
    """One row per camera under a header; no lines at all without cameras (`motionmask learn`)."""
    head = (
        "CAMERA",
        "STATE",
        "FPS",
        "FRAMES",
        "SHOTS",
        "KEPT",
        "PRUNED",
        "DROPS",
        "BUFFER",
        "RESTARTS",
        "STUDENT",
        "LAST ERROR",
    )
    rows = [_camera_row(name, c, by_cam.get(name, 0)) for name, c in cameras.items()]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head) - 1)]
    return ["  ".join(v.ljust(w) for v, w in zip(r, widths)) + "  " + r[-1] for r in ([head, *rows] if rows else [])]


def _camera_row(name: str, c: dict, buffered: int) -> tuple[str, ...]:
    state = c["state"]
    if state == "restarting" and c.get("restart_in_s") is not None:
        state += f" ({c['restart_in_s']:g}s)"
    return (
        name,
        state,
        f"{c.get('fps', 0):.1f}",
        str(c.get("frames", 0)),
        str(c.get("shots", 0)),
        str(c.get("kept", 0)),
        str(c.get("pruned", 0)),
        str(c.get("drops", 0)),
        str(buffered),
        str(c.get("restarts", 0)),
        _student(c.get("student")),
        c.get("last_error") or "-",
    )


def _student(s: dict | None) -> str:
    """The bundle a camera runs for its live masks: "s0002004 int8 /2" (step, precision, every Nth frame)."""
    if not s:
        return "-"
    step = str(s.get("version", "?")).rsplit("-", 1)[-1]
    return f"{step} {s.get('precision', '?')} /{s.get('every', '?')}"


def format_exports(gate: dict | None, served: dict | None) -> str:
    """One line: the export gate's last decision and why, and what the bundle server handed out."""
    parts = []
    if gate:
        last = (gate.get("decisions") or [None])[-1]
        if last:
            parts.append(f"last at step {last['step']} {last['outcome']}: {last['reason']}")
        elif gate.get("reason"):
            parts.append(f"{gate.get('state')}: {gate['reason']}")
        if "shipped" in gate:
            parts.append(f"shipped {gate['shipped']}, skipped {gate['skipped']}, failed {gate['failed']}")
    if served:
        devices = served.get("devices") or []
        parts.append(
            f"served at {served.get('endpoint')}: {served.get('pulls_total', 0)} pulls by "
            f"{len(devices)} device{'' if len(devices) == 1 else 's'}"
            + (f" (last {devices[0]['device']} took {devices[0]['version']})" if devices else "")
        )
    return "export: " + "; ".join(parts)


def format_web(w: dict) -> str:
    """`web:    http://127.0.0.1:8080  running, 1 viewer` or `web:    off (why)`."""
    if not w.get("url"):
        return f"web:    {w.get('state', 'off')}"
    n = w.get("clients", 0)
    extra = f", restarts {w['restarts']}, last error: {w['last_error']}" if w.get("restarts") else ""
    return f"web:    {w['url']}  {w.get('state')}, {n} viewer{'' if n == 1 else 's'}{extra}"


def format_learner(c: dict) -> str:
    """One line: `learner: running (training) pid 12 on cpu x1, step 1200, loss 0.231, ...`."""
    state = c["state"]
    if state == "restarting" and c.get("restart_in_s") is not None:
        state += f" ({c['restart_in_s']:g}s)"
    elif state == "running" and c.get("activity") and c["activity"] != "running":
        state += f" ({c['activity']})"
    parts = [f"learner: {state}"]
    if c.get("pid"):
        parts[0] += f" pid {c['pid']} on {c.get('device') or '?'} x{c.get('threads') or '?'}"
    loss = c.get("loss")
    parts.append(
        f"step {c.get('step') or 0}, loss {'-' if loss is None else f'{loss:.3f}'}, "
        f"{c.get('crops_per_s') or 0:.0f} crops/s"
    )
    ck = c.get("checkpoint_step")
    parts.append(
        "no checkpoint yet" if ck is None else f"checkpoint step {ck} ({_duration(c.get('checkpoint_age_s') or 0)} ago)"
    )
    parts.append(f"bootstrap round {c.get('bootstrap_round') or 0}")
    parts.append(f"restarts {c.get('restarts', 0)}")
    if c.get("last_error"):
        parts.append(f"last error: {c['last_error']}")
    return ", ".join(parts)


def run(args: argparse.Namespace) -> int:
    if args.timeout <= 0:
        raise UserError(f"--timeout must be > 0, got {args.timeout}")
    try:
        reply = request(args.endpoint, "status", timeout=args.timeout)
    except ControlUnavailable:
        print(
            f"motionmask status: no daemon answering at {args.endpoint}: is `motionmask run` running?", file=sys.stderr
        )
        return 1
    if not reply.get("ok"):
        raise UserError(f"{args.endpoint} refused the request: {reply.get('error', reply)}")
    print(json.dumps(reply, indent=2) if args.json else describe(args.endpoint, reply))
    return 0


def describe(endpoint: str, reply: dict) -> str:
    """format_status, or a UserError when the reply is not a status this version can read (a
    daemon of another version, or something else answering on the port): never a traceback."""
    try:
        return format_status(reply)
    except (KeyError, TypeError, AttributeError, ValueError, OverflowError) as e:
        raise UserError(
            f"{endpoint} answered a status this motionmask cannot read ({type(e).__name__}: "
            f"{str(e)[:80]}); another version? `motionmask status --json` shows it whole"
        ) from None
