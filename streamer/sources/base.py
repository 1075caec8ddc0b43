"""What every video source shares: the `Source` interface and the PyAV frame conversion.

`streamer.sources.open_source` picks the concrete source; code that consumes frames only needs
the attributes and the iterator protocol defined here."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import av
import numpy as np

from streamer.config import SourceConfig
from streamer.frames import Frame

logger = logging.getLogger("streamer.sources")


def new_stats() -> dict[str, int]:
    return {"decoded": 0, "dropped_stale": 0, "skipped_corrupt": 0, "reconnects": 0}


class Source:
    """An iterator of `Frame`s and a context manager that closes it.

    Attributes: source_id, kind ("file" | "folder" | "camera" | "network"), live, fps (nominal,
    None when unknown), width, height (of the frames it yields), frame_count (an estimate for
    progress bars; None for live and looping sources), stats (decoded, dropped_stale,
    skipped_corrupt, reconnects).
    """

    kind: str = ""
    live: bool = False

    def __init__(self, source_id: str, cfg: SourceConfig) -> None:
        self.source_id = source_id
        self.cfg = cfg
        self.fps: float | None = None
        self.width = 0
        self.height = 0
        self.frame_count: int | None = None
        self.stats = new_stats()
        self.closed = False

    def __iter__(self) -> Iterator[Frame]:
        return self

    def __next__(self) -> Frame:
        raise NotImplementedError

    def close(self) -> None:
        self.closed = True

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.source_id!r} kind={self.kind} {self.width}x{self.height}"
            f" fps={self.fps} decoded={self.stats['decoded']}>"
        )


def why(e: BaseException) -> str:
    """A short reason for an exception. PyAV's str(e) repeats the URL, which may carry a
    password, so prefer its strerror."""
    text = getattr(e, "strerror", None) or str(e) or type(e).__name__
    return str(text).strip()


def rgb(frame: av.VideoFrame) -> np.ndarray:
    """A decoded PyAV frame as an upright H x W x 3 uint8 RGB array, C-contiguous.

    Any pixel format works (gray, yuv444p, 10-bit...). Odd widths come back padded to the
    line size, hence the contiguous copy. Phone clips carry a display rotation; apply it,
    as players and OpenCV do, so that the person in the frame stands upright.
    """
    image = frame.to_ndarray(format="rgb24")
    try:
        turns = int(round(frame.rotation / 90.0)) % 4  # counter-clockwise quarter turns
    except (AttributeError, TypeError, ValueError):
        turns = 0
    if turns:
        image = np.rot90(image, turns)
    return np.ascontiguousarray(image)
