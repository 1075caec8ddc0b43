"""One line per event, key=value, so logs grep well: `grep 'event=shot_cut' daemon.log`."""

from __future__ import annotations

import logging


def _fmt(v: object) -> str:
    if isinstance(v, float):
        v = f"{v:.4g}"
    s = str(v)
    return f'"{s}"' if (" " in s or "=" in s or not s) else s


def log_event(logger: logging.Logger, event: str, level: int = logging.INFO, **fields: object) -> None:
    logger.log(level, "event=%s %s", event, " ".join(f"{k}={_fmt(v)}" for k, v in fields.items()))
