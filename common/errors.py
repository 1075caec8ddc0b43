"""Errors a user can act on. The CLI prints their message on one line and exits non-zero."""


class UserError(Exception):
    """A problem with input, config or environment that the user can fix; never a traceback."""


class SourceError(UserError):
    """A video source that cannot be opened or read (missing, not video, camera unplugged...)."""
