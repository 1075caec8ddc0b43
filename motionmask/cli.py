"""`motionmask` command line. Each command lives in motionmask/commands/<name>.py and exposes
`add_parser(subparsers)` and `run(args) -> int`. User mistakes become one line on stderr and a
non-zero exit, never a traceback."""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

from common.config import ConfigError
from common.errors import UserError
from motionmask import __version__

# in the order `motionmask --help` lists them: the daily ones first
COMMANDS: list[str] = ["run", "learn", "status", "console", "subscribe", "masks", "train", "predict", "export", "device", "synth", "keys"]

# What each command imports beyond the device role (`pip install motionmask`: numpy, ONNX Runtime,
# ZeroMQ, PyYAML, PyAV). In an install without them the command answers with ROLE_ERROR, one line.
_RIG = ("cv2", "skimage", "scipy")
_WEB = ("starlette", "uvicorn")
_LEARN = ("torch", "onnx", "onnxscript")
NEEDS: dict[str, tuple[str, ...]] = {
    "run": _RIG + _WEB, "learn": _RIG + _WEB + _LEARN, "console": _WEB, "subscribe": _RIG, "masks": _RIG,
    "train": _RIG + _LEARN, "export": _RIG + _LEARN, "synth": _RIG,
}  # device, predict, keys, status: the device role (predict --checkpoint and --overlay load more, see main)
ROLE_MODULES = frozenset(_RIG + _WEB + _LEARN)
ROLE_ERROR = "motionmask {command} needs the rig/learn role: pip install 'motionmask[all]'"

EPILOG = """examples:
  motionmask run --config configs/default.yaml     # the daemon on the bundled clip
  motionmask status                                # how it is doing
  motionmask masks clip.mp4 --out masks/ --overlay
  motionmask train synth/ --out runs/r1 --minutes 12
  motionmask synth --out synth/ --clips 4 --seed 0
run `motionmask COMMAND --help` for each command's options."""


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command; with `only`, every command is listed but only that one's
    module is imported (each imports its role's packages: `motionmask device` loads no streamer)."""
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
        if missing_role(name):  # listed, never imported: main() answers with ROLE_ERROR
            sub.add_parser(name, help="(not installed: needs the rig/learn role)", add_help=False)
            continue
        if only is not None and name != only:
            sub.add_parser(name, add_help=False)  # not the command being run: never parsed
            continue
        module = importlib.import_module(f"motionmask.commands.{name}")
        p = module.add_parser(sub)
        p.set_defaults(_run=module.run)
    return parser


def missing_role(command: str) -> bool:
    """Whether a package the command needs is not installed (looked up, not imported)."""
    return any(importlib.util.find_spec(m) is None for m in NEEDS.get(command, ()))


def _help_before(argv: list[str], command: str) -> bool:
    """`motionmask --help masks` prints the list of commands, which needs every one of them."""
    return any(a in ("-h", "--help") for a in argv[: argv.index(command)])


def setup_logging(level: str) -> None:
    from motionmask.journald import setup_logging as setup  # terminal lines, or journald's with priorities

    setup(level)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if a in COMMANDS), None)
    if command and missing_role(command):  # before argparse, so that `train --help` says it too
        print(ROLE_ERROR.format(command=command), file=sys.stderr)
        return 2
    parser = build_parser(command if command and not _help_before(argv, command) else None)
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
    except ModuleNotFoundError as e:
        # a device-role install asked for more (predict --checkpoint: torch; --overlay: OpenCV)
        if (e.name or "").split(".")[0] not in ROLE_MODULES:
            raise
        print(ROLE_ERROR.format(command=args.command), file=sys.stderr)
        return 2
    except OSError as e:
        # full disk, permissions: name the file and stop; partial outputs are never half-written
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        print(f"motionmask {args.command}: error: {e.strerror or e}{where}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
