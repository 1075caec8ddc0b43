"""The bundle's 8-bit model: the verified fp32 graph quantized by ONNX Runtime, and the check that
it still says what the fp32 model says.

On a CPU the student's convolutions dominate what a camera pays per frame for its live student
mask; in 8-bit (static quantization, QDQ format: int8 weights per output channel, uint8
activations with ranges calibrated on real frames) they run about twice as fast, which lets the
camera run the student on more frames for the same fps (figures: docs/benchmarks.md).
ONNX Runtime does the work (onnxruntime.quantization); this module feeds it frames and judges
the result.

Calibration frames: the daemon's export gate passes its holdout (recent camera frames, fitted
to the input); `motionmask export` the parity frames. The check runs on the parity frames, fp32
against int8, per output:

    mask        IoU of the two at 0.5 (pooled over the frames) >= export.int8_min_iou
    embedding   cosine of the two vectors, the lowest over the frames >= 0.95
    segments    share of pixels whose argmax segment agrees >= 0.9

An 8-bit model that fails is left out of the bundle (event int8_skipped, with the reason): the
bundle still ships in fp32, which every runner can run.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import first_line
from exporter.bundle import INT8_FILE
from exporter.runtime import make_session
from exporter.verify import latency

MAX_CALIBRATION_FRAMES = 32  # MinMax ranges settle within a few dozen frames; more only costs export time
MIN_EMBEDDING_COSINE = 0.95
MIN_SEGMENT_AGREEMENT = 0.9


class Int8Refused(Exception):
    """The 8-bit model disagrees with the fp32 one; the bundle ships without it."""


@dataclass
class Int8:
    onnx: bytes
    report: dict[str, Any]  # the manifest's `int8` entry


def quantize(onnx_bytes: bytes, calibration: np.ndarray, input_name: str = "image") -> bytes:
    """The fp32 graph as a QDQ int8 graph, activation ranges from `calibration` (N x H x W x 3 uint8
    at the model's input size)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    frames = [calibration[i : i + 1] for i in range(min(len(calibration), MAX_CALIBRATION_FRAMES))]
    if not frames:
        raise ValueError("quantization needs at least one calibration frame")

    class Frames(CalibrationDataReader):
        def __init__(self) -> None:
            self.left = iter(frames)

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self.left, None)
            return None if x is None else {input_name: np.ascontiguousarray(x)}

    with tempfile.TemporaryDirectory(prefix="motionmask-int8-") as tmp:
        src, pre, out = Path(tmp, "fp32.onnx"), Path(tmp, "pre.onnx"), Path(tmp, "int8.onnx")
        src.write_bytes(onnx_bytes)
        # symbolic shape inference gives up on the graph's dynamic batch (and then leaves its temp
        # files in the working directory); ONNX's own shape inference suffices
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        quantize_static(
            str(pre),
            str(out),
            Frames(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
        return out.read_bytes()


def agreement(heads: Sequence[str], fp32: Sequence[np.ndarray], int8: Sequence[np.ndarray]) -> dict[str, float]:
    """How far the 8-bit outputs say what the fp32 ones say (the figures of the module docstring)."""
    out: dict[str, float] = {}
    for name, a, b in zip(heads, fp32, int8):
        if name == "mask":
            fa, fb = a >= 0.5, b >= 0.5
            union = int((fa | fb).sum())
            out["mask_iou"] = float((fa & fb).sum() / union) if union else 1.0
            out["mask_mean_abs_diff"] = float(np.abs(a.astype(np.float64) - b).mean())
        elif name == "embedding":
            na = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
            nb = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
            out["embedding_min_cosine"] = float((na * nb).sum(axis=1).min())
        elif name == "segments":
            out["segments_agreement"] = float((a.argmax(axis=1) == b.argmax(axis=1)).mean())
    return out


def refusal(figures: dict[str, float], min_iou: float) -> str:
    """Why the 8-bit model may not ship, or "" when it may."""
    if figures.get("mask_iou", 1.0) < min_iou:
        return f"mask IoU with the fp32 model {figures['mask_iou']:.3f} < export.int8_min_iou {min_iou:g}"
    if figures.get("embedding_min_cosine", 1.0) < MIN_EMBEDDING_COSINE:
        return f"embedding cosine with the fp32 model {figures['embedding_min_cosine']:.3f} < {MIN_EMBEDDING_COSINE}"
    if figures.get("segments_agreement", 1.0) < MIN_SEGMENT_AGREEMENT:
        return f"segment agreement with the fp32 model {figures['segments_agreement']:.3f} < {MIN_SEGMENT_AGREEMENT}"
    return ""


def int8_model(
    onnx_bytes: bytes,
    heads: Sequence[str],
    calibration: np.ndarray,
    check: np.ndarray,
    fp32: Sequence[np.ndarray],
    min_iou: float,
    latency_runs: int,
    what: str = "model",
) -> Int8:
    """Quantize, then compare with the fp32 graph's outputs `fp32` on `check` (N x H x W x 3 uint8,
    one batch: the verification's, exporter/verify.py) and time it on one thread. Raises
    Int8Refused when the two disagree (or ONNX Runtime cannot run the result)."""
    t0 = time.perf_counter()
    try:
        q = quantize(onnx_bytes, calibration)
        int8, _ = make_session(q, "cpu", threads=1, what=f"{what} (int8)")
        names = list(heads)
        figures = agreement(names, fp32, int8.run(names, {"image": check}))
    except Exception as e:  # noqa: BLE001 - the quantizer and ORT raise many types; the fp32 bundle ships
        raise Int8Refused(f"quantization failed: {type(e).__name__}: {first_line(e)}") from None
    why = refusal(figures, min_iou)
    if why:
        raise Int8Refused(why)
    report = {
        "file": INT8_FILE,
        "format": "QDQ, int8 weights per channel, uint8 activations (onnxruntime.quantization, MinMax)",
        "calibration_frames": int(min(len(calibration), MAX_CALIBRATION_FRAMES)),
        "agreement": {k: round(v, 5) for k, v in figures.items()},
        "min_mask_iou": min_iou,
        "latency": latency(int8, names, check, latency_runs),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    return Int8(q, report)
