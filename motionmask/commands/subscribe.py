"""`motionmask subscribe`: watch (and optionally save) the live masks a daemon publishes."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common.atomic import write_bytes
from common.errors import UserError
from motionmask.client import DEFAULT_ENDPOINT, MaskSubscriber
from streamer.live import protocol
from streamer.png import write_png

EPILOG = f"""examples:
  motionmask subscribe                                   # every mask from {DEFAULT_ENDPOINT}
  motionmask subscribe --topic mask.cam0.trimap --count 100 --out saved/
  motionmask subscribe --endpoint tcp://127.0.0.1:5557 --latest --topic mask.cam0.motion
  motionmask subscribe --endpoint tcp://robot:5555 --curve-server-key keys/server.key \\
      --curve-secret-file keys/laptop.key_secret

One line per mask on stdout: camera, kind, frame, shot, size, latency_ms (capture to arrival,
same clock: accurate on one host, as good as NTP across hosts). Saved masks go to
DIR/<camera>/<kind>/<frame:06d>.png. Exit status: 0 when --count masks arrived (or, without
--count, when at least one did), 1 when --timeout ended the wait first. See docs/protocol.md."""


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "subscribe",
        help="print and save the live masks a daemon publishes",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--endpoint",
        default=DEFAULT_ENDPOINT,
        help=f"publisher endpoint (default {DEFAULT_ENDPOINT}; with --latest, its latest_endpoint)",
    )
    p.add_argument(
        "--topic",
        action="append",
        metavar="PREFIX",
        help="topic prefix, repeatable: mask. (all, default), mask.cam0., mask.cam0.trimap",
    )
    p.add_argument("--out", type=Path, metavar="DIR", help="save each mask as DIR/<camera>/<kind>/<frame>.png")
    p.add_argument("--count", type=int, default=0, metavar="N", help="stop after N masks (default: never)")
    p.add_argument(
        "--timeout",
        type=float,
        default=0.0,
        metavar="S",
        help="stop when no mask has arrived for S seconds (default: wait forever)",
    )
    p.add_argument(
        "--latest",
        action="store_true",
        help="keep only the newest mask (never lag); needs the publisher's latest_endpoint",
    )
    p.add_argument("--curve-server-key", metavar="FILE", help="publisher's public certificate (server.key)")
    p.add_argument(
        "--curve-secret-file",
        metavar="FILE",
        help="this client's secret certificate (from `motionmask keys`); default: a throwaway key",
    )
    p.add_argument("--quiet", action="store_true", help="no line per mask, only the summary")
    return p


def _save(out: Path, header: dict, payload: bytes, mask, made: set[Path]) -> None:
    d = out / protocol.topic_token(header["camera"]) / protocol.topic_token(header["kind"])
    if d not in made:
        d.mkdir(parents=True, exist_ok=True)
        made.add(d)
    path = d / f"{header['frame']:06d}.png"
    if header["encoding"] == "png":
        write_bytes(path, payload)  # already a checked PNG: no need to re-encode
    else:
        write_png(path, mask)


def run(args: argparse.Namespace) -> int:
    if args.count < 0:
        raise UserError(f"--count must be >= 0, got {args.count}")
    if args.timeout < 0:
        raise UserError(f"--timeout must be >= 0, got {args.timeout}")
    topics = args.topic or ["mask."]
    timeout = args.timeout or None
    n = 0
    made: set[Path] = set()
    with MaskSubscriber(
        args.endpoint,
        topics,
        latest=args.latest,
        curve_server_key=args.curve_server_key,
        curve_secret_file=args.curve_secret_file,
    ) as sub:
        print(
            f"subscribed to {args.endpoint} topics {','.join(topics)}{' (latest only)' if args.latest else ''}",
            file=sys.stderr,
            flush=True,
        )
        try:
            while not args.count or n < args.count:
                got = sub.recv_raw(timeout)
                if got is None:
                    break
                header, mask, payload = got
                if args.out:
                    _save(args.out, header, payload, mask, made)
                n += 1
                if not args.quiet:
                    latency_ms = (header["recv_ns"] - header["capture_ns"]) / 1e6
                    print(
                        f"camera={header['camera']} kind={header['kind']} frame={header['frame']} "
                        f"shot={header['shot']} size={header['width']}x{header['height']} "
                        f"latency_ms={latency_ms:.1f}",
                        flush=True,
                    )
        finally:
            s = sub.stats()
            print(
                f"received {s['received']}, rejected {s['rejected']}, missed {s['missed']}", file=sys.stderr, flush=True
            )
    if args.count and n < args.count:
        print(
            f"motionmask subscribe: got {n} of {args.count} masks before --timeout {args.timeout:g}s", file=sys.stderr
        )
        return 1
    if not n:
        print(f"motionmask subscribe: no mask from {args.endpoint} within --timeout {args.timeout:g}s", file=sys.stderr)
        return 1
    return 0
