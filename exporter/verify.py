"""The checks an exported model must pass before it is published, in order:

  1. onnx.checker (full check, with shape inference)
  2. an ONNX Runtime session on the CPU, with the expected input and outputs
  3. parity against PyTorch on real frames: each frame alone (batch 1) and all of them in one
     batch; the max absolute difference of every output must be <= export.parity_tolerance
  4. latency on one CPU thread, batch 1 (median of export.latency_runs); over
     export.max_latency_ms (when set) is a failure too

The first failure raises ExportRejected naming the check and the reason; the caller logs it and
publishes nothing. The PyTorch reference comes in as a function, so this module needs no torch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from common.errors import UserError, first_line
from exporter.config import ExportConfig
from exporter.runtime import make_session


class ExportRejected(UserError):
    """An exported model that failed a check; never published."""

    def __init__(self, check: str, reason: str):
        super().__init__(f"export rejected at {check}: {reason}; nothing was published")
        self.check, self.reason = check, reason


@dataclass
class Verification:
    provider: str
    parity: dict[str, Any]
    latency: dict[str, Any]
    ort_version: str
    seconds: float
    outputs: list[np.ndarray]  # ONNX Runtime's outputs on the frames, all in one batch (the 8-bit check's reference)


def check_onnx(onnx_bytes: bytes) -> None:
    import onnx

    try:
        onnx.checker.check_model(onnx.load_from_string(onnx_bytes), full_check=True)
    except Exception as e:  # noqa: BLE001 - ValidationError, shape inference errors, protobuf errors
        raise ExportRejected("onnx_checker", first_line(e, 300)) from None


def parity(
    session: Any, heads: Sequence[str], images: np.ndarray, reference: Callable[[np.ndarray], list[np.ndarray]]
) -> tuple[dict[str, Any], list[np.ndarray]]:
    """Max |ORT - reference| per output, frames one by one and all in one batch; and ORT's outputs
    on that one batch (the last run)."""
    ref = reference(images)
    worst = {n: 0.0 for n in heads}
    batches = [images[i : i + 1] for i in range(len(images))] + ([images] if len(images) > 1 else [])
    starts = list(range(len(images))) + ([0] if len(images) > 1 else [])
    for start, x in zip(starts, batches):
        got = session.run(list(heads), {"image": x})
        for n, g, r in zip(heads, got, ref):
            want = r[start : start + len(x)]
            if g.shape != want.shape:
                raise ExportRejected(
                    "parity", f"output {n} has shape {g.shape} for a batch of {len(x)}, PyTorch gives {want.shape}"
                )
            if not np.isfinite(g).all():
                raise ExportRejected("parity", f"output {n} holds NaN or infinite values")
            worst[n] = max(worst[n], float(np.abs(g.astype(np.float64) - want).max()))
    report = {
        "max_abs_diff": max(worst.values()),
        "per_output": worst,
        "frames": int(len(images)),
        "batches": sorted({1, int(len(images))}),
        "size": [int(images.shape[2]), int(images.shape[1])],
    }
    return report, got


def latency(session: Any, heads: Sequence[str], images: np.ndarray, runs: int, warmup: int = 3) -> dict[str, Any]:
    x = np.ascontiguousarray(images[:1])
    for _ in range(warmup):
        session.run(list(heads), {"image": x})
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        session.run(list(heads), {"image": x})
        times.append((time.perf_counter() - t0) * 1e3)
    t = np.asarray(times)
    return {
        "ms_median": round(float(np.median(t)), 3),
        "ms_p90": round(float(np.percentile(t, 90)), 3),
        "ms_min": round(float(t.min()), 3),
        "runs": runs,
        "batch": 1,
        "threads": 1,
        "provider": "CPUExecutionProvider",
    }


def verify_onnx(
    onnx_bytes: bytes,
    heads: Sequence[str],
    images: np.ndarray,
    reference: Callable[[np.ndarray], list[np.ndarray]],
    cfg: ExportConfig,
    what: str = "model",
) -> Verification:
    """Run the checks above on N x H x W x 3 uint8 frames (already at the model's input size)."""
    import onnxruntime as ort

    t0 = time.perf_counter()
    check_onnx(onnx_bytes)
    try:
        session, device = make_session(onnx_bytes, "cpu", threads=1, what=what)
    except UserError as e:
        raise ExportRejected("ort_session", str(e)) from None
    inputs = session.get_inputs()
    if [(i.name, i.type) for i in inputs] != [("image", "tensor(uint8)")]:
        raise ExportRejected("ort_session", f"inputs are {[(i.name, i.type) for i in inputs]}, expected image uint8")
    names = [o.name for o in session.get_outputs()]
    if names != list(heads):
        raise ExportRejected("ort_session", f"outputs are {names}, expected {list(heads)}")
    par, outputs = parity(session, heads, images, reference)
    par["tolerance"] = cfg.parity_tolerance
    if not par["max_abs_diff"] <= cfg.parity_tolerance:
        worst = max(par["per_output"], key=par["per_output"].get)
        raise ExportRejected(
            "parity",
            f"max |onnxruntime - pytorch| = {par['max_abs_diff']:.3g} on output {worst} "
            f"> export.parity_tolerance {cfg.parity_tolerance:g}",
        )
    lat = latency(session, heads, images, cfg.latency_runs)
    if cfg.max_latency_ms and lat["ms_median"] > cfg.max_latency_ms:
        raise ExportRejected(
            "latency",
            f"{lat['ms_median']:.1f} ms per frame on one CPU thread > export.max_latency_ms {cfg.max_latency_ms:g}",
        )
    return Verification(device.provider, par, lat, ort.__version__, time.perf_counter() - t0, outputs)
