"""torch -> ONNX: the learner's model as one self-contained ONNX model, and the one export path
(load -> export -> verify -> publish) that `motionmask export` and the daemon take.

The graph a device runs:

    image  uint8 N x H x W x 3 RGB (what a decoder hands you; H, W fixed per bundle)
      -> NCHW, float32, (x / 255 - mean) / std               (baked in: the learner's constants)
      -> backbone feature pyramid -> every enabled head      (HEADS, in model.heads order)
    mask       float32 N x H x W, foreground probability (sigmoid inside, resized to the input)
    embedding  float32 N x D, one L2-normalised vector per input image (feed a patch to embed a patch)
    segments   float32 N x L x H x W, soft segments (softmax over L inside, resized to the input)

Heads are data: HEADS maps a head name to its output's post-processing and description, so a
head added to `model.heads` by a later learner (`embedding`, `segments`) becomes a named output
once it has an entry here; a head without one is an error, never silently left out.

The exporter is torch's dynamo exporter (torch.onnx.export(dynamo=True), the default since torch
2.9; it needs onnxscript). It would write weights to a separate `.onnx.data` file when asked to:
we take the in-memory ModelProto, refuse any tensor stored outside it, and serialise the model as
one file. The example batch is 2 so that the batch axis stays symbolic (torch.export specialises
sizes 0 and 1), and the batch dimension is declared dynamic.

After the checks, the verified graph is also quantized to 8 bits (export.int8, exporter/quantize.py)
and ships beside it as model.int8.onnx when it agrees with it; runners on a CPU take that one.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import json
import logging
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common.errors import UserError, first_line
from common.log import log_event
from exporter.bundle import INT8_FILE, MODEL_FILE, check_exports_dir, new_version, publish_bundle, read_pointer
from exporter.config import ExportConfig
from exporter.runtime import fit_frame
from exporter.signing import Signer
from exporter.verify import ExportRejected, Verification, verify_onnx

logger = logging.getLogger(__name__)

INPUT_NAME = "image"
DECISIONS_KEPT = 20  # export decisions a status carries (the console shows them)
DEFAULT_SIZE = (224, 224)  # (width, height) when the checkpoint does not say what it trained at


# ----------------------------------------------------------------------------------------------
# Heads: what each becomes in the graph and in the manifest


@dataclass(frozen=True)
class HeadSpec:
    """One named output. post: (the head's raw output, (H, W) of the input) -> the output tensor."""

    post: Callable[[torch.Tensor, tuple[int, int]], torch.Tensor]
    meaning: str
    dims: tuple[str, ...]  # names of the output's axes, for the manifest


def _mask_post(logits: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    if tuple(logits.shape[-2:]) != tuple(hw):  # alexnet's s x s mask -> the input size
        logits = F.interpolate(logits, size=hw, mode="bilinear", align_corners=False)
    return torch.sigmoid(logits)[:, 0]


def _embedding_post(vectors: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    return vectors.float()  # unit length already (learner/heads.py)


def _segments_post(logits: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    if tuple(logits.shape[-2:]) != tuple(hw):  # alexnet's segments sit at its pool1 resolution
        logits = F.interpolate(logits, size=hw, mode="bilinear", align_corners=False)
    return torch.softmax(logits.float(), dim=1)


HEADS: dict[str, HeadSpec] = {
    "mask": HeadSpec(_mask_post, "foreground probability in [0, 1] of each input pixel", ("N", "H", "W")),
    "embedding": HeadSpec(
        _embedding_post,
        "L2-normalised embedding of each input image (cosine similarity = dot product); feed a patch to embed a patch",
        ("N", "D"),
    ),
    "segments": HeadSpec(
        _segments_post,
        "soft segments: probability of each of L segments at each input pixel "
        "(sums to 1 over L); pixels of one segment move together",
        ("N", "L", "H", "W"),
    ),
}


def enabled_heads(model: nn.Module) -> list[str]:
    """The model's heads, in its order; each must have an export spec."""
    names = list(getattr(model, "heads", {}).keys())
    if "mask" not in names:
        raise UserError("the model has no `mask` head; nothing to export")
    missing = [n for n in names if n not in HEADS]
    if missing:
        raise UserError(f"head(s) {', '.join(missing)} have no export spec; add them to exporter.export.HEADS")
    return names


class ExportModule(nn.Module):
    """uint8 NHWC frames -> one tensor per head; the graph that is exported."""

    def __init__(self, model: nn.Module, heads: Sequence[str]):
        super().__init__()
        self.model = model
        self.head_names = list(heads)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        hw = (image.shape[1], image.shape[2])
        x = image.permute(0, 3, 1, 2).to(torch.float32)  # transpose the uint8s: a quarter of the bytes
        x = self.model.normalize(x)
        pyramid = self.model.features(x)
        return tuple(HEADS[n].post(self.model.heads[n](pyramid), hw) for n in self.head_names)


@torch.no_grad()
def torch_outputs(model: nn.Module, heads: Sequence[str], images: np.ndarray) -> list[np.ndarray]:
    """The reference: the learner's own inference path in eager PyTorch fp32 on the CPU."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    pyramid = model.features(model.normalize(x))
    hw = (images.shape[1], images.shape[2])
    return [HEADS[n].post(model.heads[n](pyramid), hw).float().numpy() for n in heads]


# ----------------------------------------------------------------------------------------------
# torch -> ONNX bytes


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter warns about optional torchvision ops and its own deprecations on every call;
    none of it concerns this model. Errors still raise."""
    names = ("torch.onnx", "torch.export", "torch._export", "torch.fx", "onnxscript", "onnx_ir", "torch._dynamo")
    saved = [(lg, lg.level) for lg in map(logging.getLogger, names)]
    for lg, _ in saved:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in saved:
            lg.setLevel(level)


def input_size(
    model: nn.Module, cfg: ExportConfig, slot_size: Sequence[int] | None
) -> tuple[tuple[int, int], tuple[int, int]]:
    """((width, height) of the bundle's input, (w, h) box frames are fitted into).
    export.width/height when set (the box is the whole input); else the size the checkpoint
    trained at (its ring-buffer slot: the box) padded up to the net's stride, as
    learner.predict.Predictor runs it; else 224 x 224. AlexNet takes only its one size."""
    fixed = getattr(model, "input_size", None)
    if fixed:
        if cfg.size() and cfg.size() != (fixed, fixed):
            raise UserError(
                f"export.width/height {cfg.width}x{cfg.height}: this alexnet model takes only "
                f"{fixed}x{fixed} (its crop size); set both to 0 or to {fixed}"
            )
        return (fixed, fixed), (fixed, fixed)
    stride = int(getattr(model, "stride", 1))
    if cfg.size():
        w, h = cfg.size()
        if w % stride or h % stride:
            raise UserError(f"export size {w}x{h}: width and height must be multiples of {stride} for this model")
        return (w, h), (w, h)
    if slot_size:
        h, w = int(slot_size[0]), int(slot_size[1])
        return (-(-w // stride) * stride, -(-h // stride) * stride), (w, h)
    return DEFAULT_SIZE, DEFAULT_SIZE


def to_onnx(
    model: nn.Module, heads: Sequence[str], width: int, height: int, opset: int, metadata: dict[str, Any]
) -> bytes:
    """Export `model` (eval, fp32, on the CPU) to a self-contained ONNX model; metadata values
    go into metadata_props as JSON strings."""
    import onnx

    wrapper = ExportModule(model, heads).eval()
    example = torch.zeros((2, height, width, 3), dtype=torch.uint8)
    batch = torch.export.Dim("batch", min=1, max=4096)
    try:
        with _quiet_exporter(), torch.no_grad():
            program = torch.onnx.export(
                wrapper,
                (example,),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=list(heads),
                dynamic_shapes={"image": {0: batch}},
                opset_version=opset,
                external_data=False,
                optimize=True,
                verbose=False,
            )
    except ImportError as e:
        raise UserError(f"torch.onnx.export needs onnxscript ({e}); pip install onnxscript") from None
    except Exception as e:  # noqa: BLE001 - the exporter raises many kinds; the reason is what counts
        raise ExportRejected("export", f"torch.onnx.export failed: {first_line(e, 300)}") from None
    proto = program.model_proto
    outside = [t.name for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    if outside:
        raise ExportRejected("export", f"{len(outside)} weights stored outside the model ({outside[0]}, ...)")
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value, sort_keys=True)
    proto.doc_string = "motionmask: uint8 RGB frames (N x H x W x 3) in; " + ", ".join(
        f"{n}: {HEADS[n].meaning}" for n in heads
    )
    return proto.SerializeToString()


def output_specs(onnx_bytes: bytes, heads: Sequence[str]) -> list[dict[str, Any]]:
    """Each output's name, dtype and shape as the graph states them (N = the dynamic batch)."""
    import onnx

    g = onnx.load_from_string(onnx_bytes).graph
    specs = []
    for o in g.output:
        t = o.type.tensor_type
        shape = [d.dim_param and "N" or d.dim_value for d in t.shape.dim]
        specs.append(
            {
                "name": o.name,
                "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name,
                "shape": shape,
                "axes": list(HEADS[o.name].dims),
                "meaning": HEADS[o.name].meaning,
            }
        )
    if [s["name"] for s in specs] != list(heads):
        raise ExportRejected("export", f"graph outputs {[s['name'] for s in specs]} are not the heads {list(heads)}")
    return specs


# ----------------------------------------------------------------------------------------------
# The whole export: model -> verified bundle


@dataclass
class ExportResult:
    version: str
    path: Path
    manifest: dict[str, Any]
    seconds: float
    verification: Verification | None = None
    previous: str | None = None
    timings: dict[str, float] = field(default_factory=dict)


def default_frames(n: int) -> list[np.ndarray]:
    """Real photographs for the parity check when no footage is given: the ones scikit-image
    ships (no network), as RGB uint8."""
    import skimage.data

    frames = []
    for name in (
        "astronaut",
        "coffee",
        "chelsea",
        "rocket",
        "motorcycle_left",
        "camera",
        "brick",
        "grass",
        "gravel",
        "moon",
        "coins",
        "hubble_deep_field",
    ):
        img = skimage.data.stereo_motorcycle()[0] if name == "motorcycle_left" else getattr(skimage.data, name)()
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        frames.append(np.ascontiguousarray(img[..., :3].astype(np.uint8)))
        if len(frames) >= n:
            break
    while len(frames) < n:  # more than the photos: flipped copies are different inputs too
        frames.append(np.ascontiguousarray(frames[len(frames) % 12][:, ::-1]))
    return frames


def load_frames(spec: str, n: int) -> list[np.ndarray]:
    """n frames spread over a video or an image folder (streamer.sources)."""
    from streamer.config import SourceConfig
    from streamer.sources import open_source

    frames = []
    with open_source(spec, SourceConfig(reconnect=False)) as source:
        total = source.frame_count or 0
        stride = max(1, total // n) if total else 1
        for frame in source:
            if frame.index % stride == 0:
                frames.append(frame.image)
            if len(frames) >= n:
                break
    if not frames:
        raise UserError(f"{spec}: no frames decoded for the parity check")
    return frames


def _model_for_export(model: nn.Module) -> nn.Module:
    """A CPU fp32 eval copy: the caller's model (maybe training on a GPU) is left as it is."""
    m = copy.deepcopy(model).to("cpu", torch.float32).eval()
    return m.to(memory_format=torch.contiguous_format)


def export_model(
    model: nn.Module,
    out: str | Path,
    cfg: ExportConfig,
    *,
    step: int,
    source: dict[str, Any],
    frames: list[np.ndarray] | None = None,
    quality: dict[str, Any] | None = None,
    slot_size: Sequence[int] | None = None,
    preprocessing: dict[str, Any] | None = None,
    calibration: np.ndarray | None = None,
) -> ExportResult:
    """Export, verify and publish. Raises ExportRejected (a UserError: the reason is logged, nothing
    is published) or UserError (e.g. the exports folder cannot be written). calibration: frames
    fitted to the input (N x H x W x 3 uint8) that set the 8-bit model's ranges (export.int8);
    default the parity frames."""
    t0 = time.perf_counter()
    out = check_exports_dir(out)
    signer = Signer.from_file(cfg.signing_key) if cfg.signing_key else None  # a bad key fails before the work
    model = _model_for_export(model)
    heads = enabled_heads(model)
    (width, height), box = input_size(model, cfg, slot_size)
    version = new_version(out, step)
    resize = "stretch" if getattr(model, "input_size", None) else "fit"
    pre = preprocessing_spec(model.cfg, resize, box, preprocessing)
    input_spec = _input_spec(width, height)
    arch = dict(source.get("arch", {}))
    metadata = {
        "version": version,
        "heads": heads,
        "input": input_spec,
        "preprocessing": pre,
        "source": {"step": step, "arch": arch},
    }
    log_event(
        logger,
        "export_start",
        version=version,
        heads=",".join(heads),
        size=f"{width}x{height}",
        opset=cfg.opset,
        step=step,
    )
    onnx_bytes, outputs, ver, timings, fitted = _convert_and_verify(
        model, heads, (width, height), resize, box, metadata, frames, cfg
    )
    manifest = build_manifest(
        cfg, heads, input_spec, outputs, pre, {**source, "step": step, "arch": arch}, quality or {}, ver, timings
    )
    files = {MODEL_FILE: onnx_bytes}
    if cfg.int8:
        t3 = time.perf_counter()
        calib = fitted if calibration is None else calibration
        files, manifest["int8"] = with_int8(files, heads, calib, fitted, ver.outputs, cfg)
        timings["int8"] = manifest["timings_s"]["int8"] = round(time.perf_counter() - t3, 3)
    return _publish(out, version, files, manifest, cfg, signer, ver, timings, t0)


def with_int8(
    files: dict[str, bytes],
    heads: list[str],
    calibration: np.ndarray,
    check: np.ndarray,
    fp32: list[np.ndarray],
    cfg: ExportConfig,
) -> tuple[dict[str, bytes], dict[str, Any]]:
    """The bundle's files with the 8-bit model added, and the manifest's `int8` entry; when the
    8-bit model fails its check against the fp32 outputs on `check`, the files as they were and
    the reason (the fp32 model ships)."""
    from exporter.quantize import Int8Refused, int8_model

    try:
        q = int8_model(files[MODEL_FILE], heads, calibration, check, fp32, cfg.int8_min_iou, cfg.latency_runs)
    except Int8Refused as e:
        log_event(logger, "int8_skipped", logging.WARNING, reason=str(e))
        return files, {"skipped": str(e)}
    return {**files, INT8_FILE: q.onnx}, q.report


def _input_spec(width: int, height: int) -> dict[str, Any]:
    """The graph's one input, as the manifest and the ONNX metadata describe it."""
    return {
        "name": INPUT_NAME,
        "dtype": "uint8",
        "shape": ["N", height, width, 3],
        "layout": "NHWC",
        "color": "RGB",
        "height": height,
        "width": width,
    }


def _convert_and_verify(
    model: nn.Module,
    heads: list[str],
    size: tuple[int, int],
    resize: str,
    box: Sequence[int],
    metadata: dict[str, Any],
    frames: list[np.ndarray] | None,
    cfg: ExportConfig,
):
    """(ONNX bytes, output specs, parity verdict, timings, the parity frames fitted to the input):
    the graph and its parity check against the torch model. A rejection is logged
    (export_rejected) and raised."""
    width, height = size
    version = metadata["version"]
    t1 = time.perf_counter()
    try:
        onnx_bytes = to_onnx(model, heads, width, height, cfg.opset, metadata)
        outputs = output_specs(onnx_bytes, heads)
        t2 = time.perf_counter()
        fitted = parity_batch(
            frames or default_frames(cfg.parity_frames), cfg.parity_frames, width, height, resize, box
        )
        ver = verify_onnx(onnx_bytes, heads, fitted, lambda x: torch_outputs(model, heads, x), cfg, what=version)
    except ExportRejected as e:
        log_event(logger, "export_rejected", logging.ERROR, version=version, check=e.check, reason=e.reason)
        raise
    return onnx_bytes, outputs, ver, {"export": t2 - t1, "verify": time.perf_counter() - t2}, fitted


def preprocessing_spec(mcfg: Any, resize: str, box: Sequence[int], extra: dict[str, Any] | None) -> dict[str, Any]:
    """The manifest's `preprocessing`: what the graph does inside, and how a caller fits a frame to it."""
    return {
        "in_graph": "NHWC uint8 -> NCHW float32, x / 255, (x - mean) / std",
        "mean": [float(v) for v in mcfg.mean],
        "std": [float(v) for v in mcfg.std],
        "resize": resize,
        "fit_box": list(box),
        "resize_note": (
            "scale the frame keeping its aspect ratio to fit fit_box (w, h), pad right and bottom "
            "to the input's W x H by repeating the edge pixels, cut the outputs back to the "
            "frame's region and resize them to the frame"
            if resize == "fit"
            else "resize the frame to W x H and the outputs back"
        ),
        **(extra or {}),
    }


def parity_batch(
    frames: list[np.ndarray], n: int, width: int, height: int, resize: str, box: Sequence[int]
) -> np.ndarray:
    """The first n frames fitted to the input, as the device will fit them: the parity check's batch."""
    return np.stack([fit_frame(f, width, height, resize, box)[0] for f in frames[:n]])


def build_manifest(
    cfg: ExportConfig,
    heads: list[str],
    input_spec: dict[str, Any],
    outputs: list[dict[str, Any]],
    pre: dict[str, Any],
    source: dict[str, Any],
    quality: dict[str, Any],
    ver: Verification,
    timings: dict[str, float],
) -> dict[str, Any]:
    import onnx

    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "created_unix": round(time.time(), 3),
        "opset": cfg.opset,
        "heads": heads,
        "input": input_spec,
        "outputs": outputs,
        "preprocessing": pre,
        "source": source,
        "quality": quality,
        "parity": ver.parity,
        "latency": ver.latency,
        "checks": {"onnx_checker": "passed", "ort_session": ver.provider},
        "producer": {
            "torch": str(torch.__version__).split("+")[0],
            "onnx": onnx.__version__,
            "onnxruntime": ver.ort_version,
        },
        "timings_s": {"export": round(timings["export"], 3), "verify": round(timings["verify"], 3)},
    }


def _publish(
    out: Path,
    version: str,
    files: dict[str, bytes],
    manifest: dict[str, Any],
    cfg: ExportConfig,
    signer: Signer | None,
    ver: Verification,
    timings: dict[str, float],
    t0: float,
) -> ExportResult:
    """The verified model(s) and the manifest into `out` as the newest bundle (LATEST moves to it)."""
    previous = read_pointer(out)
    path = publish_bundle(out, version, files, manifest, cfg.keep, signer=signer, expiry_days=cfg.signature_days)
    final = json.loads((path / "manifest.json").read_text())
    seconds = time.perf_counter() - t0
    log_event(
        logger,
        "export_published",
        version=version,
        path=path,
        sha256=final["sha256"][:16],
        mb=len(files[MODEL_FILE]) / 2**20,
        parity=ver.parity["max_abs_diff"],
        latency_ms=ver.latency["ms_median"],
        int8_ms=manifest.get("int8", {}).get("latency", {}).get("ms_median", "none"),
        previous=previous or "none",
        signed=signer.key_id if signer else "no",
        seconds=seconds,
    )
    return ExportResult(version, path, final, seconds, ver, previous, {**timings, "total": seconds})


def load_for_export(checkpoint: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """A checkpoint -> (the model with its weights, the checkpoint state). A foreign, damaged or
    mismatched checkpoint is a one-line UserError."""
    from learner.checkpoint import load_checkpoint
    from learner.config import BACKBONES, learner_config_from_dict
    from learner.model import architecture, build_model

    path = Path(checkpoint)
    state = load_checkpoint(path, "cpu")
    cfg = learner_config_from_dict(state.get("config", {}))
    if cfg.model.backbone not in BACKBONES:
        raise UserError(
            f"{path}: backbone {cfg.model.backbone!r} is not one this motionmask knows "
            f"({', '.join(BACKBONES)}); export it with the motionmask that trained it"
        )
    crop = cfg.crop_size
    arch = architecture(cfg.model, crop, cfg.heads)
    if state.get("arch") != arch:
        raise UserError(
            f"{path}: checkpoint from another architecture: it says {state.get('arch')}, its config builds {arch}"
        )
    try:
        model = build_model(cfg.model, crop, cfg.heads)
        model.load_state_dict(state["model"])
    except (KeyError, RuntimeError, ValueError) as e:
        raise UserError(
            f"{path}: checkpoint from another architecture: its weights do not fit a "
            f"{arch.get('backbone')} model ({first_line(e)})"
        ) from None
    return model, state


def export_checkpoint(
    checkpoint: str | Path,
    out: str | Path,
    cfg: ExportConfig,
    frames: list[np.ndarray] | None = None,
    quality: dict[str, Any] | None = None,
) -> ExportResult:
    """`motionmask export`: a checkpoint file -> a verified bundle in `out`."""
    check_exports_dir(out)  # before loading anything: an unwritable --out fails in milliseconds
    model, state = load_for_export(checkpoint)
    source = {
        "checkpoint": str(Path(checkpoint).resolve()),
        "arch": state.get("arch"),
        "saved_at": state.get("saved_at"),
        "trained_seconds": state.get("counters", {}).get("train_seconds"),
    }
    return export_model(
        model,
        out,
        cfg,
        step=int(state.get("step", 0)),
        source=source,
        frames=frames,
        quality=quality,
        slot_size=state.get("slot_size"),
    )


# ----------------------------------------------------------------------------------------------
# The daemon's periodic export


def fit_trimap(
    trimap: np.ndarray, width: int, height: int, resize: str = "fit", box: tuple[int, int] | None = None
) -> np.ndarray:
    """A trimap through the same geometry as fit_frame (nearest neighbour; padding don't-care)."""
    import cv2

    h, w = trimap.shape[:2]
    if resize == "stretch":
        return cv2.resize(trimap, (width, height), interpolation=cv2.INTER_NEAREST)
    bw, bh = box or (width, height)
    scale = min(bw / w, bh / h)
    ww, wh = max(1, min(width, round(w * scale))), max(1, min(height, round(h * scale)))
    t = trimap if (ww, wh) == (w, h) else cv2.resize(trimap, (ww, wh), interpolation=cv2.INTER_NEAREST)
    return cv2.copyMakeBorder(t, 0, height - wh, 0, width - ww, cv2.BORDER_CONSTANT, value=128)


@dataclass
class Holdout:
    """Buffer samples held back from training, fitted to the model's input like a frame."""

    images: np.ndarray  # N x H x W x 3 uint8
    trimaps: np.ndarray  # N x H x W uint8: 255 positive, 0 negative, else ignored

    @classmethod
    def from_samples(
        cls, samples: Sequence[Any], width: int, height: int, resize: str = "fit", box: tuple[int, int] | None = None
    ) -> Holdout:
        """Ring-buffer samples (streamer.shm.ringbuffer.Sample: image, trimap, valid) -> a holdout."""
        imgs, tris = [], []
        for s in samples:
            y0, x0, h, w = s.valid
            imgs.append(
                fit_frame(np.ascontiguousarray(s.image[y0 : y0 + h, x0 : x0 + w]), width, height, resize, box)[0]
            )
            tris.append(
                fit_trimap(np.ascontiguousarray(s.trimap[y0 : y0 + h, x0 : x0 + w]), width, height, resize, box)
            )
        if not imgs:
            raise ValueError("a holdout needs at least one sample")
        return cls(np.stack(imgs), np.stack(tris))

    @classmethod
    def for_model(
        cls, samples: Sequence[Any], model: nn.Module, cfg: ExportConfig, slot_size: Sequence[int] | None = None
    ) -> Holdout:
        """Samples fitted the way the bundles of this model and config will see frames."""
        (w, h), box = input_size(model, cfg, slot_size)
        return cls.from_samples(samples, w, h, "stretch" if getattr(model, "input_size", None) else "fit", box)


@torch.no_grad()
def holdout_score(model: nn.Module, holdout: Holdout, batch: int = 16) -> dict[str, float]:
    """Masked BCE (the training loss: lower is better) and IoU of the mask at 0.5 on the counted
    pixels of the held-back samples."""
    model = model.eval()
    bce_sum, counted, inter, union = 0.0, 0, 0, 0
    for i in range(0, len(holdout.images), batch):
        prob = torch.from_numpy(torch_outputs(model, ["mask"], holdout.images[i : i + batch])[0]).double()
        tri = torch.from_numpy(holdout.trimaps[i : i + batch])
        pos, neg = tri == 255, tri == 0
        use = pos | neg
        p = prob.clamp(1e-7, 1 - 1e-7)
        bce = -(torch.where(pos, p.log(), (1 - p).log()))
        bce_sum += float(bce[use].sum())
        counted += int(use.sum())
        fg = (prob >= 0.5) & use
        inter += int((fg & pos).sum())
        union += int((fg | pos).sum())
    return {
        "holdout_bce": bce_sum / max(1, counted),
        "holdout_iou": inter / union if union else 1.0,
        "holdout_samples": int(len(holdout.images)),
    }


def beats(score: dict[str, float], previous: dict[str, float]) -> bool:
    """Is a holdout_score better than another? IoU first: the masked BCE also rises when a student
    grows sure of itself where its teacher's labels are wrong, and on a holdout from the camera's
    own scene it stopped falling mid-run while the student's real IoU kept rising (README, "Which
    model the daemon ships"; bench/export_gate.py); BCE breaks ties, such as a holdout without
    positives."""
    if score["holdout_iou"] != previous["holdout_iou"]:
        return score["holdout_iou"] > previous["holdout_iou"]
    return score["holdout_bce"] < previous["holdout_bce"]


def gate_reason(score: dict[str, float], previous: dict[str, float] | None) -> str:
    """The gate's verdict in words, as the console and `motionmask status` show it: which score
    decided (IoU, or BCE at equal IoU), and both values."""
    if previous is None:
        return "first export of this run"
    iou, last = score["holdout_iou"], previous["holdout_iou"]
    if iou != last:
        verb = "beats" if iou > last else "does not beat"
        return f"holdout IoU {iou:.4f} {verb} the last export's {last:.4f}"
    verb = "below" if score["holdout_bce"] < previous["holdout_bce"] else "not below"
    return (
        f"holdout IoU equal ({iou:.4f}); BCE {score['holdout_bce']:.4f} {verb} the last export's "
        f"{previous['holdout_bce']:.4f}"
    )


class PeriodicExport:
    """The daemon's export policy: every export.every_steps steps or export.every_minutes minutes
    (whichever comes first), export the model, but only when it beats the last exported model on
    the held-back samples (higher IoU of the mask at 0.5 with their trimaps; at equal IoU, lower
    masked BCE; both models scored on the same holdout, now). Failures are logged and never raised:
    training goes on, and the bundle in service stays.

        holdout = Holdout.for_model(held_back_samples, trainer.model, cfg.export, slot_size=(240, 320))
        periodic = PeriodicExport(cfg.export.dir, cfg.export, holdout, slot_size=(240, 320), source={...},
                                  on_publish=lambda result: server.announce())
        ... in the training loop:
        periodic.maybe_export(trainer.model, trainer.step_count)
    """

    def __init__(
        self,
        out: str | Path,
        cfg: ExportConfig,
        holdout: Holdout,
        *,
        slot_size: Sequence[int] | None = None,
        source: dict[str, Any] | None = None,
        on_publish: Callable[[ExportResult], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.out, self.cfg, self.holdout = Path(out), cfg, holdout
        self.slot_size, self.source = slot_size, dict(source or {})
        self.on_publish, self.clock = on_publish, clock
        self.last_step: int | None = None
        self.last_time = clock()
        self.last_model: nn.Module | None = None
        self.last_score: dict[str, float] | None = None
        self.last_error = ""
        # the gate's decisions, newest last: what the daemon's status (and so the console) says
        # about why a model did or did not ship; counts since this process started
        self.decisions: collections.deque[dict[str, Any]] = collections.deque(maxlen=DECISIONS_KEPT)
        self.counts: collections.Counter[str] = collections.Counter()

    def due(self, step: int) -> bool:
        c = self.cfg
        by_steps = c.every_steps and step - (self.last_step or 0) >= c.every_steps
        by_time = c.every_minutes and self.clock() - self.last_time >= c.every_minutes * 60
        return bool(by_steps or by_time) and step != self.last_step

    def maybe_export(self, model: nn.Module, step: int, force: bool = False) -> ExportResult | None:
        if not (force or self.due(step)):
            return None
        self.last_step, self.last_time = step, self.clock()
        candidate = _model_for_export(model)
        score = holdout_score(candidate, self.holdout)
        previous = holdout_score(self.last_model, self.holdout) if self.last_model is not None else None
        if previous is not None and not beats(score, previous):
            log_event(
                logger,
                "export_skipped",
                step=step,
                reason="not_better",
                holdout_iou=score["holdout_iou"],
                last_export_iou=previous["holdout_iou"],
                holdout_bce=score["holdout_bce"],
                last_export_bce=previous["holdout_bce"],
            )
            self._decided(step, "skipped", gate_reason(score, previous), score, previous)
            return None
        quality = {
            **score,
            **(
                {"last_export_holdout_iou": previous["holdout_iou"], "last_export_holdout_bce": previous["holdout_bce"]}
                if previous
                else {}
            ),
        }
        try:
            result = export_model(
                candidate,
                self.out,
                self.cfg,
                step=step,
                source={**self.source, "step": step},
                quality=quality,
                slot_size=self.slot_size,
                calibration=self.holdout.images,  # this camera's recent frames set the 8-bit ranges
            )
        except UserError as e:  # ExportRejected included: already logged with its reason
            self.last_error = str(e)
            if not isinstance(e, ExportRejected):
                log_event(logger, "export_failed", logging.ERROR, step=step, error=str(e))
            why = f"rejected by the {e.check} check: {e.reason}" if isinstance(e, ExportRejected) else str(e)
            self._decided(step, "failed", why, score, previous)
            return None
        self._decided(step, "shipped", gate_reason(score, previous), score, previous, result.version)
        self.last_model, self.last_score, self.last_error = candidate, score, ""
        if self.on_publish:
            self.on_publish(result)
        return result

    def _decided(
        self,
        step: int,
        outcome: str,
        reason: str,
        score: dict[str, float],
        previous: dict[str, float] | None,
        version: str | None = None,
    ) -> None:
        self.counts[outcome] += 1
        self.decisions.append(
            {
                "time": round(time.time(), 3),
                "step": step,
                "outcome": outcome,
                "reason": reason,
                "version": version,
                "holdout_iou": score["holdout_iou"],
                "holdout_bce": score["holdout_bce"],
                "last_export_holdout_iou": previous["holdout_iou"] if previous else None,
                "last_export_holdout_bce": previous["holdout_bce"] if previous else None,
            }
        )

    def summary(self) -> dict[str, Any]:
        """The gate's record for the daemon's status: counts by outcome and the recent decisions
        (oldest first), each with its reason."""
        return {
            "shipped": self.counts["shipped"],
            "skipped": self.counts["skipped"],
            "failed": self.counts["failed"],
            "last_step": self.last_step,
            "decisions": list(self.decisions),
        }
