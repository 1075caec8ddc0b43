"""The daemon's part in the split across machines (docs/protocol.md, "Training samples between
machines"): which extra child a role runs, and what `motionmask status` shows of it.

- rig (`motionmask run`, learner.enabled false, learner.remote set): the cameras as ever, plus
  the sender (motionmask/remote_send.py), which follows the ring buffer and sends its samples.
- learner (`motionmask learn`): no cameras; the receiver (motionmask/remote_learn.py) fills this
  daemon's ring buffer from the rigs, and the learner process trains on it with an appetite.
- all in one (`motionmask run` with learner.enabled): neither; nothing here runs.
"""

from __future__ import annotations

import os
import time
import weakref
from collections import deque
from collections.abc import Iterable
from typing import Any

from common.config import to_dict
from common.errors import UserError
from learner.appetite import Appetite
from motionmask.config import Config
from motionmask.remote_curve import check_keys
from motionmask.specs import ChildSpec, export_spec

SENDER, RECEIVER = "sender", "receiver"  # child names ('.'-free names a camera may not take: checked below)
_RATIO_WINDOW_S = 30.0
_windows: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # ring buffer -> recent (t, inserts, samples)


def remote_specs(
    cfg: Config, role: str, forward: str, buffer_name: str, log_level: str, pairs_name: str = ""
) -> list[ChildSpec]:
    common = {
        "transport": to_dict(cfg.learner.transport),
        "buffer_name": buffer_name,
        "buffer": to_dict(cfg.buffer),
        "pairs_name": pairs_name,
        "forward_endpoint": forward,
        "parent_pid": os.getpid(),
        "log_level": log_level,
    }
    if role == "learn":
        return [
            ChildSpec(
                RECEIVER,
                "receiver",
                "motionmask.remote_learn",
                {"name": RECEIVER, "listen": cfg.learner.listen, **common},
                cfg.learner.listen,
            )
        ]
    if cfg.learner.remote:
        ex = export_spec(cfg) if cfg.publish.enabled else None  # the cameras' student masks want bundles
        return [
            ChildSpec(
                SENDER,
                "sender",
                "motionmask.remote_send",
                {
                    "name": SENDER,
                    "remote": cfg.learner.remote,
                    "send_flow": cfg.learner.heads.segments.enabled,
                    "export_dir": ex["dir"] if ex else "",
                    **common,
                },
                cfg.learner.remote,
            )
        ]
    return []


def check(cfg: Config, role: str) -> None:
    """UserError, in one line, for what would make the extra child fail over and over: a camera
    named like it, a key file that is missing or unreadable."""
    if role == "learn":
        check_keys(cfg.learner.transport, "learner")
    elif cfg.learner.remote:
        clash = next((c.name for c in cfg.cameras if c.enabled and c.name == SENDER), None)
        if clash:
            raise UserError(f"a camera is named {clash!r}, the name of the sample sender process; rename it")
        check_keys(cfg.learner.transport, "rig")


def learn_payload(payload: dict[str, Any], cfg: Config) -> None:
    """The learner child of `motionmask learn`: one receiver beside it (for its thread count) and
    the appetite it keeps (learner_process waits while it is ahead)."""
    payload["cameras"] = 1
    t = cfg.learner.transport
    payload["appetite"] = {"samples_per_insert": t.samples_per_insert, "tolerance": t.tolerance}


def learn_pair_store(cfg: Config) -> tuple[int, float] | None:
    """(patch, store_mb) of the pair store of `motionmask learn` when its learner trains the
    embedding head on rigs' tracked pairs; None otherwise."""
    if not cfg.learner.heads.embedding.enabled:
        return None
    p = cfg.streamer.patches
    return p.size, p.store_mb


def remote_status(children: Iterable, cfg: Config, ring) -> dict[str, Any] | None:
    """The sender's or the receiver's section of `motionmask status --json` (None when neither runs),
    from the daemon's children (motionmask.daemon.Child) and its ring buffer."""
    children = list(children)
    for child in children:
        if child.spec.role == "sender":
            return dict(
                _base(child),
                role="rig",
                **{
                    k: child.report.get(k)
                    for k in (
                        "rig",
                        "remote",
                        "curve",
                        "connected",
                        "connects",
                        "sent",
                        "dropped",
                        "pairs_sent",
                        "pairs_dropped",
                        "bytes",
                        "bytes_per_s",
                        "samples_per_s",
                        "encode_ms",
                        "bundle",
                        "bundle_error",
                    )
                },
            )
        if child.spec.role == "receiver":
            r = child.report
            return dict(
                _base(child),
                role="learner",
                listen=r.get("listen") or child.spec.label,
                curve=r.get("curve"),
                rigs=r.get("rigs", {}),
                bad=r.get("bad", {}),
                bad_total=r.get("bad_total", 0),
                foreign_rigs=r.get("foreign_rigs", 0),
                appetite=_appetite(children, cfg, ring),
            )
    return None


