"""The console's token gate: with a token set, no request (HTTP or WebSocket) passes without it."""

from __future__ import annotations

import hmac
from http.cookies import SimpleCookie
from urllib.parse import unquote

from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

COOKIE = "motionmask_token"


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
        await PlainTextResponse(
            "this console needs its token: open /?token=... or send 'Authorization: Bearer ...'\n", 401
        )(scope, receive, send)

    def _allowed(self, scope: Scope) -> bool:
        return any(hmac.compare_digest(o.encode(), self.token.encode()) for o in offered_tokens(scope))


def offered_tokens(scope: Scope) -> list[str]:
    """Every token a request carries: its bearer header, its ?token= and its cookie."""
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}
    offered = []
    if headers.get("authorization", "").startswith("Bearer "):
        offered.append(headers["authorization"][7:])
    for part in scope.get("query_string", b"").decode("latin-1").split("&"):
        if part.startswith("token="):
            offered.append(unquote(part[6:]))
    if "cookie" in headers:
        c = SimpleCookie()
        try:
            c.load(headers["cookie"])
        except Exception:
            pass
        if COOKIE in c:
            offered.append(c[COOKIE].value)
    return offered
