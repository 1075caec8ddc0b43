"""`motionmask run`: the daemon. One streamer process per camera, live masks on one endpoint, a
shared ring buffer of training samples, a control endpoint for `motionmask status`."""

from __future__ import annotations

import argparse
from pathlib import Path

from motionmask.config import load_config
from motionmask.daemon import run_daemon

EPILOG = """examples:
  motionmask run --config configs/default.yaml      # the bundled clip, looping: no camera needed
  motionmask run --config configs/rig.yaml          # a USB camera and an RTSP camera
  motionmask status                                 # in another terminal
  motionmask subscribe --topic mask.sample.motion   # the live masks
  motionmask run --config configs/remote-rig.yaml   # a rig whose learner runs elsewhere (`motionmask learn`):
                                                    # learner.enabled false, learner.remote tcp://HOST:5562

Runs until SIGINT (Ctrl-C) or SIGTERM, then stops every camera within daemon.shutdown_timeout_s
and exits 0. A camera that fails (unplugged, unreachable, crashed) restarts with backoff while the
others keep running. Exit status 2: a config or environment problem (a port in use, a typo in a
key, another daemon on the same learner.run_dir or control endpoint), said in one line.

As a systemd service (docs/motionmask.service, Type=notify): READY=1 once started, WATCHDOG=1
while cameras deliver frames, STOPPING=1 on shutdown; journald lines carry priorities."""


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "run",
        help="run the daemon: cameras -> live masks + training samples",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--config",
        type=Path,
        required=True,
        metavar="FILE",
        help="YAML config with a cameras: section (see configs/default.yaml, configs/rig.yaml)",
    )
    return p


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    return run_daemon(cfg, getattr(args, "log_level", "INFO"))
