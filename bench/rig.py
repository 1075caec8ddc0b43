"""The student where it lives (issue 19): one camera, one scene, a long stream, actors that stop.

For each generator seed and training seed, on the rig stream of synth/rig.py (cached under
bench/out/rig/, keyed by seed and generator version; 3 minutes at 15 fps, the first 70% to train,
the later 30% scored against its ground truth):

  teacher    the motion masks (streamer.motion.pipeline.MotionSegmenter, as `motionmask masks` writes
             them: uint8), run over the stream from a little before the split so it has history
  student    `motionmask train` (the CLI, defaults; --minutes) on the first 70%, its checkpoint
             through learner.predict.Predictor, one frame at a time
  exported   that checkpoint exported (exporter.export.export_checkpoint: a verified ONNX bundle)
             and its fp32 model run by ONNX Runtime (exporter.runtime.BundleRunner)
  exported_int8  the bundle's 8-bit model (exporter/quantize.py), which cameras and CPU runners
             load by default (export.student_precision auto); scored on the CPU
  fused      the motion mask and the student a camera runs (export.student_precision: on a CPU the
             8-bit model), combined by motionmask/fuse.py (the function the camera process
             publishes kind `fused` with), the student on every frame
  live       what a subscriber receives: the same, but as motionmask/camera_process.py runs it: the
             bundle on every export.student_every-th frame, its mask carried along the teacher's
             flow in between (motionmask.fuse.CarriedStudent), fused with every frame's motion mask
  (without motionmask/fuse.py the two rows say why they are missing: fuse_function below)

Per method, on the scored frames (bench/maskscore.py MaskScore, threshold 0.5):
  miou          mean IoU over frames with an actor
  miou_still    ... over frames where every actor present stands still (>= 1 s without moving)
  miou_moving   ... over frames where no actor present stands still (frames with both count only in miou)
  still_recall  of all pixels of actors standing still, the fraction marked (pooled over frames)
  flicker       mean IoU between consecutive masks of the same actor: the mask restricted to the
                actor's ground-truth region (grown by FLICKER_GROW px, other actors' pixels out),
                frame t-1 against frame t, where either has one; higher = steadier. A moving
                actor's own region changes between frames: the "ground truth" row is that ceiling.
                flicker_still: the same over actors standing still in both frames (ceiling 1)

Who is who (configs/multitask.yaml, trained like the student for --id-minutes): a square crop of
every actor (synth.things.object_patch: 1.2 x its box, 64 px) every ID_STRIDE frames of the
scored part; each crop retrieves its nearest crop (top-1) among all crops of OTHER visits, by the
student's embedding (learner/heads.py EmbeddingHead, cosine) and by a colour histogram of the same
crop (RGB 8x8x8, Bhattacharyya); right when it is the same actor. `chance`: the share of same-actor
crops among the candidates. The run's embedding loss (train.jsonl) and pair warnings are recorded.

Real footage (../shared/data/vtest.avi, a fixed camera over a square): `motionmask train` on the
later 70%, the teacher and the student on the first 30%, a contact sheet bench/out/rig_vtest.png:
frames, teacher, student; people who stand still (a reference-mask region, synth/reference_masks.py,
whose pixels hardly changed over the last second) outlined in yellow.

    python -m bench.rig --gen-seeds 0 --train-seeds 0 --minutes 12   # one run: ~45 min on 2 cores
    python -m bench.rig                        # the issue's 2 x 2 runs (hours on a CPU)
    python -m bench.rig --device cuda          # the GPU recipe (bench/gpu_student.sh): batch 256, crops 224
    python -m bench.rig --quick                # smoke: a 30 s stream, a few steps, no vtest training
Prints markdown tables and writes bench/out/rig.json (--out) and bench/out/rig_sheet.png.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import yaml

from bench.common import OUT, ROOT, cpu_model, fmt, git_revision, overlay, save_json, tile
from bench.maskscore import MaskScore
from common.config import merge
from common.errors import UserError
from streamer.config import SourceConfig
from streamer.png import write_png

METHODS = ("teacher", "student", "exported", "exported_int8", "fused", "live")
NAMES = {
    "teacher": "teacher (motion masks)",
    "student": "student (checkpoint)",
    "exported": "student exported (ONNX Runtime, fp32)",
    "exported_int8": "student exported, 8-bit (ONNX Runtime)",
    "fused": "fused, student on every frame",
    "live": "live fused mask (student every Nth frame, carried)",
    "ground_truth": "ground truth (flicker ceiling)",
}
TEACHER_WARMUP_S = 4.0  # seconds of stream before the split the teacher sees first: its motion history
FLICKER_GROW = 4  # px an actor's region grows by before a mask is cut to it (masks overshoot edges a little)
ID_STRIDE = 5  # frames between crops for who-is-who
ID_PATCH = 64  # crop side (streamer.patches.size of configs/multitask.yaml)
ID_MIN_PIXELS = 300  # an actor showing fewer pixels is not cropped
SHEET_FRAMES = 6
TARGET_GAIN = 0.10  # student >= teacher + 0.10 mIoU (issue 19)
TARGET_STILL = 0.60  # the student keeps >= 60% of still-actor pixels
TARGET_EXPORT = 0.01  # the exported bundle within 0.01 mIoU of its checkpoint
CUDA_RECIPE = {"learner": {"train": {"batch": 256}, "crops": {"size": 224, "per_frame": 4}}}  # bench/gpu_student.sh
REAL_CLIP = ROOT.parent / "shared" / "data" / "vtest.avi"
STILL_DIFF = 20  # real footage: a pixel changed when its gray level moved more than this over a second...
STILL_CHANGED = 0.4  # ... and a person stands still when under this share of their pixels changed (walkers: 0.7-1)


# ----------------------------------------------------------------------------------------------
# Scores


class Truth:
    """One scored frame's ground truth, shared by every method: which actors, which stand still,
    and each actor's region for the flicker figure."""

    def __init__(self, t: int, gt: np.ndarray, inst: np.ndarray, still: np.ndarray):
        self.t, self.gt, self.inst, self.still = t, gt, inst, still > 0
        self.ids = [int(i) for i in np.unique(inst) if i]
        self.still_ids = {int(i) for i in np.unique(inst[self.still]) if i}
        if not self.ids:
            self.kind = "empty"
        elif len(self.still_ids) == len(self.ids):
            self.kind = "still"
        elif not self.still_ids:
            self.kind = "moving"
        else:
            self.kind = "mixed"
        k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * FLICKER_GROW + 1,) * 2)
        self.region = {
            i: (cv2.dilate((inst == i).astype(np.uint8), k) > 0) & ((inst == 0) | (inst == i)) for i in self.ids
        }