def _base(child) -> dict[str, Any]:
    return {"state": child.state, "pid": child.pid, "restarts": child.restarts, "last_error": child.last_error}


def _appetite(children: list, cfg: Config, ring) -> dict[str, Any]:
    t = cfg.learner.transport
    tot = ring.totals()
    inserts, samples = tot["puts"], tot["samples"]
    window = _windows.setdefault(ring, deque())
    now = time.monotonic()
    window.append((now, inserts, samples))
    while len(window) > 2 and now - window[0][0] > _RATIO_WINDOW_S:
        window.popleft()
    (_, i0, s0) = window[0] if len(window) > 1 else (0.0, 0, 0)  # first look: since the start
    learner = next((c for c in children if c.spec.role == "learner"), None)
    return {
        "samples_per_insert": t.samples_per_insert,
        "tolerance": t.tolerance,
        "inserts": inserts,
        "samples": samples,
        "ratio": _round(Appetite.ratio(inserts, samples)),
        "recent_ratio": _round(Appetite.ratio(inserts - i0, samples - s0)),
        "learner_waits": (learner.report.get("appetite_waits") if learner else None) or 0,
    }


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 2)


def format_remote(r: dict[str, Any]) -> list[str]:
    """The lines `motionmask status` prints for a rig's sender or a learner's receiver."""
    state = (
        r.get("state", "?")
        + (f", restarts {r['restarts']}" if r.get("restarts") else "")
        + (f", last error: {r['last_error']}" if r.get("last_error") else "")
    )
    if r.get("role") == "rig":
        link = "connected" if r.get("connected") else "not connected"
        lines = [
            f"remote: samples to {r.get('remote')} as rig {r.get('rig')!r} "
            f"({link}{', curve' if r.get('curve') else ''}): "
            f"{state}, sent {r.get('sent') or 0}, dropped {r.get('dropped') or 0}, "
            f"{(r.get('samples_per_s') or 0):.1f} samples/s, {(r.get('bytes_per_s') or 0) / 1e3:.0f} kB/s, "
            f"encode {(r.get('encode_ms') or 0):.1f} ms/sample" + (f", bundle {r['bundle']}" if r.get("bundle") else "")
        ]
        return lines
    a = r.get("appetite") or {}
    spi = a.get("samples_per_insert") or 0
    target = f"target {spi:g} +- {a.get('tolerance', 0):g}" if spi else "no limit"
    ratio = "-" if a.get("recent_ratio") is None else f"{a['recent_ratio']:.2f}"
    lines = [
        f"remote: listening on {r.get('listen')}{' (curve)' if r.get('curve') else ''}: {state}, "
        f"{len(r.get('rigs') or {})} rig(s), bad messages {r.get('bad_total', 0)}"
        + (f" {r['bad']}" if r.get("bad") else ""),
        f"appetite: {ratio} samples per insert (last {_RATIO_WINDOW_S:.0f} s; {target}), "
        f"inserts {a.get('inserts', 0)}, drawn {a.get('samples', 0)}, learner waits {a.get('learner_waits', 0)}",
    ]
    head = ("RIG", "RECEIVED", "INSERTED", "DROPPED", "BAD", "SAMPLES/S", "KB/S", "B/SAMPLE", "LAST SEEN")
    rows = []
    now = time.time()
    for name, g in sorted((r.get("rigs") or {}).items()):
        seen = g.get("last_seen") or 0
        rows.append(
            (
                name,
                str(g.get("received", 0)),
                str(g.get("inserted", 0)),
                str(g.get("dropped", 0)),
                str(g.get("bad", 0)),
                f"{g.get('samples_per_s', 0):.1f}",
                f"{g.get('bytes_per_s', 0) / 1e3:.0f}",
                f"{g.get('bytes_per_sample', 0):.0f}",
                f"{max(0.0, now - seen):.1f}s ago" if seen else "-",
            )
        )
    if rows:
        widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]
        lines += ["  " + "  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in [head, *rows]]
    return lines


__all__ = [
    "RECEIVER",
    "SENDER",
    "check",
    "format_remote",
    "learn_pair_store",
    "learn_payload",
    "remote_specs",
    "remote_status",
]
