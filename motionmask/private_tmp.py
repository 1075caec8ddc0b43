"""The daemon's private folder for its children's ipc socket: TMP/motionmask-<pid>-XXXXXXXX, mode
0700 (mkdtemp), removed by the daemon when it stops.

A daemon killed with SIGKILL (the kernel's OOM killer, a watchdog, a person) cannot remove it.
Under systemd PrivateTmp= does; elsewhere a daemon restarted after each such death would leave
one folder a time in /tmp for as long as the rig runs (the soak, bench/soak/, found them). So a daemon
starting removes the folders of daemons that are gone: the pid in the name is not running and
nothing answers on the socket inside (a daemon in another pid namespace sharing /tmp still
answers). Only folders that hold nothing but that socket are touched.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import tempfile

from common.log import log_event
from common.pids import pid_alive

log = logging.getLogger("motionmask.daemon")

PREFIX = "motionmask-"
SOCKET = "children.sock"
_NAME = re.compile(r"motionmask-(\d+)-[A-Za-z0-9_]+")


def _answers(path: str) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
        return True
    except OSError:  # refused (nobody bound), gone, too long a path
        return False
    finally:
        s.close()


def remove_stale(base: str | None = None) -> list[str]:
    """Remove the private folders of daemons that are gone; returns their paths."""
    base = base or tempfile.gettempdir()
    removed = []
    try:
        names = os.listdir(base)
    except OSError:
        return removed
    for name in names:
        m = _NAME.fullmatch(name)
        if not m or pid_alive(int(m.group(1))):
            continue
        path = os.path.join(base, name)
        try:
            st = os.lstat(path)
            inside = os.listdir(path)
        except OSError:
            continue
        if not os.path.isdir(path) or os.path.islink(path) or st.st_uid != os.getuid() or set(inside) - {SOCKET}:
            continue
        if SOCKET in inside and _answers(os.path.join(path, SOCKET)):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    if removed:
        log_event(log, "stale_tmp_removed", count=len(removed), first=removed[0])
    return removed


def make_private_dir() -> str:
    """A new 0700 folder for this daemon, after removing those of dead daemons."""
    remove_stale()
    return tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-")