class RigScore:
    """Every figure of one method over the scored frames, fed in frame order."""

    def __init__(self) -> None:
        self.all, self.still, self.moving = MaskScore(), MaskScore(), MaskScore()
        self.still_hit = self.still_px = 0
        self.flicker: list[float] = []
        self.flicker_still: list[float] = []
        self._prev: tuple[int, dict[int, np.ndarray], set[int]] | None = None

    def add(self, prob: np.ndarray, truth: Truth) -> None:
        """prob: float in [0, 1], or uint8 0-255 (the published PNG's scale)."""
        self.all.add(prob, truth.gt)
        if truth.kind == "still":
            self.still.add(prob, truth.gt)
        elif truth.kind == "moving":
            self.moving.add(prob, truth.gt)
        fg = prob >= (128 if prob.dtype == np.uint8 else 0.5)
        self.still_px += int(truth.still.sum())
        self.still_hit += int((fg & truth.still).sum())
        masks = {i: fg & truth.region[i] for i in truth.ids}
        if self._prev is not None and self._prev[0] == truth.t - 1:
            _, before, still_before = self._prev
            for i, m in masks.items():
                if i not in before:
                    continue
                union = int((m | before[i]).sum())
                if not union:  # missed in both frames: steady, but recall says it, not flicker
                    continue
                iou = int((m & before[i]).sum()) / union
                self.flicker.append(iou)
                if i in truth.still_ids and i in still_before:
                    self.flicker_still.append(iou)
        self._prev = (truth.t, masks, truth.still_ids)

    def summary(self) -> dict:
        a, s, m = self.all.summary(), self.still.summary(), self.moving.summary()
        return {
            "miou": a["iou"],
            "miou_still": s["iou"],
            "miou_moving": m["iou"],
            "best_iou": a["best_iou"],
            "best_threshold": a["best_threshold"],
            "precision": a["precision"],
            "recall": a["recall"],
            "ece": a["ece"],
            "empty_fp": a["empty_fp"],
            "still_recall": self.still_hit / self.still_px if self.still_px else None,
            "flicker": _mean(self.flicker),
            "flicker_still": _mean(self.flicker_still),
            "frames": a["frames"],
            "frames_still": s["frames"],
            "frames_moving": m["frames"],
            "empty_frames": a["empty_frames"],
            "flicker_pairs": len(self.flicker),
            "flicker_still_pairs": len(self.flicker_still),
        }


def _mean(v: list[float]) -> float | None:
    return float(np.mean(v)) if v else None


# ----------------------------------------------------------------------------------------------
# The fused mask: motionmask/fuse.py's function, the one the camera process publishes with


def fuse_function() -> tuple[Callable[[np.ndarray, np.ndarray], np.ndarray] | None, str]:
    """(fuse(motion uint8, student uint8) -> uint8, where it came from) or (None, why not): the
    camera process's own function, never a stand-in; without it the fused rows are left out."""
    try:
        from motionmask import fuse  # noqa: PLC0415
    except ImportError as e:
        return None, f"motionmask.fuse not importable ({e}): fused mask not scored"
    for name in FUSE_NAMES:
        fn = getattr(fuse, name, None)
        if callable(fn):
            return fn, f"motionmask.fuse.{name}"
    return None, f"motionmask.fuse has none of {', '.join(FUSE_NAMES)}: fused mask not scored"


FUSE_NAMES = ("fuse",)  # fuse(motion uint8, student uint8) -> uint8


# ----------------------------------------------------------------------------------------------
# Streams, frames, training


def frames_of(path: Path, start: int = 0, stop: int | None = None):
    """Frames [start, stop) of a video or image folder, as the project decodes them."""
    from streamer.sources import open_source

    with open_source(str(path), SourceConfig(reconnect=False)) as source:
        for frame in source:
            if stop is not None and frame.index >= stop:
                break
            if frame.index >= start:
                yield frame


def truth_of(clip_dir: Path, t: int) -> Truth:
    from synth.things import load_gt

    return Truth(t, load_gt(clip_dir, t, "gt"), load_gt(clip_dir, t, "inst"), load_gt(clip_dir, t, "still"))


