"""`motionmask device --endpoint URL --dir DIR [--trusted-key FILE]`: keep a device's model on the
exporter's latest bundle: subscribe to announcements, pull in chunks, check the signature (with a
pinned key) and sha256, swap atomically, keep the previous bundle for rollback. ONNX Runtime
only: this command never loads torch."""

from __future__ import annotations

import argparse
import logging
import sys
import threading

from common.errors import UserError
from common.log import log_event
from motionmask.commands.signals import Terminated, signals_as_exceptions

logger = logging.getLogger(__name__)

EPILOG = """examples:
  motionmask device --endpoint tcp://exporter-host:5560 --dir /var/lib/motionmask/model \\
      --trusted-key /etc/motionmask/exporter.sign_pub                      # only bundles signed by it
  motionmask device --endpoint tcp://exporter-host:5560 --dir model/ --once    # pull if newer, exit
  motionmask device --dir model/ --rollback                                 # previous bundle back
  motionmask predict --model model/ camera:0 --out live/                    # what is in service

DIR keeps the layout of an exports folder: DIR/<version>/ (model.onnx, manifest.json),
DIR/LATEST (the bundle in service) and DIR/PREVIOUS (the one before, for --rollback). A new
bundle is pulled into a temp folder, every file checked against the announced sha256 and size,
loaded and run once with ONNX Runtime, and only then swapped in (LATEST rewritten atomically).
A torn or tampered transfer is rejected and retried (up to --attempts per version); a device
that goes offline mid-transfer reconnects and retries after --timeout, with backoff. Until a
new bundle is whole and checked, the previous one stays in service.

--trusted-key pins the exporter's public key (NAME.sign_pub of `motionmask keys DIR --signing`):
a bundle is installed only when its manifest is signed by that key, its sequence is above the
highest this device installed (kept in DIR/TRUST.json, so a replayed older bundle is refused
after a restart too) and it has not expired; nothing is downloaded beyond the signed lengths.
A refused bundle is logged once (event=bundle_rejected check=unsigned|wrong_key|bad_signature|
rollback|expired|oversized) and the bundle in service stays. Without --trusted-key bundles are
taken as before (sha256 against their own manifest) and the agent logs once that they are
unverified. See docs/signing.md.

--rollback puts DIR/PREVIOUS back in service and writes the version it rolled back from to
DIR/SKIP: an agent never pulls that version again (a newer one is pulled as usual). A bundle in
service that is damaged on disk is pulled again when the agent starts.

Runs until Ctrl-C or SIGTERM (exit 0). --once: exit 0 when up to date, 2 with the reason when
the pull failed every try. The announcements' address is asked from the server (same host as
--endpoint); --announce overrides it."""


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "device",
        help="keep a device's model on the exporter's latest bundle (pull, check, swap, rollback)",
        description="Follow an exporter's bundle announcements over ZeroMQ: pull each new bundle in "
        "chunks, check its sha256, swap it in atomically and keep the previous one for rollback.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--endpoint", metavar="URL", help="the exporter's bundle server, e.g. tcp://exporter-host:5560")
    p.add_argument("--dir", required=True, metavar="DIR", help="the device's model folder (created)")
    p.add_argument(
        "--trusted-key",
        metavar="FILE",
        help="the exporter's Ed25519 public key (NAME.sign_pub): "
        "refuse every bundle it did not sign (default: bundles unverified)",
    )
    p.add_argument("--announce", metavar="URL", help="announcement address (default: asked from the server)")
    p.add_argument("--once", action="store_true", help="pull the latest bundle if it is new, then exit")
    p.add_argument("--rollback", action="store_true", help="put DIR/PREVIOUS back in service and exit")
    p.add_argument(
        "--timeout",
        type=float,
        default=5.0,
        metavar="S",
        help="seconds without an answer before a request is retried on a fresh connection (default: 5)",
    )
    p.add_argument(
        "--retries",
        type=int,
        default=3,
        metavar="N",
        help="silent rounds in a row before a pull fails and waits for its backoff (default: 3)",
    )
    p.add_argument(
        "--attempts",
        type=int,
        default=3,
        metavar="N",
        help="failed pulls of one version (torn, "
        "tampered, unusable) before it is skipped; with --once, tries in all (default: 3)",
    )
    p.add_argument(
        "--poll",
        type=float,
        default=30.0,
        metavar="S",
        help="ask for the latest version this often, besides announcements (default: 30)",
    )
    p.add_argument(
        "--keep",
        type=int,
        default=2,
        metavar="N",
        help="bundles kept in DIR (default: 2, the one in service and the previous one)",
    )
    return p


def run(args: argparse.Namespace) -> int:
    from exporter.signing import TrustedKey
    from exporter.transfer import DeviceAgent, rollback_device

    if args.rollback:
        now, was = rollback_device(args.dir)
        print(f"motionmask device: rolled back to {now} (from {was or 'none'}) in {args.dir}", file=sys.stderr)
        return 0
    if not args.endpoint:
        raise UserError("--endpoint URL is required (the exporter's bundle server, e.g. tcp://exporter-host:5560)")
    cfg = _pull_config(args)
    trusted = TrustedKey.from_file(args.trusted_key) if args.trusted_key else None
    agent = DeviceAgent(
        args.endpoint, args.dir, cfg, announce=args.announce, on_install=_print_installed, trusted=trusted
    )
    stop = threading.Event()
    with signals_as_exceptions():
        try:
            if args.once:
                _pull_once(agent, stop)
                return 0
            log_event(logger, "device_start", endpoint=args.endpoint, dir=args.dir)
            agent.run(stop)
        except (KeyboardInterrupt, Terminated) as ex:
            stop.set()
            log_event(logger, "device_stop", signal="TERM" if isinstance(ex, Terminated) else "INT")
        except UserError as e:
            from exporter.transfer import in_service

            cur = in_service(agent.dest)
            raise UserError(f"{e}; {'still in service: ' + cur[0] if cur else 'no bundle in service yet'}") from None
    return 0


def _pull_config(args: argparse.Namespace):
    """The pull settings from the flags; a flag out of range is a one-line UserError naming it."""
    from exporter.transfer import PullConfig

    checks = [
        ("--timeout", args.timeout > 0),
        ("--retries", args.retries >= 0),
        ("--attempts", args.attempts >= 1),
        ("--poll", args.poll > 0),
        ("--keep", args.keep >= 2),
    ]
    for flag, ok in checks:
        if not ok:
            raise UserError(
                f"{flag} {getattr(args, flag[2:])}: out of range "
                f"({'>= 2: the one in service and the previous one' if flag == '--keep' else 'see --help'})"
            )
    return PullConfig(
        timeout_s=args.timeout,
        retries=args.retries,
        attempts=args.attempts,
        poll_s=args.poll,
        keep=args.keep,
        backoff_max_s=max(1.0, min(30.0, args.poll)),
    )


def _print_installed(done) -> None:
    print(
        f"motionmask device: installed {done.version} (step {done.step}, sha256 {done.sha256[:12]}, "
        f"{done.bytes / 2**20:.1f} MB in {done.seconds:.1f} s) -> {done.path}; "
        f"previous: {done.previous or 'none'}",
        file=sys.stderr,
    )


def _pull_once(agent, stop: threading.Event) -> None:
    """--once: pull if newer, else say what is in service."""
    from exporter.transfer import in_service

    if agent.run(stop, once=True) is None:
        cur = in_service(agent.dest)
        print(
            f"motionmask device: up to date ({cur[0] if cur else 'the exporter has no bundle yet'})",
            file=sys.stderr,
        )
