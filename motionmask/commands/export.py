"""`motionmask export --checkpoint CKPT --out DIR`: a checkpoint -> a verified ONNX bundle
(DIR/<version>/model.onnx + manifest.json, DIR/LATEST); `--serve` then serves DIR to devices."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import re
import sys
import threading
from pathlib import Path

from common.errors import UserError
from common.log import log_event
from motionmask.commands.options import info_logs
from motionmask.commands.signals import Terminated, signals_as_exceptions
from motionmask.config import load_config

logger = logging.getLogger(__name__)

EPILOG = """examples:
  motionmask export --checkpoint runs/r1/checkpoints/last.pt --out exports/
  motionmask export --checkpoint runs/r1/checkpoints/last.pt --out exports/ --size 320x256 --frames clip.mp4
  motionmask export --out exports/ --serve --endpoint tcp://*:5560 --announce tcp://*:5561
  motionmask export --checkpoint last.pt --out exports/ --signing-key keys/exporter.sign_key   # signed
  motionmask predict --model exports/ clip.mp4 --out pred/            # ONNX Runtime, no torch

writes DIR/<version>/model.onnx (one self-contained file: uint8 RGB N x H x W x 3 `image` in,
`mask` N x H x W foreground probability out; normalisation and sigmoid inside; dynamic batch)
and DIR/<version>/manifest.json (sha256, input/output spec, preprocessing, source checkpoint and
step, parity, latency), then points DIR/LATEST at it (DIR/PREVIOUS at the one before) and keeps
the newest export.keep bundles. Published only after onnx.checker, an ONNX Runtime CPU session,
parity with PyTorch on real frames (<= export.parity_tolerance) and a latency measurement pass;
otherwise nothing changes and the reason is printed (exit 2). The verified model is also
quantized to 8 bits (DIR/<version>/model.int8.onnx, about twice as fast on a CPU, calibrated on
the --frames): it ships when its mask agrees with the fp32 one (IoU >= export.int8_min_iou), else
the bundle goes out with the fp32 model alone and the manifest's int8 says why. --no-int8: never.

--signing-key (or export.signing_key): sign the manifest with that Ed25519 key (manifest.sig;
`motionmask keys DIR --signing` makes one); devices started with --trusted-key take only
bundles it signed. Without a key the bundle is unsigned (docs/signing.md).

--serve: serve DIR to devices until Ctrl-C or SIGTERM (exit 0), `motionmask device --endpoint
URL --dir DIR` on each device: new versions are announced on --announce, chunks served on
--endpoint. Loopback by default; tcp://*:PORT listens on every interface."""


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "export",
        help="export a checkpoint as a verified ONNX bundle; serve bundles to devices",
        description="Export a trained mask ConvNet as a versioned, verified, self-contained ONNX bundle "
        "for ONNX Runtime, and optionally serve the exports folder to devices over ZeroMQ.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--checkpoint", metavar="CKPT", help="a checkpoint of `motionmask train`, e.g. RUN/checkpoints/last.pt"
    )
    p.add_argument("--out", metavar="DIR", help="exports folder (created; default: export.dir of the config, exports/)")
    p.add_argument("--config", metavar="FILE", help="YAML config: the export: section (default: built-in)")
    p.add_argument(
        "--size",
        metavar="WxH",
        help="input size of the model, e.g. 320x256 or 224 (multiples of 32; "
        "default: export.width/height, else the size the checkpoint trained at)",
    )
    p.add_argument(
        "--frames",
        metavar="INPUT",
        help="video or image folder whose frames the parity check uses "
        "(default: photographs shipped with scikit-image)",
    )
    p.add_argument(
        "--eval",
        metavar="CLIPS",
        help="also score the checkpoint on a `motionmask synth` folder; the IoU goes into the manifest's quality",
    )
    p.add_argument(
        "--signing-key",
        metavar="FILE",
        help="Ed25519 private key that signs the bundle (default: export.signing_key; none: unsigned)",
    )
    p.add_argument("--keep", metavar="N", type=int, help="bundles kept in DIR (default: export.keep)")
    p.add_argument("--no-int8", action="store_true", help="no 8-bit model in the bundle (default: export.int8)")
    p.add_argument(
        "--serve", action="store_true", help="serve DIR to devices until Ctrl-C (after exporting, if --checkpoint)"
    )
    p.add_argument(
        "--endpoint", metavar="URL", help="--serve: chunk requests (default: export.endpoint, tcp://127.0.0.1:5560)"
    )
    p.add_argument(
        "--announce",
        metavar="URL",
        help="--serve: announcements (default: export.announce_endpoint, tcp://127.0.0.1:5561)",
    )
    p.add_argument("--quiet", action="store_true", help="no info logs; warnings and the summary remain")
    return p