def write_train_frames(video: Path, indices: range, folder: Path) -> None:
    """Frames of `indices` as a folder of JPEGs (q95): an input `motionmask train` takes, holding
    exactly the part of the stream it may learn from."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for j, frame in enumerate(frames_of(video, indices.start, indices.stop)):
        cv2.imwrite(
            str(folder / f"{j:06d}.jpg"), cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95]
        )


def run_config(path: Path, base: str | None, seed: int, device: str, extra: dict) -> Path:
    """The YAML `motionmask train` gets: `base` (None: the built-in defaults), the training seed,
    the device (cuda: the GPU recipe of batch and crop size), then `extra` (--config) over it."""
    data = yaml.safe_load(Path(base).read_text()) if base else {}
    data.pop("cameras", None)  # a daemon's cameras: training reads the stream given on its command line
    data = merge(data, {"learner": {"train": {"seed": seed, "device": device}}})
    if device == "cuda":
        data = merge(data, CUDA_RECIPE)
        if not hasattr(cv2, "ximgproc"):  # the lent GPU machine's opencv has no ximgproc (bench/gpu_student.sh)
            data = merge(data, {"streamer": {"motion": {"superpixels": "slic"}}})
    data = merge(data, extra)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def train(inputs: Path, run: Path, cfg: Path, minutes: float, steps: int, reuse: bool = False) -> dict:
    """`motionmask train` from scratch, as a user runs it (--quiet: warnings and the summary stay;
    they go to RUN.log). Returns the summary line, the warnings and the losses of train.jsonl.
    reuse: a finished run of an earlier call (RUN.log and its last.pt) is taken as it is."""
    log = run.parent / f"{run.name}.log"
    if reuse and log.is_file() and (run / "checkpoints" / "last.pt").is_file():
        print(f"reusing {run}", file=sys.stderr, flush=True)
        return _train_record(run, log.read_text(), None)
    shutil.rmtree(run, ignore_errors=True)  # the same --out again would resume the earlier run
    cmd = [
        sys.executable,
        "-m",
        "motionmask.cli",
        "train",
        str(inputs),
        "--out",
        str(run),
        "--config",
        str(cfg),
        "--minutes",
        f"{minutes:g}",
        "--steps",
        str(steps),
        "--quiet",
    ]
    print("$ motionmask " + " ".join(cmd[3:]), file=sys.stderr, flush=True)
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    log.write_text(proc.stderr)
    if proc.returncode != 0:
        raise UserError(f"motionmask train exited with {proc.returncode}: {proc.stderr.strip()[-600:]} (all in {log})")
    rec = _train_record(run, proc.stderr, round(time.monotonic() - t0, 1))
    print(f"  {rec['summary'] or '(no summary)'}", file=sys.stderr, flush=True)
    return rec


def _train_record(run: Path, stderr: str, wall_s: float | None) -> dict:
    lines = stderr.splitlines()
    summary = [
        ln.removeprefix("motionmask train: ")
        for ln in lines
        if ln.startswith("motionmask train:") and " steps (run at step " in ln
    ]
    records = (
        [json.loads(ln) for ln in (run / "train.jsonl").read_text().splitlines() if ln.strip()]
        if (run / "train.jsonl").is_file()
        else []
    )
    emb = [r["loss_embedding"] for r in records if "loss_embedding" in r]
    first_emb = next((r["step"] for r in records if "loss_embedding" in r), None)
    return {
        "summary": summary[-1] if summary else "",
        "wall_s": wall_s,
        "steps": records[-1]["step"] if records else 0,
        "log_lines": len(records),
        "loss_first": records[0].get("loss") if records else None,
        "loss_last": records[-1].get("loss") if records else None,
        "embedding_loss_lines": len(emb),
        "embedding_loss_mean": _mean(emb),
        "embedding_loss_last": emb[-1] if emb else None,
        "embedding_first_step": first_emb,
        "embedding_loss_zero_lines": sum(1 for v in emb if v < 5e-4),
        "warnings": [ln[:300] for ln in lines if "embedding" in ln or "WARNING" in ln][:10],
        "checkpoint": str(run / "checkpoints" / "last.pt"),
    }


# ----------------------------------------------------------------------------------------------
# One run: teacher, student, exported, fused, live, frame by frame


def pick_sheet_frames(clip_dir: Path, split: int, frames: int) -> list[int]:
    """Scored frames for the sheet: half where actors stand still (the teacher's blind spot), half moving."""
    kinds: dict[str, list[int]] = {"still": [], "moving": []}
    for t in range(split, frames, 5):
        k = truth_of(clip_dir, t).kind
        if k in kinds:
            kinds[k].append(t)
    out = []
    for k in ("still", "moving"):
        v = kinds[k]
        if v:
            out += [v[i] for i in sorted(set(np.linspace(0, len(v) - 1, SHEET_FRAMES // 2).round().astype(int)))]
    return sorted(out)


def evaluate(
    video: Path,
    clip_dir: Path,
    split: int,
    frames: int,
    fps: int,
    streamer_cfg,
    checkpoint: Path,
    bundle: Path,
    device: str,
    sheet_at: list[int],
) -> dict:
    """The teacher over the stream from TEACHER_WARMUP_S before the split (its motion history), and
    on every scored frame: the teacher's uint8 mask (what `motionmask masks` writes), the student's
    checkpoint, the exported bundle, the fused mask with the bundle run on this frame, and the live
    mask as the camera publishes it (motionmask/camera_process.py: the bundle every
    export.student_every frames, carried along the flow in between, fused)."""
    from exporter.config import ExportConfig
    from exporter.runtime import BundleRunner
    from learner.predict import Predictor
    from streamer.motion.pipeline import MotionSegmenter

    predictor = Predictor(checkpoint, device)
    provider, cuda_refused = ("cuda" if device == "cuda" else "cpu"), None
    try:
        runner = BundleRunner(bundle, provider=provider, strict=device == "cuda", precision="fp32")
    except UserError as e:
        if device != "cuda":
            raise
        # the GPU run's other figures still count: the bundle is scored on the CPU, and why is said
        cuda_refused, provider = str(e), "cpu"
        print(f"exported: {e}; scoring the bundle on the CPU", file=sys.stderr, flush=True)
        runner = BundleRunner(bundle, provider=provider, precision="fp32")
    # the model a camera runs (exporter.runtime: auto is the 8-bit one on a CPU)
    camera = BundleRunner(
        bundle, provider=provider, strict=provider == "cuda", precision=ExportConfig().student_precision
    )
    fuse, fuse_note = fuse_function()
    every = max(1, ExportConfig().student_every)
    scorer = FrameScorer(predictor, runner, camera, fuse, every, streamer_cfg.flow.width)
    seg = MotionSegmenter(streamer_cfg)
    for frame in frames_of(video, max(0, split - round(TEACHER_WARMUP_S * fps)), frames):
        scorer.take(seg.push(frame), clip_dir, split, sheet_at)
    scorer.take(seg.flush(), clip_dir, split, sheet_at)
    scores = scorer.scores
    return {
        "scores": {
            k: v.summary() if k != "exported_int8" or camera.precision == "int8" else None for k, v in scores.items()
        },
        "still_frames": scores["teacher"].still.summary()["frames"],
        "moving_frames": scores["teacher"].moving.summary()["frames"],
        "fused_source": fuse_note,
        "live_student_every": every,
        "live_precision": camera.precision,
        "exported": {
            "provider": runner.device.provider,
            "cuda_refused": cuda_refused,  # --device cuda, but ONNX Runtime could not run the bundle there: why
            "version": runner.version,
            "max_abs_diff_max": max(scorer.diffs) if scorer.diffs else None,
            "max_abs_diff_mean": _mean(scorer.diffs),
        },
        "_sheet": scorer.sheet,
    }


class FrameScorer:
    """Every method's mask of each teacher result from the split on, scored against its truth; the
    bundle's largest difference from the checkpoint per frame; the frames of the sheet kept."""

    def __init__(self, predictor: Callable, runner, camera, fuse: Callable | None, every: int, flow_width: int) -> None:
        """runner: the bundle's fp32 model; camera: the model a camera runs (maybe the 8-bit one)."""
        self.predictor, self.runner, self.camera, self.fuse, self.flow_width = (
            predictor,
            runner,
            camera,
            fuse,
            flow_width,
        )
        self.carried = None
        if fuse is not None:
            from motionmask.fuse import CarriedStudent

            self.carried = CarriedStudent(every)
        names = ["teacher", "student", "exported", "exported_int8"] + (["fused", "live"] if fuse is not None else [])
        self.scores = {m: RigScore() for m in names + ["ground_truth"]}
        self.diffs: list[float] = []
        self.sheet: list[tuple] = []

    def take(self, results, clip_dir: Path, split: int, sheet_at: list[int]) -> None:
        for r in results:
            t = r.frame.index
            if t < split:
                continue
            truth = truth_of(clip_dir, t)
            motion = np.clip(r.prob * 255 + 0.5, 0, 255).astype(np.uint8)
            sp = self.predictor(r.frame.image)
            ep = self.runner(r.frame.image)
            cp = self.camera(r.frame.image) if self.camera.precision != self.runner.precision else ep
            self.diffs.append(float(np.abs(ep - sp).max()))
            if self.camera.precision == "int8":
                self.scores["exported_int8"].add(cp, truth)
            self.scores["teacher"].add(motion, truth)
            self.scores["student"].add(sp, truth)
            self.scores["exported"].add(ep, truth)
            self.scores["ground_truth"].add(truth.gt, truth)
            lp = None
            if self.fuse is not None:
                fp, lp = fused_and_live(self.fuse, self.carried, motion, cp, r, self.camera.version, self.flow_width)
                self.scores["fused"].add(fp, truth)
                self.scores["live"].add(lp, truth)
            if t in sheet_at:
                self.sheet.append((t, r.frame.image, truth.gt, truth.still, motion, sp, lp))


def fused_and_live(
    fuse: Callable, carried, motion: np.ndarray, ep: np.ndarray, r, version: str, flow_width: int
) -> tuple[np.ndarray, np.ndarray]:
    """The fused mask with the bundle run on this frame, and the live one as the camera makes it:
    the bundle's mask when it is due, else the last one carried along the flow, fused."""
    from streamer.motion.flow import working_size

    e8 = np.clip(ep * 255 + 0.5, 0, 255).astype(np.uint8)  # the camera's student mask
    fp = fuse(motion, e8)
    if carried.due(r.shot, r.flow, version):
        h, w = e8.shape
        size = (r.flow.shape[1], r.flow.shape[0]) if r.flow is not None else working_size(w, h, flow_width)
        carried.ran(e8, r.shot, version, size)
        return fp, fp
    carried.step(r.flow)
    return fp, fuse(motion, carried.mask)


def parity_frames(video: Path, split: int, n: int = 8) -> list[np.ndarray]:
    """n frames spread over the training part: the export's parity check, and the ranges of its
    8-bit model (exporter/quantize.py), which must not come from the frames it is scored on."""
    stride = max(1, split // n)
    return [f.image for f in frames_of(video, 0, split) if f.index % stride == 0][:n]


def export_bundle(checkpoint: Path, out: Path, parity_frames: list[np.ndarray]) -> Path:
    from exporter.config import ExportConfig
    from exporter.export import export_checkpoint

    shutil.rmtree(out, ignore_errors=True)
    return export_checkpoint(checkpoint, out, ExportConfig(), frames=parity_frames).path


def crops_of(video: Path, clip_dir: Path, entry: dict, split: int, frames: int) -> tuple[list, list, list]:
    """(64 x 64 crops, actor ids, visit keys) of every actor every ID_STRIDE scored frames."""
    from synth.things import load_gt, object_patch

    visits = {a["id"]: a["visits"] for a in entry["cast"]}
    crops, ids, keys = [], [], []
    for frame in frames_of(video, split, frames):
        t = frame.index
        if (t - split) % ID_STRIDE:
            continue
        inst = load_gt(clip_dir, t, "inst")
        for i in (int(v) for v in np.unique(inst) if v):
            p = object_patch(frame.image, inst == i, ID_PATCH, ID_MIN_PIXELS)
            if p is None:
                continue
            visit = next((n for n, v in enumerate(visits[i]) if v["enter"] <= t < v["leave"]), -1)
            crops.append(p)
            ids.append(i)
            keys.append((i, visit))
    return crops, ids, keys


def colour_histogram(crop: np.ndarray) -> np.ndarray:
    h = cv2.calcHist([crop], [0, 1, 2], None, [8, 8, 8], [0, 256] * 3).ravel()
    return np.sqrt(h / max(h.sum(), 1))  # dot products of these are Bhattacharyya coefficients


def embeddings(checkpoint: Path, crops: list[np.ndarray], device: str) -> np.ndarray:
    """The student's embedding head on each crop (as the trainer feeds patches: learner/train.py)."""
    import torch

    from learner.heads import forward_heads
    from learner.predict import Predictor

    p = Predictor(checkpoint, device)
    model = p.model
    if "embedding" not in getattr(model, "heads", {}):
        raise UserError(f"{checkpoint}: no embedding head; train with configs/multitask.yaml")
    out = []
    with torch.no_grad():
        for i in range(0, len(crops), 64):
            x = torch.from_numpy(np.stack(crops[i : i + 64])).to(p.device).permute(0, 3, 1, 2).float()
            side = getattr(model, "input_size", None)
            if side and x.shape[-1] != side:
                x = torch.nn.functional.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)
            out.append(forward_heads(model, model.normalize(x), ["embedding"])["embedding"].float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 1), np.float32)


def top1(vectors: np.ndarray, ids: list[int], keys: list[tuple]) -> dict:
    """Each crop's nearest (largest dot product) among the crops of other visits: the same actor?
    Only crops whose actor shows on another visit ask."""
    ids_a = np.array(ids)
    keys_a = np.array([hash(k) for k in keys])
    sim = vectors @ vectors.T
    right, chance = [], []
    for q in range(len(ids)):
        other = keys_a != keys_a[q]
        if not (other & (ids_a == ids_a[q])).any():
            continue
        s = np.where(other, sim[q], -np.inf)
        right.append(float(ids_a[int(np.argmax(s))] == ids_a[q]))
        chance.append(float((ids_a[other] == ids_a[q]).mean()))
    return {"top1": _mean(right), "queries": len(right), "chance": _mean(chance)}


def who_is_who(crops, ids, keys, checkpoint: Path, device: str) -> dict:
    hist = np.stack([colour_histogram(c) for c in crops]) if crops else np.zeros((0, 512))
    emb = embeddings(checkpoint, crops, device) if crops else np.zeros((0, 1))
    return {
        "crops": len(crops),
        "actors": len(set(ids)),
        "visits": len(set(keys)),
        "embedding": top1(emb, ids, keys),
        "colour_histogram": top1(hist, ids, keys),
    }


# ----------------------------------------------------------------------------------------------
# Real footage


def still_regions(ref: np.ndarray, gray: np.ndarray, gray_before: np.ndarray | None) -> np.ndarray:
    """The reference mask's regions (255) whose pixels hardly changed over the last second: people
    standing still. A frame-difference test: motion-free, so it does not ask the teacher."""
    out = np.zeros(ref.shape, bool)
    if gray_before is None:
        return out
    n, lab = cv2.connectedComponents((ref > 192).astype(np.uint8))
    changed = cv2.absdiff(gray, gray_before) > STILL_DIFF
    for i in range(1, n):
        r = lab == i
        if r.sum() >= 200 and changed[r].mean() < STILL_CHANGED:
            out |= r
    return out


def real_part(args, extra: dict, work: Path, sheet_path: Path) -> dict:
    """vtest: train on the later 70%, teacher and student on the first 30%, the contact sheet."""
    from learner.predict import Predictor
    from motionmask.config import load_config
    from streamer.motion.pipeline import MotionSegmenter

    clip = Path(args.real_clip)
    if not clip.is_file():
        return {"skipped": f"{clip}: not there"}
    n = sum(1 for _ in frames_of(clip, 0, args.real_frames))
    first = int(n * 0.3)
    work.mkdir(parents=True, exist_ok=True)
    if not (args.reuse and (work / "run.log").is_file()):
        write_train_frames(clip, range(first, n), work / "train")
    cfg = run_config(work / "cfg.yaml", None, 0, args.device, extra)
    tr = train(work / "train", work / "run", cfg, args.real_minutes, args.real_steps, args.reuse)
    ref_dir = vtest_reference(clip)
    fps = 10
    scfg = load_config(cfg).streamer
    seg, student = MotionSegmenter(scfg), Predictor(tr["checkpoint"], args.device)
    picks = set(np.linspace(fps, first - 1, 8).round().astype(int).tolist())
    grays: dict[int, np.ndarray] = {}
    rows, still_frames, agree = [], 0, []

    def take(results) -> None:
        nonlocal still_frames
        for r in results:
            t = r.frame.index
            gray = cv2.cvtColor(r.frame.image, cv2.COLOR_RGB2GRAY)
            grays[t] = gray
            grays.pop(t - fps - 1, None)
            still = np.zeros(gray.shape, bool)
            if ref_dir is not None:
                ref = cv2.imread(str(ref_dir / "gt" / f"{t:06d}.png"), cv2.IMREAD_UNCHANGED)
                still = still_regions(ref, gray, grays.get(t - fps))
            still_frames += int(still.any())
            sp = student(r.frame.image)
            t_fg, s_fg = r.prob >= 0.5, sp >= 0.5
            if t_fg.any() or s_fg.any():
                agree.append(float((t_fg & s_fg).sum() / (t_fg | s_fg).sum()))
            if t in picks:
                rows.append((t, r.frame.image, r.prob, sp, still))

    for frame in frames_of(clip, 0, first):
        take(seg.push(frame))
    take(seg.flush())
    if rows:
        vtest_sheet(sheet_path, rows)
    return {
        "clip": str(clip),
        "frames": n,
        "train_frames": [first, n - 1],
        "shown_frames": [0, first - 1],
        "train": tr,
        "agreement_iou": _mean(agree),
        "frames_with_still_people": still_frames,
        "still_marks": "reference masks + frame difference" if ref_dir is not None else "none",
        "contact_sheet": str(sheet_path) if rows else None,
    }


def vtest_reference(clip: Path) -> Path | None:
    """The reference masks' folder of the real clip (built once under bench/out), or None."""
    from synth.reference_masks import reference_set

    if clip.resolve() != REAL_CLIP.resolve():
        return None
    try:
        root, entries = reference_set(OUT)
        return root / next(e["name"] for e in entries if e["name"] == clip.stem)
    except (UserError, StopIteration) as e:
        print(f"rig: no reference masks for {clip.name} ({e}); no still marks", file=sys.stderr)
        return None


def vtest_sheet(path: Path, rows: list[tuple]) -> None:
    """A column per frame: the frame, the teacher, the student; still people outlined in yellow."""
    cols = []
    for t, rgb, tp, sp, still in rows:
        marks = []
        for img in (
            tile(rgb, 240, f"#{t}"),
            tile(overlay(rgb, tp), 240, "teacher (motion)"),
            tile(overlay(rgb, sp), 240, "student (one frame)"),
        ):
            if still.any():
                s = cv2.resize(still.astype(np.uint8), (img.shape[1], img.shape[0]), interpolation=cv2.INTER_NEAREST)
                contours, _ = cv2.findContours(s, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
                img = cv2.drawContours(img.copy(), contours, -1, (255, 230, 0), 2)
            marks.append(img)
        cols.append(np.pad(np.concatenate(marks, 0), ((0, 0), (0, 4), (0, 0))))
    write_png(path, np.concatenate(cols, 1))


# ----------------------------------------------------------------------------------------------
# The whole benchmark


def rig_sheet(path: Path, rows: list[tuple], width: int = 200) -> None:
    """Columns of scored frames: the frame with its ground truth (still actors outlined in yellow),
    teacher, student, the live fused mask."""
    cols = []
    for t, rgb, gt, still, tp, sp, fp in sorted(rows, key=lambda r: r[0]):
        first = tile(overlay(rgb, gt > 0), width, f"#{t} truth")
        s = cv2.resize(still.astype(np.uint8), (first.shape[1], first.shape[0]), interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(s, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        first = cv2.drawContours(first.copy(), contours, -1, (255, 230, 0), 2)
        tiles = [first, tile(overlay(rgb, tp, 128), width, "teacher"), tile(overlay(rgb, sp), width, "student")]
        if fp is not None:
            tiles.append(tile(overlay(rgb, fp, 128), width, "live fused"))
        cols.append(np.pad(np.concatenate(tiles, 0), ((0, 0), (0, 4), (0, 0))))
    if cols:
        write_png(path, np.concatenate(cols, 1))


def spread(values: list[float | None]) -> dict | None:
    v = [x for x in values if x is not None]
    return {"mean": float(np.mean(v)), "min": float(min(v)), "max": float(max(v)), "n": len(v)} if v else None


def targets(runs: list[dict]) -> dict:
    """The issue's targets, each met or not, over every run."""
    by_gen: dict[int, list[float]] = {}
    for r in runs:
        s, t = r["methods"]["student"]["miou"], r["methods"]["teacher"]["miou"]
        if s is not None and t is not None:
            by_gen.setdefault(r["gen_seed"], []).append(s - t)
    gains = {str(g): float(np.mean(v)) for g, v in by_gen.items()}
    still = [r["methods"]["student"]["still_recall"] for r in runs]
    exp = [  # every model of the bundle: fp32, and the 8-bit one where the bundle has it
        abs(r["methods"][m]["miou"] - r["methods"]["student"]["miou"])
        for r in runs
        for m in ("exported", "exported_int8")
        if r["methods"].get(m) and r["methods"][m]["miou"] is not None and r["methods"]["student"]["miou"] is not None
    ]
    fused = [
        r["methods"]["live"]["miou"]
        - max(
            r["methods"][m]["miou"]
            for m in ("teacher", "exported", "exported_int8")
            if r["methods"].get(m) and r["methods"][m]["miou"] is not None
        )
        for r in runs
        if r["methods"].get("live") and r["methods"]["live"]["miou"] is not None
    ]
    ids = [
        (r["id"]["embedding"]["top1"], r["id"]["colour_histogram"]["top1"])
        for r in runs
        if r.get("id") and r["id"]["embedding"]["top1"] is not None
    ]
    return {
        "student_gain": {
            "want": f">= +{TARGET_GAIN}",
            "per_gen_seed": gains,
            "met": bool(gains) and all(v >= TARGET_GAIN for v in gains.values()),
        },
        "student_still_recall": {
            "want": f">= {TARGET_STILL}",
            "values": still,
            "met": bool(still) and all(v is not None and v >= TARGET_STILL for v in still),
        },
        "export_gap": {"want": f"<= {TARGET_EXPORT}", "values": exp, "met": bool(exp) and max(exp) <= TARGET_EXPORT},
        "live_beats_both": {
            "want": "live mIoU - max(teacher, exported fp32 and 8-bit) > 0",
            "values": fused,
            "met": (bool(fused) and min(fused) > 0) if fused else None,
        },
        "who_is_who": {
            "want": "embedding top-1 > colour histogram top-1",
            "values": ids,
            "met": (all(e > c for e, c in ids)) if ids else None,
        },
    }


def print_tables(doc: dict) -> None:
    for r in doc["runs"]:
        st = r["stream"]
        print(
            f"\n### rig seed {r['gen_seed']}, training seed {r['train_seed']}: scored frames {st['split']}-"
            f"{st['frames'] - 1} ({st['frames_still']} with every actor still, {st['frames_moving']} all moving)"
        )
        print(f"student: {r['train']['summary']}")
        print("\n| method | mIoU | mIoU still | mIoU moving | still-actor recall | flicker IoU | flicker IoU still |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for m in (*METHODS, "ground_truth"):
            s = r["methods"].get(m)
            if s is None:
                why = "the bundle has no 8-bit model" if m == "exported_int8" else r["fused_source"]
                print(f"| {NAMES[m]} | not scored: {why} | | | | | |")
                continue
            if m == "ground_truth":
                print(f"| {NAMES[m]} | | | | | {fmt(s['flicker'])} | {fmt(s['flicker_still'])} |")
                continue
            print(
                f"| {NAMES[m]} | {fmt(s['miou'])} | {fmt(s['miou_still'])} | {fmt(s['miou_moving'])} | "
                f"{fmt(s['still_recall'])} | {fmt(s['flicker'])} | {fmt(s['flicker_still'])} |"
            )
        e = r["exported_check"]
        print(
            f"\nexported on {e['provider']}: max |ONNX - checkpoint| per frame: mean {fmt(e['max_abs_diff_mean'])}, "
            f"worst {fmt(e['max_abs_diff_max'])}"
            + (f" (not on CUDA: {e['cuda_refused']})" if e.get("cuda_refused") else "")
        )
        if r.get("id"):
            i = r["id"]
            print(
                f"who is who ({i['crops']} crops of {i['actors']} actors, {i['visits']} visits; "
                "top-1 over other visits): "
                f"embedding {fmt(i['embedding']['top1'])}, colour histogram {fmt(i['colour_histogram']['top1'])}, "
                f"chance {fmt(i['embedding']['chance'])}; "
                f"embedding loss logged on {i['train']['embedding_loss_lines']}"
                f" of {i['train']['log_lines']} log lines, mean {fmt(i['train']['embedding_loss_mean'])}"
            )
    print("\n### targets (issue 19; live = what a subscriber receives)")
    for k, v in doc["targets"].items():
        vals = v.get("per_gen_seed", v.get("values"))
        print(f"- {k} {v['want']}: {'met' if v['met'] else ('n/a' if v['met'] is None else 'NOT met')} ({vals})")
    real = doc.get("real")
    if real:
        if "skipped" in real or "error" in real:
            print(f"\nvtest: not done ({real.get('skipped') or real.get('error')})")
        else:
            print(
                f"\nvtest: trained on frames {real['train_frames']}, shown {real['shown_frames']}: "
                f"agreement IoU {fmt(real['agreement_iou'])}, {real['frames_with_still_people']} frames with someone "
                f"standing still; {real['train']['summary']}; sheet {real['contact_sheet']}"
            )


def _write(out: Path, doc: dict) -> None:
    save_json(out, doc, indent=1, default=str)


def main() -> int:
    ap = argparse.ArgumentParser(
        prog=f"python -m {__spec__.name}", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--minutes", type=float, default=12.0, help="training minutes per student (default 12)")
    ap.add_argument("--steps", type=int, default=0, help="stop each training at this step (0: --minutes only)")
    ap.add_argument("--id-minutes", type=float, default=None, help="minutes of the multitask run (default --minutes)")
    ap.add_argument("--real-minutes", type=float, default=None, help="minutes of the vtest run (default --minutes)")
    ap.add_argument(
        "--gen-seeds",
        type=int,
        nargs="+",
        default=None,
        help="rig generator seeds (default 0 1; --quick: 2, whose 30-s stream has actors in its later part)",
    )
    ap.add_argument("--train-seeds", type=int, nargs="+", default=[0, 1], help="training seeds (default 0 1)")
    ap.add_argument("--stream-minutes", type=float, default=3.0, help="length of the rig stream (default 3)")
    ap.add_argument("--ptz", action="store_true", help="the rig with a slow pan-tilt-zoom sweep")
    ap.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        default="cpu",
        help="cuda: the GPU recipe (batch 256, crops 224 x 4 per frame), ONNX Runtime's CUDA provider",
    )
    ap.add_argument("--config", default=None, help="YAML merged over every training's config (e.g. a tiny net)")
    ap.add_argument(
        "--id-config", default=str(ROOT / "configs" / "multitask.yaml"), help="config of the who-is-who run"
    )
    ap.add_argument("--no-id", action="store_true", help="skip who-is-who (the multitask training)")
    ap.add_argument("--real-clip", default=str(REAL_CLIP), help="real footage from a fixed camera")
    ap.add_argument("--real-frames", type=int, default=100000, help="at most this many frames of it")
    ap.add_argument("--no-real", action="store_true", help="skip the real footage")
    ap.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: a 0.5-minute stream, 5 steps, one seed each, 200 frames of vtest",
    )
    ap.add_argument(
        "--reuse",
        action="store_true",
        help="take the finished trainings of an earlier call with the same --out as they are (scores again)",
    )
    ap.add_argument("--out", default=str(OUT / "rig.json"))
    args = ap.parse_args()
    if args.quick:
        args.stream_minutes, args.steps, args.minutes = 0.5, args.steps or 5, 0.0
        args.gen_seeds, args.train_seeds, args.real_frames = (args.gen_seeds or [2])[:1], args.train_seeds[:1], 200
    args.gen_seeds = args.gen_seeds or [0, 1]
    args.id_minutes = args.minutes if args.id_minutes is None else args.id_minutes
    args.real_minutes = args.minutes if args.real_minutes is None else args.real_minutes
    args.id_steps = args.real_steps = args.steps
    try:
        return run(args)
    except UserError as e:
        print(f"rig: {e}", file=sys.stderr)
        return 2


def preflight(args) -> None:
    """Refuse a run without a training budget or a device, and load everything the scoring needs
    now: not first after a long training, when a broken install (or a checkout being edited)
    would lose the run's work at the export."""
    if not args.steps and not args.minutes:
        raise UserError("--steps 0 and --minutes 0: no training budget; give one of them")
    for module in (
        "exporter.export",
        "exporter.runtime",
        "learner.predict",
        "learner.heads",
        "streamer.motion.pipeline",
    ):
        importlib.import_module(module)
    fuse_function()
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UserError("--device cuda: no CUDA device here; use --device cpu")


def rig_seed(g: int, args, extra: dict, work: Path) -> tuple[list[dict], list[tuple]]:
    """One generator seed's rig stream: its training frames written once, then per training seed
    a trained, exported and scored student; the records and the contact sheet's rows."""
    from motionmask.config import load_config
    from synth.rig import cached_rig

    clip_root, entries = cached_rig(OUT / "rig", seed=g, minutes=args.stream_minutes, ptz=args.ptz)
    entry = entries[0]
    video, clip_dir = clip_root / entry["file"], clip_root / entry["name"]
    frames, split = entry["frames"], entry["split"]["test_start"]
    gwork = work / f"g{g}{'_ptz' if args.ptz else ''}"
    if not args.reuse or not (gwork / "train").is_dir():
        write_train_frames(video, range(0, split), gwork / "train")
    scfg = load_config(run_config(gwork / "teacher.yaml", None, 0, args.device, extra)).streamer
    sheet_at = pick_sheet_frames(clip_dir, split, frames) if g == args.gen_seeds[0] else []
    parity = parity_frames(video, split)
    crops = crops_of(video, clip_dir, entry, split, frames) if not args.no_id else None
    runs, sheet_rows = [], []
    for s in args.train_seeds:
        rec, rows = train_and_score(
            g,
            s,
            args,
            extra,
            gwork,
            clip_root,
            entry,
            scfg,
            parity,
            crops,
            sheet_at if s == args.train_seeds[0] else [],
        )
        runs.append(rec)
        sheet_rows += rows
    return runs, sheet_rows


def train_and_score(
    g: int,
    s: int,
    args,
    extra: dict,
    gwork: Path,
    clip_root: Path,
    entry: dict,
    scfg,
    parity: list[np.ndarray],
    crops,
    sheet_at: list[int],
) -> tuple[dict, list[tuple]]:
    """Training seed s on rig seed g: `motionmask train`, the export, every method scored on the
    later 30%, and (with crops) the multitask net's who-is-who."""
    from synth.rig import VERSION

    video, clip_dir = clip_root / entry["file"], clip_root / entry["name"]
    frames, split, fps = entry["frames"], entry["split"]["test_start"], entry["fps"]
    rwork = gwork / f"t{s}"
    cfg = run_config(rwork / "cfg.yaml", None, s, args.device, extra)
    tr = train(gwork / "train", rwork / "run", cfg, args.minutes, args.steps, args.reuse)
    bundle = export_bundle(Path(tr["checkpoint"]), rwork / "exports", parity)
    print(f"rig seed {g}, training seed {s}: scoring frames {split}-{frames - 1}", file=sys.stderr, flush=True)
    t0 = time.monotonic()
    ev = evaluate(video, clip_dir, split, frames, fps, scfg, Path(tr["checkpoint"]), bundle, args.device, sheet_at)
    sheet_rows = ev.pop("_sheet")
    rec = {
        "gen_seed": g,
        "train_seed": s,
        "generator_version": VERSION,
        "ptz": args.ptz,
        "stream": {
            "dir": str(clip_root),
            "frames": frames,
            "split": split,
            "fps": fps,
            "frames_still": ev["still_frames"],
            "frames_moving": ev["moving_frames"],
            "background": entry["background"],
        },
        "score_seconds": round(time.monotonic() - t0, 1),
        "train": tr,
        "methods": ev["scores"],
        "fused_source": ev["fused_source"],
        "live_student_every": ev["live_student_every"],
        "live_precision": ev["live_precision"],
        "exported_check": ev["exported"],
    }
    if crops is not None:
        icfg = run_config(rwork / "id.yaml", args.id_config, s, args.device, extra)
        itr = train(gwork / "train", rwork / "id_run", icfg, args.id_minutes, args.id_steps, args.reuse)
        rec["id"] = {**who_is_who(*crops, Path(itr["checkpoint"]), args.device), "train": itr, "config": args.id_config}
    return rec, sheet_rows


def run(args) -> int:
    preflight(args)
    extra = yaml.safe_load(Path(args.config).read_text()) or {} if args.config else {}
    out = Path(args.out).resolve()
    work = out.parent / out.stem
    t_start = time.monotonic()
    runs = []
    sheet_rows: list[tuple] = []
    for g in args.gen_seeds:
        g_runs, g_rows = rig_seed(g, args, extra, work)
        runs += g_runs
        sheet_rows += g_rows
    sheet = out.parent / f"{out.stem}_sheet.png"
    rig_sheet(sheet, sheet_rows)
    doc = {
        "runs": runs,
        "targets": targets(runs),
        "summary": {
            m: {
                k: spread([r["methods"][m][k] for r in runs if r["methods"].get(m)])
                for k in ("miou", "miou_still", "miou_moving", "still_recall", "flicker", "flicker_still")
            }
            for m in METHODS
        },
        "args": {k: v for k, v in vars(args).items()},
        "device": args.device,
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "revision": git_revision(),
        "contact_sheet": str(sheet) if sheet_rows else None,
    }
    if not args.no_real:
        _write(out, doc)  # the rig's figures are safe before the real footage's training starts
        try:
            doc["real"] = real_part(args, extra, work / "vtest", out.parent / f"{out.stem}_vtest.png")
        except UserError as e:
            print(f"rig: vtest: {e}", file=sys.stderr)
            doc["real"] = {"error": str(e)}
    doc["wall_s"] = round(time.monotonic() - t_start, 1)
    _write(out, doc)
    print_tables(doc)
    print(f"\nwrote {out}" + (f" and {sheet}" if sheet_rows else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
