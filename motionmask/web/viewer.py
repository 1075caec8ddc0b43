"""One WebSocket viewer of a camera: units of its newest picture (stream.py), latest-frame-wins.

The viewer may send {"kind": "trimap"} at any time to switch the kind of mask it is sent. A
picture that arrives while the viewer is still taking the previous one replaces it (counted as a
drop); a viewer that takes longer than SEND_TIMEOUT_S over one picture is closed.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass

from starlette.websockets import WebSocket, WebSocketDisconnect

from common.log import log_event
from motionmask.web.stream import pack_unit

log = logging.getLogger("motionmask.web")

SEND_TIMEOUT_S = 30.0  # a viewer that takes longer than this to accept one picture is closed


@dataclass
class Wanted:
    """What the viewer asked for last, shared by the listening and the sending coroutine."""

    kind: str
    closed: bool = False


async def ws_camera(ws: WebSocket) -> None:
    """/ws/cameras/<name>: send the camera's newest pictures until the viewer leaves."""
    feed, state = ws.app.state.feed, ws.app.state.console
    name = ws.path_params["name"]
    want = Wanted(ws.query_params.get("kind", "motion"))
    await ws.accept()
    loop, wake = asyncio.get_running_loop(), asyncio.Event()
    listener = asyncio.create_task(listen(ws, want, wake))
    feed.store.watch(name, loop, wake)
    state.clients += 1
    try:
        await send_newest(ws, name, want, wake)
    except TimeoutError:  # asyncio.wait_for's, the builtin since 3.11
        log_event(
            log,
            "console_viewer_dropped",
            logging.WARNING,
            camera=name,
            reason=f"took over {SEND_TIMEOUT_S:g} s to take one picture",
        )
    except (WebSocketDisconnect, RuntimeError, OSError):
        pass
    finally:
        feed.store.unwatch(name, loop, wake)
        state.clients -= 1
        listener.cancel()
        try:
            await ws.close()
        except Exception:
            pass


async def listen(ws: WebSocket, want: Wanted, wake: asyncio.Event) -> None:
    """Take the viewer's {"kind": ...} messages until it leaves; anything else is ignored."""
    try:
        while True:
            msg = await ws.receive_text()
            try:
                kind = json.loads(msg).get("kind")
            except (ValueError, AttributeError):
                continue
            if isinstance(kind, str) and kind:
                want.kind = kind
                wake.set()
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        want.closed = True
        wake.set()


async def send_newest(ws: WebSocket, name: str, want: Wanted, wake: asyncio.Event) -> None:
    """Each time the store wakes us, send the newest picture of the wanted kind, once."""
    feed, state = ws.app.state.feed, ws.app.state.console
    last_tick, last_kind, sent, drops = 0, "", 0, 0
    while not want.closed:
        await wake.wait()
        wake.clear()
        if want.closed:
            break
        kind = want.kind
        tick, fh, jpeg, mh, mask = feed.store.latest(name, kind)
        if (fh is None and mh is None) or (tick == last_tick and kind == last_kind):
            continue
        if last_tick and tick > last_tick + 1 and kind == last_kind:
            drops += tick - last_tick - 1  # pictures that came while this viewer was busy
            state.stream_drops += tick - last_tick - 1
        last_tick, last_kind = tick, kind
        sent += 1
        state.stream_sent += 1
        unit = pack_unit(name, kind, fh, jpeg, mh, mask, sent=sent, drops=drops)
        await asyncio.wait_for(ws.send_bytes(unit), SEND_TIMEOUT_S)
