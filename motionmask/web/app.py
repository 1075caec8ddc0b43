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
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
from dataclasses import dataclass
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from motionmask.web.feed import DaemonFeed
from motionmask.web.metrics import registry
from motionmask.web.stream import pack_unit
from common.log import log_event

log = logging.getLogger("motionmask.web")

STATIC = Path(__file__).parent / "static"
COOKIE = "motionmask_token"
SEND_TIMEOUT_S = 30.0  # a viewer that takes longer than this to accept one picture is closed


@dataclass
class ConsoleState:
    url: str = ""
    clients: int = 0
    stream_drops: int = 0
    stream_sent: int = 0


class TokenGate:
    """With a token set, every request (HTTP and WebSocket) must carry it: `Authorization: Bearer
    TOKEN`, `?token=TOKEN`, or the cookie the page sets after `/?token=TOKEN`. A plain ASGI
    middleware, so that WebSockets are guarded too."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app, self.token = app, token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or self._allowed(scope):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        await PlainTextResponse("this console needs its token: open /?token=... or send "
                                "'Authorization: Bearer ...'\n", 401)(scope, receive, send)

    def _allowed(self, scope: Scope) -> bool:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}
        offered = []
        if headers.get("authorization", "").startswith("Bearer "):
            offered.append(headers["authorization"][7:])
        for part in scope.get("query_string", b"").decode("latin-1").split("&"):
            if part.startswith("token="):
                from urllib.parse import unquote
                offered.append(unquote(part[6:]))
        if "cookie" in headers:
            c = SimpleCookie()
            try:
                c.load(headers["cookie"])
            except Exception:
                pass
            if COOKIE in c:
                offered.append(c[COOKIE].value)
        return any(hmac.compare_digest(o.encode(), self.token.encode()) for o in offered)


def build_app(feed: DaemonFeed, url: str = "", token: str = "", interval_s: float = 1.0) -> ASGIApp:
    state = ConsoleState(url=url)

    def extras() -> dict[str, Any]:
        st = feed.status or {}
        return {
            "url": state.url, "clients": state.clients, "stream_drops": state.stream_drops,
            "stream_sent": state.stream_sent, "control": feed.control, "masks": feed.masks or "",
            "status_at": feed.status_at, "error": feed.error, "masks_received": feed.store.received,
            "cameras": {name: {"quality": feed.quality(name), "kinds": feed.store.kinds(name)}
                        for name in st.get("cameras", {})},
        }

    def no_status() -> JSONResponse:
        return JSONResponse({"ok": False, "error": feed.error or "no status from the daemon yet"}, 503)

    async def index(request: Request) -> Response:
        if token and request.query_params.get("token"):
            # the token moves into a cookie and out of the address bar (and of screenshots)
            resp = RedirectResponse("/", 303)
            resp.set_cookie(COOKIE, request.query_params["token"], httponly=True, samesite="strict")
            return resp
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    async def api_status(_request: Request) -> Response:
        return JSONResponse(feed.status) if feed.status else no_status()

    async def api_camera(request: Request) -> Response:
        st = feed.status
        if not st:
            return no_status()
        name = request.path_params["name"]
        cam = st.get("cameras", {}).get(name)
        if cam is None:
            return JSONResponse({"ok": False, "error": f"no camera {name!r}; cameras: "
                                 f"{', '.join(st.get('cameras', {})) or 'none'}"}, 404)
        return JSONResponse({**cam, "name": name, "buffer": (st.get("buffer") or {}).get("by_camera", {}).get(name, 0),
                             "quality": feed.quality(name), "kinds": feed.store.kinds(name)})

    async def api_still(request: Request) -> Response:
        name, kind = request.path_params["name"], request.query_params.get("kind", "motion")
        _, fh, jpeg, mh, mask = feed.store.latest(name, kind)
        if fh is None and mh is None:
            return JSONResponse({"ok": False, "error": f"no picture from camera {name!r} yet"}, 404)
        return Response(pack_unit(name, kind, fh, jpeg, mh, mask), media_type="application/octet-stream",
                        headers={"Cache-Control": "no-store"})

    async def api_learner(_request: Request) -> Response:
        if not feed.status:
            return no_status()
        lr = await asyncio.to_thread(feed.learner)
        if lr is None:
            return JSONResponse({"ok": False, "error": "the daemon runs no learner (learner.enabled: false)"}, 404)
        return JSONResponse(lr)

    async def api_exports(_request: Request) -> Response:
        return JSONResponse(await asyncio.to_thread(feed.exports))

    async def api_events(request: Request) -> Response:
        return JSONResponse(feed.events(int(request.query_params.get("limit", 500))))

    async def api_console(_request: Request) -> Response:
        return JSONResponse(extras())

    async def live(request: Request) -> Response:
        async def gen():
            last = None
            yield "retry: 2000\n\n"
            while True:
                if feed.status_at != last or feed.error:
                    last = feed.status_at
                    body = {"status": feed.status, "console": extras(), "events": feed.events(50)}
                    yield f"event: status\ndata: {json.dumps(body, separators=(',', ':'))}\n\n"
                await asyncio.sleep(min(interval_s, 1.0) / 2)
        return StreamingResponse(gen(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    async def ws_camera(ws: WebSocket) -> None:
        name = ws.path_params["name"]
        want = {"kind": ws.query_params.get("kind", "motion"), "closed": False}
        await ws.accept()
        loop, wake = asyncio.get_running_loop(), asyncio.Event()

        async def listen() -> None:
            try:
                while True:
                    msg = await ws.receive_text()
                    try:
                        kind = json.loads(msg).get("kind")
                    except (ValueError, AttributeError):
                        continue
                    if isinstance(kind, str) and kind:
                        want["kind"] = kind
                        wake.set()
            except (WebSocketDisconnect, RuntimeError):
                pass
            finally:
                want["closed"] = True
                wake.set()

        listener = asyncio.create_task(listen())
        feed.store.watch(name, loop, wake)
        state.clients += 1
        last_tick, last_kind, sent, drops = 0, "", 0, 0
        try:
            while not want["closed"]:
                await wake.wait()
                wake.clear()
                if want["closed"]:
                    break
                kind = want["kind"]
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
        except asyncio.TimeoutError:
            log_event(log, "console_viewer_dropped", logging.WARNING, camera=name,
                      reason=f"took over {SEND_TIMEOUT_S:g} s to take one picture")
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

    reg = registry(lambda: (feed.status, {"clients": state.clients, "stream_drops": state.stream_drops,
                                          "exports": feed.exports()}))

    async def metrics(_request: Request) -> Response:
        body = await asyncio.to_thread(generate_latest, reg)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    app = Starlette(routes=[
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
    ])
    app.state.console = state
    return TokenGate(app, token) if token else app


__all__ = ["build_app"]
