"""Logging set-up that reads well both in a terminal and in journald.

Under systemd (stderr is the journal stream systemd named in $JOURNAL_STREAM) the lines drop the
timestamp, which journald stamps itself, and start with the syslog priority prefix `<N>`, so
that `journalctl -p warning -u motionmask` shows warnings and errors only. Elsewhere: the usual
`2026-12-06T07:20:32 INFO name event=... key=value` lines.
"""

from __future__ import annotations

import logging
import os
import sys

_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


def under_journald() -> bool:
    """True when stderr is the journal stream systemd set up for this process (sd_journal_stream_fd(3):
    JOURNAL_STREAM is its device:inode; a child that redirected stderr elsewhere is not)."""
    try:
        dev, ino = os.environ["JOURNAL_STREAM"].split(":")
        st = os.fstat(sys.stderr.fileno())
        return (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (KeyError, ValueError, OSError, AttributeError):
        return False


class JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"<{_PRIORITY.get(record.levelno, 6)}>" + super().format(record)


def setup_logging(level: str | int) -> None:
    """Root logging to stderr at `level` ("INFO" or logging.INFO)."""
    level = getattr(logging, level) if isinstance(level, str) else level
    if under_journald():
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JournalFormatter("%(levelname)s %(name)s %(message)s"))
        logging.basicConfig(level=level, handlers=[handler])
    else:
        logging.basicConfig(
            level=level,
            format="%(asctime)s %(levelname)s %(name)s %(message)s",
            datefmt="%Y-%m-%dT%H:%M:%S",
            stream=sys.stderr,
        )
