"""Run a bundle with ONNX Runtime only: the device's code path. Never imports torch.

    runner = BundleRunner("exports/")           # an exports folder (its LATEST) or a bundle folder
    prob = runner(frame.image)                   # H x W float32 foreground probability, any frame size
    outs = runner.run(batch)                     # N x h x w x 3 uint8 at the bundle's size -> every output:
                                                 #   {"mask": N x h x w, "embedding": N x D, "segments": N x L x h x w}
    per_frame = runner.predict_all(frames)       # any frame sizes -> {output: [one per frame, at its size]}
    runner.reload_if_changed()                   # hot-load a new LATEST; a bad one is refused, the old kept

Precision: "auto" loads the bundle's 8-bit model (model.int8.onnx, about twice as fast on a CPU)
where the bundle has one and the session will run on the CPU, else the fp32 model.onnx; "fp32"
always the fp32 one; "int8" the 8-bit one, and a bundle without it is refused.

Providers: "auto" asks for CUDA when an NVIDIA GPU is present, else takes the CPU; "cuda" asks
for CUDA. Whatever the session really got is logged, and a
CUDA request that ends on the CPU is a warning (or, with strict=True, an error), never silent.

A frame is fitted into the bundle's W x H the way the learner trained (manifest preprocessing):
"fit" (compact) scales it keeping the aspect ratio to fit the box the net trained at (fit_box,
e.g. 320 x 240) and pads right and bottom to W x H (320 x 256) by repeating the edge; the
outputs are cut back to the frame's region and resized to the frame. "stretch" (alexnet)
resizes the frame to W x H and the outputs back.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import UserError, first_line
from common.log import log_event
from exporter.bundle import LATEST, PRECISIONS, Bundle, load_bundle, read_pointer, resolve_bundle

logger = logging.getLogger(__name__)

PROVIDERS = ("auto", "cpu", "cuda")
CPU_EP, CUDA_EP = "CPUExecutionProvider", "CUDAExecutionProvider"


@dataclass(frozen=True)
class Device:
    """Where a session runs: type "cpu" or "cuda" (what `motionmask predict` prints)."""

    type: str
    provider: str


def nvidia_gpu_present() -> bool:
    return Path("/proc/driver/nvidia/version").exists() or Path("/dev/nvidia0").exists()


def make_session(
    model: bytes | str | Path, provider: str = "auto", threads: int = 0, strict: bool = False, what: str = "model"
) -> tuple[Any, Device]:
    """An ONNX Runtime session on the requested provider; logs the provider it really got.
    threads: intra-op threads, 0 = ONNX Runtime's default (one per physical core)."""
    import onnxruntime as ort

    if provider not in PROVIDERS:
        raise UserError(f"provider {provider!r}: expected one of {', '.join(PROVIDERS)}")
    available = ort.get_available_providers()
    has_cuda_ep = CUDA_EP in available
    # auto wants CUDA wherever there is an NVIDIA GPU: a GPU box whose onnxruntime lacks the CUDA
    # provider runs on the CPU with a warning, not silently
    want_cuda = provider == "cuda" or (provider == "auto" and nvidia_gpu_present())
    reason = ""
    if want_cuda and not has_cuda_ep:
        reason = f"onnxruntime {ort.__version__} has no CUDA provider (pip install onnxruntime-gpu)"
    elif want_cuda and hasattr(ort, "preload_dlls"):
        try:  # CUDA and cuDNN from the nvidia-* pip packages (as torch installs them), when present
            ort.preload_dlls(directory="")
        except Exception:  # noqa: BLE001 - missing libraries show up as the provider failing below
            pass
    so = ort.SessionOptions()
    so.intra_op_num_threads = max(0, int(threads))
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    providers = [CUDA_EP, CPU_EP] if (want_cuda and has_cuda_ep) else [CPU_EP]
    src = str(model) if isinstance(model, Path) else model
    try:
        session = ort.InferenceSession(src, so, providers=providers)
    except Exception as e:  # noqa: BLE001 - ORT raises its own exception types for invalid models
        raise UserError(f"{what}: ONNX Runtime cannot load it ({first_line(e, 300)})") from None
    got = session.get_providers()
    device = Device("cuda" if got and got[0] == CUDA_EP else "cpu", got[0] if got else CPU_EP)
    if want_cuda and device.type != "cuda":
        reason = reason or "the CUDA provider did not load (CUDA 12/13 or cuDNN 9 libraries missing?)"
        if strict:
            raise UserError(f"{what}: CUDA was requested but ONNX Runtime runs on the CPU: {reason}; use --device cpu")
        log_event(
            logger,
            "ort_provider_fallback",
            logging.WARNING,
            model=what,
            requested=provider,
            using=device.provider,
            reason=reason,
        )
    log_event(
        logger,
        "ort_session",
        model=what,
        provider=device.provider,
        requested=provider,
        threads=threads or "default",
        ort=ort.__version__,
    )
    return session, device


