"""`motionmask console`: the web console of a daemon that runs elsewhere (or whose own console
is off), from its ZeroMQ endpoints alone: status from daemon.control_endpoint, masks and frames
from the publish endpoint its status names. The same page `motionmask run` serves."""

from __future__ import annotations

import argparse
import logging

from common.errors import UserError
from common.log import log_event
from motionmask.control import DEFAULT_ENDPOINT
from motionmask.web.config import WebConfig, is_loopback

log = logging.getLogger("motionmask.web")

EPILOG = f"""examples:
  motionmask console                                        # the daemon at {DEFAULT_ENDPOINT}, on http://127.0.0.1:8081
  motionmask console --endpoint tcp://robot:5556 --port 8090
  motionmask console --endpoint tcp://robot:5556 --masks tcp://robot:5555 --exports /mnt/robot/exports
  motionmask console --host 0.0.0.0 --token "$(openssl rand -hex 16)"   # reachable from other machines

The masks endpoint defaults to the daemon's publish.endpoint as its status names it (a wildcard or
loopback host there is replaced by the host of --endpoint). Learner curves come from train.jsonl
when --run-dir (default: the daemon's learner.run_dir) is readable here, else from the status
samples since this console started. Exit status 2: a port in use, a bind without --token, a bad
endpoint (one line)."""


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "console",
        help="the web console for a daemon reached over its ZeroMQ endpoints",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--endpoint",
        default=DEFAULT_ENDPOINT,
        help=f"the daemon's daemon.control_endpoint (default {DEFAULT_ENDPOINT})",
    )
    p.add_argument("--masks", default="", metavar="URL", help="its publish.endpoint (default: from its status)")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1; others need --token)")
    p.add_argument("--port", type=int, default=8081, help="port to serve on (default 8081; 0 = any free port)")
    p.add_argument("--token", default="", help="required from browsers and scripts; needed to serve beyond loopback")
    p.add_argument("--run-dir", default="", metavar="DIR", help="the learner's run folder, if readable here")
    p.add_argument("--exports", default="", metavar="DIR", help="the exports folder, if readable here")
    p.add_argument(
        "--interval", type=float, default=1.0, metavar="S", help="ask for the status every S seconds (default 1)"
    )
    return p


def run(args: argparse.Namespace) -> int:
    if "://" not in args.endpoint:
        raise UserError(f"--endpoint {args.endpoint!r} is not a ZeroMQ endpoint; use e.g. {DEFAULT_ENDPOINT}")
    cfg = WebConfig(host=args.host, port=args.port, token=args.token, status_interval_s=args.interval)
    try:
        cfg.validate()
    except ValueError as e:
        msg = str(e).replace("web.token", "--token").replace("web.host", "--host")
        raise UserError(msg.replace("keep --host: 127.0.0.1", "keep --host 127.0.0.1")) from None
    from motionmask.web.app import build_app
    from motionmask.web.feed import DaemonFeed
    from motionmask.web.server import listen, serve, url_of

    sock = listen(args.host, args.port, key="--port")
    url = url_of(sock)
    feed = DaemonFeed(
        args.endpoint, args.masks or None, args.run_dir or None, args.exports or None, interval_s=args.interval
    ).start()
    app = build_app(feed, url, args.token, args.interval)
    log_event(
        log,
        "console_ready",
        url=url,
        daemon=feed.control,
        note="token required" if args.token else ("loopback only" if is_loopback(args.host) else ""),
    )
    try:
        serve(app, sock)
    finally:
        feed.close()
        sock.close()
    return 0
