"""Typed configuration of the exporter (the `export:` section of the YAML config); defaults here.

The first block is what one export does (`motionmask export` and the daemon alike); the second
is when the daemon exports; the third is how bundles are served to devices.
"""

from __future__ import annotations

from dataclasses import dataclass

from common.config import check
from exporter.bundle import PRECISIONS

MIN_OPSET, MAX_OPSET = 18, 23  # torch's dynamo exporter starts at 18; 23 is the newest onnx 1.18+ knows


@dataclass
class ExportConfig:
    width: int = 0  # input W x H of the exported model (fixed per bundle); 0 = the resolution the checkpoint
    height: int = 0  # ... trained at (the ring-buffer slot, padded up to a multiple of 32), else 224 x 224
    opset: int = 18  # ai.onnx opset: 18 runs on ONNX Runtime >= 1.14, TensorRT 8.6+, OpenVINO 2023+
    keep: int = 5  # bundles kept in the exports folder (LATEST's always among them)
    parity_tolerance: float = 1e-4  # max |ONNX Runtime - PyTorch| of any output on the parity frames (fp32)
    parity_frames: int = 8  # real frames compared (batch 1 each, and all of them as one batch)
    latency_runs: int = 20  # timed runs (after warm-up) of the latency measurement
    max_latency_ms: float = 0.0  # per frame on one CPU thread, batch 1; a slower model is not published; 0 = no limit
    # every bundle also carries the model in 8 bits (model.int8.onnx, exporter/quantize.py), about
    # twice as fast on a CPU; left out of a bundle whose 8-bit mask IoU with the fp32 one is lower
    int8: bool = True
    int8_min_iou: float = 0.9
    # Ed25519 private key (NAME.sign_key of `motionmask keys DIR --signing`, mode 0600) that signs
    # every bundle's manifest (docs/signing.md). "" = bundles go out unsigned: devices started with
    # --trusted-key refuse them, devices without one take them as before and log once that they
    # are unverified.
    signing_key: str = ""
    signature_days: float = 30.0  # a signed bundle expires this long after export; devices refuse it after
    # the daemon: export every N steps or minutes, whichever comes first, and only a model that
    # beats the last export on held-back buffer samples
    enabled: bool = False  # the daemon exports (learner), serves bundles, and cameras publish `student` masks
    student_every: int = 2  # a camera runs the latest bundle on every Nth frame (protects its fps); 0 = never
    fused: bool = (
        True  # cameras publish kind `fused` every frame (motionmask/fuse.py), the student carried along the flow
    )
    fuse_min_student: float = 0.5  # the student marks a pixel of the fused mask alone from this probability
    # which of a bundle's models a camera runs: auto = the 8-bit one where the bundle has it, else fp32
    student_precision: str = "auto"
    dir: str = "exports"  # exports folder (relative: to the working directory)
    every_steps: int = 2000  # 0 = off
    every_minutes: float = 10.0  # 0 = off
    # the gate's holdout follows the scene (motionmask/holdout.py): one block of holdout_block
    # consecutive buffer samples in every holdout_every is never trained on, and the gate scores
    # models on the newest holdout_samples of those, refreshed before each decision
    holdout_samples: int = 64
    holdout_every: int = 10  # 1 sample in this many is held out of training (blocks of holdout_block)
    holdout_block: int = 8  # neighbouring frames are near copies: they are held out together
    # bundles to devices (`motionmask device --endpoint ...`)
    serve: bool = True  # the daemon runs a BundleServer for its exports folder
    endpoint: str = "tcp://127.0.0.1:5560"  # ROUTER: devices ask for the latest version and its chunks here
    announce_endpoint: str = "tcp://127.0.0.1:5561"  # PUB: a new version is announced here at once
    announce_interval_s: float = 5.0  # ... and again this often, for devices that were away
    chunk_kb: int = 256  # transfer chunk size
    rate_limit_mbps: float = 0.0  # cap on the bytes served per second (all devices together), 0 = none

    def validate(self) -> None:
        """Raise ValueError naming the key for values no type check catches."""
        checks = [
            ("width", self.width == 0 or 32 <= self.width <= 4096, "0 (auto) or between 32 and 4096"),
            ("height", self.height == 0 or 32 <= self.height <= 4096, "0 (auto) or between 32 and 4096"),
            ("height", (self.width == 0) == (self.height == 0), "0 exactly when export.width is 0"),
            ("opset", MIN_OPSET <= self.opset <= MAX_OPSET, f"between {MIN_OPSET} and {MAX_OPSET}"),
            ("keep", self.keep >= 1, ">= 1"),
            ("parity_tolerance", 0 < self.parity_tolerance <= 0.1, "in (0, 0.1]"),
            ("parity_frames", 1 <= self.parity_frames <= 256, "between 1 and 256"),
            ("latency_runs", 1 <= self.latency_runs <= 10000, "between 1 and 10000"),
            ("max_latency_ms", self.max_latency_ms >= 0, ">= 0 (0 = no limit)"),
            ("dir", bool(self.dir.strip()), "a folder path"),
            ("signature_days", 0 < self.signature_days <= 3650, "in (0, 3650] days"),
            ("student_every", self.student_every >= 0, ">= 0 (0 = no student masks)"),
            ("fuse_min_student", 0.0 <= self.fuse_min_student <= 1.0, "in [0, 1]"),
            ("int8_min_iou", 0.0 <= self.int8_min_iou <= 1.0, "in [0, 1]"),
            ("student_precision", self.student_precision in PRECISIONS, " or ".join(PRECISIONS)),
            ("every_steps", self.every_steps >= 0, ">= 0 (0 = off)"),
            ("every_minutes", self.every_minutes >= 0, ">= 0 (0 = off)"),
            ("holdout_samples", self.holdout_samples >= 1, ">= 1"),
            ("holdout_every", 2 <= self.holdout_every <= 1000, "between 2 and 1000"),
            ("holdout_block", 1 <= self.holdout_block <= 10000, "between 1 and 10000"),
            ("endpoint", "://" in self.endpoint, "a ZeroMQ endpoint such as tcp://127.0.0.1:5560"),
            ("announce_endpoint", "://" in self.announce_endpoint, "a ZeroMQ endpoint such as tcp://127.0.0.1:5561"),
            (
                "announce_endpoint",
                self.announce_endpoint != self.endpoint or self.endpoint.endswith(":*"),
                "different from export.endpoint",
            ),
            ("announce_interval_s", self.announce_interval_s > 0, "> 0"),
            ("chunk_kb", 4 <= self.chunk_kb <= 4096, "between 4 and 4096"),
            ("rate_limit_mbps", self.rate_limit_mbps >= 0, ">= 0 (0 = no limit)"),
        ]
        check("export", checks)

    def size(self) -> tuple[int, int] | None:
        """(width, height), or None for auto."""
        return (self.width, self.height) if self.width else None
