"""What the daemon runs: a ChildSpec per process it keeps alive, and the export settings every
child that reads bundles is given."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from common.config import to_dict
from motionmask.config import Config


@dataclass
class ChildSpec:
    """A process the daemon keeps running: `python -m module`, `payload` as JSON on stdin."""

    name: str
    role: str  # camera | learner
    module: str
    payload: dict[str, Any]
    label: str = ""  # what it works on, fit for logs (URLs without passwords)
    pass_fds: tuple[int, ...] = ()  # descriptors it inherits (the web console's listening socket)


def export_spec(cfg: Config) -> dict[str, Any] | None:
    """The export section for the children (its folder made absolute), or None when export is off."""
    if not cfg.export.enabled:
        return None
    key = cfg.export.signing_key
    return dict(
        to_dict(cfg.export),
        dir=os.path.abspath(os.path.expanduser(cfg.export.dir)),
        signing_key=os.path.abspath(os.path.expanduser(key)) if key else "",
    )
