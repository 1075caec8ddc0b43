"""Camera URLs with credentials never reach the page or the API: every string the console serves
goes through the redaction the logs use (streamer.sources.redact_url), applied to each URL found
inside it (a last_error can quote the URL it failed on)."""

from __future__ import annotations

import re
from typing import Any

from streamer.sources import redact_url

_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def redact_text(text: str) -> str:
    if "://" not in text or "@" not in text:
        return text
    return _URL.sub(lambda m: redact_url(m.group(0)), text)


def redact(obj: Any) -> Any:
    """A copy of a JSON-like tree with every string redacted."""
    if isinstance(obj, str):
        return redact_text(obj)
    if isinstance(obj, dict):
        return {k: redact(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact(v) for v in obj]
    return obj


__all__ = ["redact", "redact_text"]
