"""JSON that came from outside (a socket, a file another machine wrote): every way it can fail to
parse is a ValueError, so that a parser catches one type and answers with its own clear error.

json.loads alone raises RecursionError on deeply nested input (a few KB of "[" are enough), which
is no ValueError and escaped the parsers that trusted it to be one; a 5000-digit number raises a
plain ValueError, not the JSONDecodeError some of them caught.
"""

from __future__ import annotations

import json
from typing import Any


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    """json.loads, with RecursionError (nesting too deep) turned into ValueError."""
    try:
        return json.loads(bytes(data) if isinstance(data, memoryview) else data)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


__all__ = ["loads"]
