"""The on-disk mask contract that other tools read (training, evaluation, people):

    DIR/NNNNNN.png          uint8 foreground probability, round(prob * 255), input resolution
    DIR/trimap/NNNNNN.png   uint8 trimap: 0 negative, 128 don't care, 255 positive
    DIR/frames.jsonl        one JSON object per frame (see `frame_record`)

NNNNNN is the 6-digit 0-based decode index of the frame. PNGs are written atomically and every
jsonl line is one write(2) on an O_APPEND descriptor, so an interrupted run (Ctrl-C, kill, full
disk) leaves only whole files and whole lines behind.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
from pathlib import Path

import numpy as np

from common.errors import UserError
from common.log import log_event
from streamer.frames import MaskResult
from streamer.png import write_png

logger = logging.getLogger(__name__)

JSONL_NAME = "frames.jsonl"
TRIMAP_DIR = "trimap"
OVERLAY_NAME = "overlay.mp4"  # optional pictures for people (streamer.overlay)
CONTACT_NAME = "contact.png"
_OUTPUT_PNG = re.compile(r"^\d{6,}\.png$")


def mask_name(index: int) -> str:
    return f"{index:06d}.png"


def prob_to_png(prob: np.ndarray) -> np.ndarray:
    """Probability in [0, 1] -> uint8 0-255, round(prob * 255); NaN counts as background."""
    p = np.nan_to_num(np.asarray(prob, dtype=np.float32), nan=0.0)
    return np.rint(np.clip(p, 0.0, 1.0) * 255.0).astype(np.uint8)


def frame_record(result: MaskResult) -> dict:
    """The frames.jsonl line of one result."""
    f = result.frame
    return {
        "frame": int(f.index),
        "shot": int(result.shot),
        "fg_fraction": round(float(result.fg_fraction), 5),
        "kept": bool(result.kept),
        "reason": result.reason or "",
        "ms": {k: round(float(v), 3) for k, v in result.timings_ms.items()},
        "timestamp": round(float(f.timestamp), 6),
        "source": f.source_id,
    }


def check_out_dir(path: str | Path) -> Path:
    """Fail early, before any decoding, on an --out that cannot become an output folder."""
    out = Path(path).expanduser()
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: is a file, not a folder; pass a folder path")
    probe = out
    while not probe.exists():  # the nearest existing ancestor decides whether we may create it
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"--out {out}: {probe} is a file, not a folder; pass a folder path")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"--out {out}: {probe} is not writable; choose a folder you can write to")
    return out


def append_line(fd: int, line: bytes) -> None:
    """Append one whole line with a single write(2); on a short or failed write (full disk),
    cut the file back so that no torn line is left, and raise OSError."""
    start = os.fstat(fd).st_size
    try:
        n = os.write(fd, line)
    except OSError:
        _truncate_quietly(fd, start)
        raise
    if n != len(line):
        _truncate_quietly(fd, start)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _truncate_quietly(fd: int, size: int) -> None:
    try:
        os.ftruncate(fd, size)
    except OSError:
        pass


class MaskWriter:
    """Writes MaskResults into DIR following the contract above. A fresh writer starts a fresh
    run: frames.jsonl is emptied, and masks left by an earlier run in the same folder are removed
    so that the folder never mixes two runs."""

    def __init__(self, out_dir: str | Path):
        self.out_dir = check_out_dir(out_dir)
        self.trimap_dir = self.out_dir / TRIMAP_DIR
        self.jsonl_path = self.out_dir / JSONL_NAME
        try:
            self.trimap_dir.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise UserError(f"--out {self.out_dir}: {self.trimap_dir} exists and is not a folder") from None
        except PermissionError:
            raise UserError(f"--out {self.out_dir}: cannot create it (permission denied)") from None
        self._remove_previous_run()
        self._fd: int | None = os.open(self.jsonl_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_TRUNC, 0o644)
        self.written = 0

    def _remove_previous_run(self) -> None:
        # Only a folder that holds our frames.jsonl is ours to clean: --out pointed at a folder
        # of someone's images (000001.png ...) must never lose them.
        if not self.jsonl_path.exists():
            return
        removed = 0
        for folder in (self.out_dir, self.trimap_dir):
            for p in folder.iterdir():
                if _OUTPUT_PNG.match(p.name) and p.is_file():
                    p.unlink()
                    removed += 1
        for name in (OVERLAY_NAME, CONTACT_NAME):  # a run without --overlay must not keep stale ones
            p = self.out_dir / name
            if p.is_file():
                p.unlink()
                removed += 1
        if removed:
            log_event(logger, "previous_run_removed", out=self.out_dir, files=removed)

    def write(self, result: MaskResult) -> dict:
        """Write the mask, the trimap, then the jsonl line (last, so that a line always refers
        to PNGs that exist). Returns the record."""
        if self._fd is None:
            raise ValueError("MaskWriter is closed")
        name = mask_name(result.frame.index)
        record = frame_record(result)
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        paths = [self.out_dir / name, self.trimap_dir / name]
        try:
            write_png(paths[0], prob_to_png(result.prob))
            write_png(paths[1], np.ascontiguousarray(result.trimap, dtype=np.uint8))
            append_line(self._fd, line)
        except BaseException:
            # all of a frame or none of it (full disk, Ctrl-C): no mask without its jsonl line
            for p in paths:
                try:
                    p.unlink()
                except OSError:
                    pass
            raise
        self.written += 1
        return record

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.fsync(fd)
            except OSError:
                pass  # a full disk already reported itself on the write that failed
            finally:
                os.close(fd)

    def __enter__(self) -> MaskWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