# ----------------------------------------------------------------------------------------------
# Frames in, frames out


def _cv2() -> Any:
    """OpenCV, loaded at the first frame and not at import: `motionmask device` imports this
    module and must load nothing of the rig role. A device-only install has NumPy stand-ins
    instead (common/npcv.py)."""
    try:
        import cv2
    except ModuleNotFoundError:
        from common import npcv as cv2
    return cv2


def fit_frame(
    image: np.ndarray, width: int, height: int, resize: str = "fit", box: tuple[int, int] | None = None
) -> tuple[np.ndarray, tuple[int, int]]:
    """An RGB frame as the model's input (height x width x 3 uint8) and the (h, w) region of that
    input the frame covers. box: (w, h) the frame is fitted into ("fit"; default the whole input),
    e.g. the 320 x 240 the net trained at inside a 320 x 256 input."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an H x W x 3 uint8 RGB frame, got {image.dtype} {image.shape}")
    h, w = image.shape[:2]
    cv2 = _cv2()
    if resize == "stretch":
        interp = cv2.INTER_AREA if (w > width or h > height) else cv2.INTER_LINEAR
        x = image if (w, h) == (width, height) else cv2.resize(image, (width, height), interpolation=interp)
        return np.ascontiguousarray(x), (height, width)
    bw, bh = box or (width, height)
    scale = min(bw / w, bh / h)
    ww, wh = max(1, min(width, round(w * scale))), max(1, min(height, round(h * scale)))
    x = (
        image
        if (ww, wh) == (w, h)
        else cv2.resize(image, (ww, wh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    )
    if (ww, wh) != (width, height):  # pad right and bottom; the padding is cut off the outputs again
        x = cv2.copyMakeBorder(x, 0, height - wh, 0, width - ww, cv2.BORDER_REPLICATE)
    return np.ascontiguousarray(x), (wh, ww)


def unfit_map(out: np.ndarray, region: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """An h x w output map of the model's input -> the frame's (H, W): cut the region, resize."""
    cv2 = _cv2()
    rh, rw = region
    m = out[:rh, :rw]
    H, W = size
    if m.shape[:2] != (H, W):
        m = cv2.resize(m, (W, H), interpolation=cv2.INTER_LINEAR)
    return m


MAX_SIDE = 16384  # pixels of a model input side; a manifest claiming more is foreign or broken


def _side(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 < v <= MAX_SIDE


def check_runtime_spec(m: dict[str, Any], where: str | Path) -> None:
    """The manifest fields a runner reads (input, outputs, preprocessing), checked for shape and
    type before they are used: a manifest from a device's exporter is outside input, and a wrong
    one must be refused with a UserError (the device keeps its bundle), never a KeyError."""
    spec, outs, pre = m.get("input"), m.get("outputs", []), m.get("preprocessing", {})
    if not (
        isinstance(spec, dict)
        and isinstance(spec.get("name"), str)
        and _side(spec.get("width"))
        and _side(spec.get("height"))
    ):
        raise UserError(f"{where}: the manifest's input is not {{name, width, height}} (1..{MAX_SIDE} px)")
    if not (isinstance(outs, list) and all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in outs)):
        raise UserError(f"{where}: the manifest's outputs are not a list of {{name}}")
    box = pre.get("fit_box") if isinstance(pre, dict) else None
    if not (
        isinstance(pre, dict)
        and pre.get("resize", "fit") in ("fit", "stretch")
        and (not box or (isinstance(box, list) and len(box) == 2 and all(_side(v) for v in box)))
    ):
        raise UserError(f"{where}: the manifest's preprocessing is not resize fit|stretch with a fit_box [w, h]")


@dataclass
class _Loaded:
    bundle: Bundle
    session: Any
    device: Device
    input_name: str
    outputs: list[str]
    precision: str  # "fp32" or "int8": the model file the session runs


class BundleRunner:
    """A bundle with ONNX Runtime. path: a bundle folder, or an exports folder whose LATEST is
    followed by reload_if_changed()."""

    def __init__(
        self,
        path: str | Path,
        provider: str = "auto",
        threads: int = 0,
        strict: bool = False,
        check_hash: bool = True,
        precision: str = "auto",
    ):
        if precision not in PRECISIONS:
            raise UserError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
        self.source = Path(path).expanduser()
        self.provider, self.threads, self.strict, self.check_hash = provider, threads, strict, check_hash
        self.precision_wanted = precision
        self._lock = threading.Lock()
        self._latest_seen = read_pointer(self.source)
        self._loaded = self._load(resolve_bundle(self.source))

    # -- loading ----------------------------------------------------------------------------
    def _load(self, bundle_dir: Path) -> _Loaded:
        bundle = load_bundle(bundle_dir, self.check_hash)
        m = bundle.manifest
        check_runtime_spec(m, bundle.dir)
        model = self._model_file(bundle)
        session, device = make_session(
            model, self.provider, self.threads, self.strict, what=f"{bundle.dir.name}/{model.name}"
        )
        inputs = session.get_inputs()
        spec = m.get("input", {})
        if len(inputs) != 1 or inputs[0].name != spec.get("name") or inputs[0].type != "tensor(uint8)":
            raise UserError(
                f"{bundle.dir}: model input {[(i.name, i.type) for i in inputs]} does not match the "
                f"manifest's {spec.get('name')!r} uint8"
            )
        shape = inputs[0].shape
        if list(shape[1:]) != [spec["height"], spec["width"], 3]:
            raise UserError(
                f"{bundle.dir}: model input shape {shape} does not match the manifest's "
                f"{spec['height']} x {spec['width']} x 3"
            )
        names = [o.name for o in session.get_outputs()]
        wanted = [o["name"] for o in m.get("outputs", [])]
        if names != wanted:
            raise UserError(f"{bundle.dir}: model outputs {names} do not match the manifest's {wanted}")
        return _Loaded(bundle, session, device, inputs[0].name, names, "int8" if model != bundle.model_path else "fp32")

    def _model_file(self, bundle: Bundle) -> Path:
        """The model this runner's precision picks from the bundle (module docstring)."""
        int8 = bundle.int8_path
        if self.precision_wanted == "int8" and int8 is None:
            raise UserError(
                f"{bundle.dir}: the bundle has no 8-bit model (exported with export.int8 false, by an older "
                "motionmask, or refused by its check: see the manifest's int8); use precision auto or fp32"
            )
        on_cpu = self.provider == "cpu" or (self.provider == "auto" and not nvidia_gpu_present())
        if int8 is not None and (self.precision_wanted == "int8" or (self.precision_wanted == "auto" and on_cpu)):
            return int8
        return bundle.model_path

    def reload_if_changed(self) -> bool:
        """When the runner follows an exports folder and its LATEST names another version, load
        that one and swap it in. A bundle that fails to load is logged and refused; the current
        one stays in service. True when a new bundle was swapped in."""
        latest = read_pointer(self.source)
        if latest is None or latest == self._latest_seen:
            return False
        self._latest_seen = latest
        current = self._loaded.bundle.version
        if latest == current:
            return False
        try:
            loaded = self._load(self.source / latest)
        except (UserError, OSError) as e:
            log_event(logger, "bundle_refused", logging.WARNING, version=latest, error=str(e), keeping=current)
            return False
        with self._lock:
            self._loaded = loaded
        log_event(
            logger,
            "bundle_loaded",
            version=latest,
            previous=current,
            provider=loaded.device.provider,
            precision=loaded.precision,
        )
        return True

    # -- what is loaded ---------------------------------------------------------------------
    @property
    def bundle(self) -> Bundle:
        return self._loaded.bundle

    @property
    def manifest(self) -> dict[str, Any]:
        return self._loaded.bundle.manifest

    @property
    def version(self) -> str:
        return self._loaded.bundle.version

    @property
    def path(self) -> Path:
        return self._loaded.bundle.dir

    @property
    def step(self) -> int:
        return self._loaded.bundle.step

    @property
    def device(self) -> Device:
        return self._loaded.device

    @property
    def outputs(self) -> list[str]:
        return list(self._loaded.outputs)

    @property
    def precision(self) -> str:
        """ "fp32" or "int8": which of the bundle's models runs."""
        return self._loaded.precision

    @property
    def width(self) -> int:
        return int(self.manifest["input"]["width"])

    @property
    def height(self) -> int:
        return int(self.manifest["input"]["height"])

    @property
    def resize(self) -> str:
        return str(self.manifest.get("preprocessing", {}).get("resize", "fit"))

    @property
    def box(self) -> tuple[int, int]:
        """(w, h) a frame is fitted into: the size the net trained at (<= the input size)."""
        b = self.manifest.get("preprocessing", {}).get("fit_box")
        return (int(b[0]), int(b[1])) if b else (self.width, self.height)

    # -- running ----------------------------------------------------------------------------
    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """N x height x width x 3 uint8 RGB (the bundle's size) -> {output name: array}."""
        loaded = self._loaded  # one reference: a concurrent reload swaps the whole bundle
        spec = loaded.bundle.manifest["input"]
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (spec["height"], spec["width"], 3):
            raise ValueError(
                f"expected N x {spec['height']} x {spec['width']} x 3 uint8, got {images.dtype} {images.shape}"
            )
        outs = loaded.session.run(loaded.outputs, {loaded.input_name: np.ascontiguousarray(images)})
        return dict(zip(loaded.outputs, outs))

    def predict(self, frames: list[np.ndarray], output: str = "mask") -> list[np.ndarray]:
        """Frames of any size (H x W x 3 uint8 RGB) -> one output of each, in one batch: mask
        H x W float32 foreground probability; segments L x H x W; embedding a D vector."""
        if output not in self.outputs:
            raise UserError(f"{self.path}: the bundle has no output {output!r} (it has {', '.join(self.outputs)})")
        return self.predict_all(frames, [output])[output]

    def predict_all(self, frames: list[np.ndarray], names: list[str] | None = None) -> dict[str, list[np.ndarray]]:
        """Every output of the bundle (or those named) for frames of any size, maps at each frame's size."""
        names = list(self.outputs) if names is None else names
        if not frames:
            return {name: [] for name in names}
        w, h, mode, box = self.width, self.height, self.resize, self.box
        fitted = [fit_frame(f, w, h, mode, box) for f in frames]
        outs = self.run(np.stack([x for x, _ in fitted]))
        result = {}
        for name in names:
            out = outs[name]
            if out.ndim == 2:  # one vector per image (embedding): the whole fitted frame, padding included
                result[name] = list(out)
            elif out.ndim == 4:  # N x L x h x w (segments): each channel like a mask
                result[name] = [
                    np.stack([unfit_map(c, region, f.shape[:2]) for c in o])
                    for o, (_, region), f in zip(out, fitted, frames)
                ]
            else:
                result[name] = [unfit_map(o, region, f.shape[:2]) for o, (_, region), f in zip(out, fitted, frames)]
        return result

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return self.predict([image])[0]

    def latency_ms(self, batch: int = 1, runs: int = 20, warmup: int = 3) -> list[float]:
        """Wall time of `runs` calls on a batch of zeros, after `warmup` untimed ones."""
        x = np.zeros((batch, self.height, self.width, 3), np.uint8)
        for _ in range(warmup):
            self.run(x)
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            self.run(x)
            times.append((time.perf_counter() - t0) * 1e3)
        return times


def follows_latest(path: str | Path) -> bool:
    """True for an exports folder (it has a LATEST), whose bundle can change under a runner."""
    return (Path(path) / LATEST).is_file() and not os.path.isfile(Path(path) / "manifest.json")