def parse_size(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+))?\s*", text or "")
    if not m:
        raise UserError(f"--size {text!r}: expected WxH such as 320x256, or one number for a square")
    w = int(m.group(1))
    h = int(m.group(2) or w)
    if not (32 <= w <= 4096 and 32 <= h <= 4096):
        raise UserError(f"--size {text}: width and height must be between 32 and 4096")
    return w, h


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    e = cfg.export
    if args.size:
        e.width, e.height = parse_size(args.size)
    if args.signing_key:
        e.signing_key = args.signing_key
    if e.signing_key and args.checkpoint:
        from exporter.signing import Signer

        Signer.from_file(
            e.signing_key, "--signing-key" if args.signing_key else "export.signing_key"
        )  # now, not after the export
    if args.keep is not None:
        if args.keep < 1:
            raise UserError(f"--keep {args.keep}: must be >= 1")
        e.keep = args.keep
    if not args.checkpoint and not args.serve:
        raise UserError("nothing to do: give --checkpoint CKPT to export, or --serve to serve an exports folder")
    out = Path(args.out or e.dir)
    with info_logs(not args.quiet), signals_as_exceptions():
        if args.checkpoint:
            _export(args, cfg, out)
        if args.serve:
            return _serve(args, cfg, out)
    return 0


def _export(args: argparse.Namespace, cfg, out: Path) -> None:
    from exporter.bundle import check_exports_dir
    from exporter.export import export_checkpoint, load_frames

    check_exports_dir(out)  # fail in milliseconds, before torch loads
    frames = load_frames(args.frames, cfg.export.parity_frames) if args.frames else None
    quality = _evaluate(args.checkpoint, args.eval) if args.eval else None
    ecfg = dataclasses.replace(cfg.export, int8=False) if args.no_int8 else cfg.export
    r = export_checkpoint(args.checkpoint, out, ecfg, frames=frames, quality=quality)
    m = r.manifest
    q = m.get("int8")
    int8 = (
        f"; 8-bit: {q['latency']['ms_median']:.2f} ms/frame, mask IoU with fp32 {q['agreement'].get('mask_iou', 1):.3f}"
        if q and "latency" in q
        else f"; 8-bit left out: {q['skipped']}"
        if q
        else ""
    )
    arch = m["source"].get("arch") or {}
    inp = m["input"]
    print(
        f"motionmask export: published {r.version} ({arch.get('backbone', '?')} {inp['width']}x{inp['height']} -> "
        f"{', '.join(m['heads'])}, opset {m['opset']}, {m['files']['model.onnx']['bytes'] / 2**20:.1f} MB, step "
        f"{m['source']['step']}; parity {m['parity']['max_abs_diff']:.1g} <= {m['parity']['tolerance']:g}, "
        f"{m['latency']['ms_median']:.2f} ms/frame on 1 CPU thread; export {r.timings['export']:.1f} s + "
        f"verify {r.timings['verify']:.1f} s{int8}) -> {r.path}; LATEST = {r.version}"
        f"{f' (previous {r.previous})' if r.previous else ''}",
        file=sys.stderr,
    )


def _evaluate(checkpoint: str, clips: str) -> dict:
    from learner.evaluate import evaluate_student

    res = evaluate_student(checkpoint, clips, device="cpu")
    return {
        "clips": clips,
        "student_iou": res["student"]["iou"],
        "teacher_iou": res["teacher"]["iou"],
        "student_precision": res["student"]["precision"],
        "student_recall": res["student"]["recall"],
        "frames": res["student"]["frames"],
    }


def _serve(args: argparse.Namespace, cfg, out: Path) -> int:
    from exporter.bundle import check_exports_dir, read_pointer
    from exporter.transfer import BundleServer

    e = cfg.export
    check_exports_dir(out)
    server = BundleServer(
        out,
        args.endpoint or e.endpoint,
        args.announce or e.announce_endpoint,
        announce_interval_s=e.announce_interval_s,
        rate_limit_mbps=e.rate_limit_mbps,
    )
    stop = threading.Event()
    with server:
        print(
            f"motionmask export: serving {out} (LATEST {read_pointer(out) or 'none yet'}) on {server.endpoint}, "
            f"announcing on {server.announce_endpoint}; Ctrl-C stops",
            file=sys.stderr,
        )
        try:
            while not stop.wait(0.5):
                pass
        except (KeyboardInterrupt, Terminated) as ex:  # the way a service stops: exit 0, as `motionmask run`
            log_event(
                logger,
                "serve_stop",
                signal="TERM" if isinstance(ex, Terminated) else "INT",
                chunks=server.stats["chunks"],
                requests=server.stats["requests"],
            )
    return 0
