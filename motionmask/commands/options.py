"""What several commands' options mean, read the same way everywhere: counts (--start, --frames,
--steps, --nproc), a video source given as INPUT, and --quiet. Standard library only."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

from common.errors import UserError


def parse_count(flag: str, text: str | None, minimum: int) -> int | None:
    """A whole number >= minimum given to `flag`, or None when the option was not given."""
    if text is None:
        return None
    try:
        value = int(str(text).strip())
    except ValueError:
        raise UserError(f"{flag} {text!r}: expected a whole number >= {minimum}") from None
    if value < minimum:
        raise UserError(f"{flag} {value}: must be >= {minimum}")
    return value


def source_spec(text: str) -> str | int:
    """INPUT as streamer.sources.open_source takes it."""
    # a bare number is a camera index unless a file of that name exists
    return int(text) if text.isdigit() and not os.path.exists(text) else text


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


@contextlib.contextmanager
def info_logs(enabled: bool) -> Iterator[None]:
    """--quiet: the project's info lines are held back while the run lasts."""
    if enabled:
        yield
        return
    loggers = [logging.getLogger(n) for n in ("common", "streamer", "synth", "learner", "exporter", "motionmask")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)
