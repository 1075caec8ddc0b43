"""Errors a user can act on. The CLI prints their message on one line and exits non-zero."""


class UserError(Exception):
    """A problem with input, config or environment that the user can fix; never a traceback."""


class SourceError(UserError):
    """A video source that cannot be opened or read (missing, not video, camera unplugged...)."""


def first_line(e: BaseException, limit: int = 200) -> str:
    """An exception's message for a one-line error: its first line, cut at `limit` characters, or
    its type's name when it has no message (library errors often carry pages of detail)."""
    text = str(e).strip()
    return text.splitlines()[0][:limit] if text else type(e).__name__
