"""The live mask a subscriber gets: the motion mask and the student's, fused, every frame.

The two are complementary detectors, not two noisy readings of one thing. Motion sees what moves
and nothing that stands still; the student (one frame at a time, trained on this camera's own
scene) sees the actors it has learned, moving or not, and misses what it has not. Motion being
zero is therefore no evidence against the student (an actor that stopped), and the student being
zero is none against motion (a newcomer it never saw). So the rule is an OR:

    fused = max(motion, student where student >= min_student, else 0)

A weighted mean would halve a stopped actor (motion 0) and a newcomer (student 0) alike, the two
cases the fused mask exists for. The student's low, unsure values are dropped rather than kept
under the max: a soft haze over the background would otherwise pass into every subscriber's
mask. Motion passes whole: it is what a subscriber got before a bundle existed.

The student runs on every Nth frame only (export.student_every: it costs the camera its fps); in
between, its last mask is carried along the optical flow the pipeline already computed
(`carry_forward`), so a walking actor's student mask walks with it and a still one stays put.
`CarriedStudent` keeps that state for one camera; `live_step` is one frame of it, the camera
process's code and the benchmarks' alike.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

MIN_STUDENT = 0.5  # the default of export.fuse_min_student (exporter/config.py)


def fuse(motion: np.ndarray, student: np.ndarray | None, min_student: float = MIN_STUDENT) -> np.ndarray:
    """The fused mask, uint8 probability 0-255 at motion's size.

    motion: H x W uint8 (prob * 255), the camera's `motion` mask. student: uint8 0-255 at any
    size (resized bilinearly to motion's), or None (no bundle yet: motion comes back, copied).
    min_student: the student's probability from which it marks a pixel on its own."""
    if motion.ndim != 2 or motion.dtype != np.uint8:
        raise ValueError(f"motion must be an H x W uint8 mask, got {motion.shape} {motion.dtype}")
    if student is None:
        return motion.copy()
    if student.ndim != 2 or student.dtype != np.uint8:
        raise ValueError(f"student must be an H x W uint8 mask, got {student.shape} {student.dtype}")
    if not 0.0 <= min_student <= 1.0:
        raise ValueError(f"min_student must be in [0, 1], got {min_student}")
    h, w = motion.shape
    if student.shape != (h, w):
        student = cv2.resize(student, (w, h), interpolation=cv2.INTER_LINEAR)
    cut = int(np.ceil(min_student * 255.0))
    sure = np.where(student >= cut, student, np.uint8(0))
    return np.maximum(motion, sure)


def carry_forward(mask: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """`mask` of frame t-1 moved onto frame t's grid by the pipeline's flow (MaskResult.flow:
    pixel x of frame t was at x - flow(x) in frame t-1), at the flow's resolution."""
    h, w = flow.shape[:2]
    if mask.shape[:2] != (h, w):
        raise ValueError(f"mask {mask.shape[1]}x{mask.shape[0]} must be at the flow's resolution {w}x{h}")
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return cv2.remap(mask, gx - flow[..., 0], gy - flow[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


@dataclass
class CarriedStudent:
    """One camera's student mask between two runs of the student.

        carried = CarriedStudent(every=5)
        per frame: if carried.due(r.shot, r.flow, version): carried.ran(student_u8, r.shot, version, size)
                   else: carried.step(r.flow)
                   fused = fuse(motion, carried.mask)

    The student runs again when its turn comes (every `every` frames), and sooner when carrying
    cannot go on: a new shot (the scene changed), a frame without flow, a new bundle."""

    every: int
    mask: np.ndarray | None = None  # uint8 at the flow's resolution, carried to the latest frame
    shot: int = -1
    version: str = ""
    age: int = 0  # frames carried since the student last ran

    def due(self, shot: int, flow: np.ndarray | None, version: str) -> bool:
        if self.mask is None or shot != self.shot or version != self.version or flow is None:
            return True
        return flow.shape[:2] != self.mask.shape or self.age + 1 >= self.every

    def ran(self, student: np.ndarray, shot: int, version: str, size: tuple[int, int]) -> None:
        """The student's fresh uint8 mask (any size); size: (w, h) of the flow it will be carried on."""
        self.mask = (
            student
            if student.shape[::-1] == tuple(size)
            else cv2.resize(student, tuple(size), interpolation=cv2.INTER_AREA)
        )
        self.shot, self.version, self.age = shot, version, 0

    def step(self, flow: np.ndarray) -> None:
        assert self.mask is not None, "step() before ran()"
        self.mask = carry_forward(self.mask, flow)
        self.age += 1


def to_u8(prob: np.ndarray) -> np.ndarray:
    """A probability map in [0, 1] as the uint8 mask the wire carries (prob * 255, rounded)."""
    return np.clip(prob * 255.0 + 0.5, 0, 255).astype(np.uint8)


def live_step(
    carried: CarriedStudent,
    motion: np.ndarray,
    image: np.ndarray,
    shot: int,
    flow: np.ndarray | None,
    student: Callable[[np.ndarray], np.ndarray],
    version: str = "",
    min_student: float = MIN_STUDENT,
    flow_width: int = 240,
) -> tuple[np.ndarray, np.ndarray | None]:
    """One frame of a camera's live masks, exactly as motionmask/camera_process.py publishes them:
    (the fused mask, the student's fresh uint8 mask or None on a frame it was carried to).

    motion: the frame's uint8 motion mask; image: the frame (H x W x 3 RGB); shot, flow: the
    frame's MaskResult.shot and .flow; student: frame -> probability map at the frame's size (an
    exporter.runtime.BundleRunner); version: the bundle's (a new one runs the student at once);
    flow_width: streamer.flow.width, the carry resolution of a frame that has no flow."""
    if not carried.due(shot, flow, version):
        carried.step(flow)
        return fuse(motion, carried.mask, min_student), None
    mask = to_u8(student(image))
    if flow is not None:
        size = (flow.shape[1], flow.shape[0])
    else:
        from streamer.motion.flow import working_size

        size = working_size(mask.shape[1], mask.shape[0], flow_width)
    carried.ran(mask, shot, version, size)
    return fuse(motion, mask, min_student), mask


__all__ = ["MIN_STUDENT", "CarriedStudent", "carry_forward", "fuse", "live_step", "to_u8"]
