"""The console's routes (Starlette). Read-only: no endpoint changes the daemon's state.

    /                          the page (static/index.html: plain HTML, JS and CSS, uPlot vendored)
    /api/status                the daemon's status reply, as `motionmask status --json` prints it
    /api/cameras/<name>        one camera of it, plus its connection quality and the mask kinds seen
    /api/cameras/<name>/still  the newest picture of a camera (?kind=motion) as one unit (stream.py)
    /api/learner               the learner's status, its curves (train.jsonl) and bootstrap rounds
    /api/exports               exported bundles, their holdout scores, LATEST
    /api/events                what changed, newest first
    /api/console               this console: its url, viewers, drops, the endpoints it reads
    /api/live                  Server-Sent Events: status, console and the newest events, each interval
    /ws/cameras/<name>         WebSocket: units of the camera's newest picture (?kind=motion),
                               latest-frame-wins; send {"kind": "trimap"} to switch
    /metrics                   Prometheus exposition format

Answers come from the feed's last status (at most web.status_interval_s old), never from a new
request to the daemon: any number of viewers and scripts cost the daemon one request a second.
The handlers read what they serve from app.state; the token gate is gate.py, the WebSocket
viewer viewer.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp

from motionmask.web.feed import DaemonFeed
from motionmask.web.gate import COOKIE, TokenGate
from motionmask.web.metrics import registry
from motionmask.web.stream import pack_unit
from motionmask.web.viewer import ws_camera

STATIC = Path(__file__).parent / "static"


@dataclass
class ConsoleState:
    url: str = ""
    clients: int = 0
    stream_drops: int = 0
    stream_sent: int = 0


def build_app(feed: DaemonFeed, url: str = "", token: str = "", interval_s: float = 1.0) -> ASGIApp:
    """The console over `feed`; with a token, behind the token gate. app.state carries what the
    handlers read: the feed, the console's own counts, the token, the live interval, the metrics."""
    app = Starlette(routes=routes())
    app.state.feed = feed
    app.state.console = state = ConsoleState(url=url)
    app.state.token = token
    app.state.interval_s = interval_s
    app.state.metrics = registry(
        lambda: (feed.status, {"clients": state.clients, "stream_drops": state.stream_drops, "exports": feed.exports()})
    )
    return TokenGate(app, token) if token else app


def routes() -> list[BaseRoute]:
    return [
        Route("/", index),
        Route("/api/status", api_status),
        Route("/api/cameras/{name}", api_camera),
        Route("/api/cameras/{name}/still", api_still),
        Route("/api/learner", api_learner),
        Route("/api/exports", api_exports),
        Route("/api/events", api_events),
        Route("/api/console", api_console),
        Route("/api/live", live),
        WebSocketRoute("/ws/cameras/{name}", ws_camera),
        Route("/metrics", metrics),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]


def console_info(feed: DaemonFeed, state: ConsoleState) -> dict[str, Any]:
    """/api/console: this console, its viewers, and what it has seen of the daemon."""
    st = feed.status or {}
    return {
        "url": state.url,
        "clients": state.clients,
        "stream_drops": state.stream_drops,
        "stream_sent": state.stream_sent,
        "control": feed.control,
        "masks": feed.masks or "",
        "status_at": feed.status_at,
        "error": feed.error,
        "masks_received": feed.store.received,
        "cameras": {
            name: {"quality": feed.quality(name), "kinds": feed.store.kinds(name)} for name in st.get("cameras", {})
        },
    }


def no_status(feed: DaemonFeed) -> JSONResponse:
    return JSONResponse({"ok": False, "error": feed.error or "no status from the daemon yet"}, 503)


async def index(request: Request) -> Response:
    if request.app.state.token and request.query_params.get("token"):
        # the token moves into a cookie and out of the address bar (and of screenshots)
        resp = RedirectResponse("/", 303)
        resp.set_cookie(COOKIE, request.query_params["token"], httponly=True, samesite="strict")
        return resp
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})


async def api_status(request: Request) -> Response:
    feed = request.app.state.feed
    return JSONResponse(feed.status) if feed.status else no_status(feed)


async def api_camera(request: Request) -> Response:
    feed = request.app.state.feed
    st = feed.status
    if not st:
        return no_status(feed)
    name = request.path_params["name"]
    cam = st.get("cameras", {}).get(name)
    if cam is None:
        return JSONResponse(
            {"ok": False, "error": f"no camera {name!r}; cameras: {', '.join(st.get('cameras', {})) or 'none'}"}, 404
        )
    return JSONResponse(
        {
            **cam,
            "name": name,
            "buffer": (st.get("buffer") or {}).get("by_camera", {}).get(name, 0),
            "quality": feed.quality(name),
            "kinds": feed.store.kinds(name),
        }
    )


async def api_still(request: Request) -> Response:
    feed = request.app.state.feed
    name, kind = request.path_params["name"], request.query_params.get("kind", "motion")
    _, fh, jpeg, mh, mask = feed.store.latest(name, kind)
    if fh is None and mh is None:
        return JSONResponse({"ok": False, "error": f"no picture from camera {name!r} yet"}, 404)
    return Response(
        pack_unit(name, kind, fh, jpeg, mh, mask),
        media_type="application/octet-stream",
        headers={"Cache-Control": "no-store"},
    )


async def api_learner(request: Request) -> Response:
    feed = request.app.state.feed
    if not feed.status:
        return no_status(feed)
    lr = await asyncio.to_thread(feed.learner)
    if lr is None:
        return JSONResponse({"ok": False, "error": "the daemon runs no learner (learner.enabled: false)"}, 404)
    return JSONResponse(lr)


async def api_exports(request: Request) -> Response:
    return JSONResponse(await asyncio.to_thread(request.app.state.feed.exports))


async def api_events(request: Request) -> Response:
    return JSONResponse(request.app.state.feed.events(int(request.query_params.get("limit", 500))))


async def api_console(request: Request) -> Response:
    return JSONResponse(console_info(request.app.state.feed, request.app.state.console))


async def live(request: Request) -> Response:
    s = request.app.state
    return StreamingResponse(
        live_events(s.feed, s.console, s.interval_s),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


async def live_events(feed: DaemonFeed, state: ConsoleState, interval_s: float) -> AsyncIterator[str]:
    """/api/live: an SSE `status` event (status, console, newest events) whenever the status changes."""
    last = None
    yield "retry: 2000\n\n"
    while True:
        if feed.status_at != last or feed.error:
            last = feed.status_at
            body = {"status": feed.status, "console": console_info(feed, state), "events": feed.events(50)}
            yield f"event: status\ndata: {json.dumps(body, separators=(',', ':'))}\n\n"
        await asyncio.sleep(min(interval_s, 1.0) / 2)


async def metrics(request: Request) -> Response:
    body = await asyncio.to_thread(generate_latest, request.app.state.metrics)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


__all__ = ["build_app"]
