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

# in the order `motionmask --help` lists them, the daily ones first, with the line it shows for each
# (the same as each command's add_parser, which tests/test_cli_help.py checks): listing the
# commands imports none of them, and a command imports only its own module
COMMANDS: dict[str, str] = {
    "run": "run the daemon: cameras -> live masks + training samples",
    "learn": "the learner role: train on samples that rigs send over the network",
    "status": "per-camera fps, frames, kept/pruned, drops and the learner of a running daemon",
    "console": "the web console for a daemon reached over its ZeroMQ endpoints",
    "subscribe": "print and save the live masks a daemon publishes",
    "masks": "compute motion masks of a video into a folder",
    "train": "train the mask ConvNet on videos (offline), resumable",
    "predict": "masks of a video from a trained ConvNet (single frames), as `masks` writes them",
    "export": "export a checkpoint as a verified ONNX bundle; serve bundles to devices",
    "device": "keep a device's model on the exporter's latest bundle (pull, check, swap, rollback)",
    "synth": "generate synthetic clips with exact motion masks (fixture and benchmark)",
    "keys": "create CurveZMQ key files for encrypted, authenticated masks",
}

# What each command imports beyond the device role (`pip install motionmask`: numpy, ONNX Runtime,
# ZeroMQ, PyYAML, PyAV). In an install without them the command answers with ROLE_ERROR, one line.
_RIG = ("cv2", "skimage", "scipy")
_WEB = ("starlette", "uvicorn")
_LEARN = ("torch", "onnx", "onnxscript")
NEEDS: dict[str, tuple[str, ...]] = {
    "run": _RIG + _WEB,
    "learn": _RIG + _WEB + _LEARN,
    "console": _WEB,
    "subscribe": _RIG,
    "masks": _RIG,
    "train": _RIG + _LEARN,
    "export": _RIG + _LEARN,
    "synth": _RIG,
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


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Every command listed; only `command`'s module is imported and parses its options (each
    imports its role's packages: `motionmask --help` and `motionmask device` load no streamer)."""
    parser = argparse.ArgumentParser(
        prog="motionmask",
        description="Learn to segment what moves, by watching video.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"motionmask {__version__}")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, summary in COMMANDS.items():
        if missing_role(name):  # listed, never imported: main() answers with ROLE_ERROR
            sub.add_parser(name, help="(not installed: needs the rig/learn role)", add_help=False)
            continue
        if name != command:  # listed, not imported: not the command being run
            sub.add_parser(name, help=summary, add_help=False)
            continue
        module = importlib.import_module(f"motionmask.commands.{name}")
        p = module.add_parser(sub)
        p.set_defaults(_run=module.run)
    return parser


def missing_role(command: str) -> bool:
    """Whether a package the command needs is not installed (looked up, not imported)."""
    return any(importlib.util.find_spec(m) is None for m in NEEDS.get(command, ()))


def setup_logging(level: str) -> None:
    from motionmask.journald import setup_logging as setup  # terminal lines, or journald's with priorities

    setup(level)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if a in COMMANDS), None)
    if command and missing_role(command):  # before argparse, so that `train --help` says it too
        print(ROLE_ERROR.format(command=command), file=sys.stderr)
        return 2
    parser = build_parser(command)
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
