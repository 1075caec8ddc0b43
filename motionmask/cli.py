"""`motionmask` command line. Each command lives in motionmask/commands/<name>.py and exposes
`add_parser(subparsers)` and `run(args) -> int`. User mistakes become one line on stderr and a
non-zero exit, never a traceback."""
from __future__ import annotations

import argparse
import importlib
import sys

from motionmask import __version__
from motionmask.config import ConfigError
from streamer.errors import UserError

# in the order `motionmask --help` lists them: the daily ones first
COMMANDS: list[str] = ["run", "learn", "status", "console", "subscribe", "masks", "train", "predict", "export", "device", "synth", "keys"]

EPILOG = """examples:
  motionmask run --config configs/default.yaml     # the daemon on the bundled clip
  motionmask status                                # how it is doing
  motionmask masks clip.mp4 --out masks/ --overlay
  motionmask train synth/ --out runs/r1 --minutes 12
  motionmask synth --out synth/ --clips 4 --seed 0
run `motionmask COMMAND --help` for each command's options."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="motionmask",
        description="Learn to segment what moves, by watching video.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"motionmask {__version__}")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"motionmask.commands.{name}")
        p = module.add_parser(sub)
        p.set_defaults(_run=module.run)
    return parser


def setup_logging(level: str) -> None:
    from motionmask.journald import setup_logging as setup  # terminal lines, or journald's with priorities

    setup(level)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    setup_logging(args.log_level)
    try:
        return int(args._run(args) or 0)
    except (UserError, ConfigError) as e:
        print(f"motionmask {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"motionmask {args.command}: interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        # full disk, permissions: name the file and stop; partial outputs are never half-written
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        print(f"motionmask {args.command}: error: {e.strerror or e}{where}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
