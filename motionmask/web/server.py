"""Serving the console: a listening socket bound by whoever owns the port (the daemon, or
`motionmask console`), and uvicorn on it."""

from __future__ import annotations

import errno
import logging
import socket

from common.errors import UserError

log = logging.getLogger("motionmask.web")


def listen(host: str, port: int, key: str = "web.port") -> socket.socket:
    """A listening TCP socket; a port in use or an address not on this machine is a UserError
    whose one line names the key to change."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart right after a stop can rebind
    try:
        s.bind((host.strip("[]"), port))
        s.listen(128)
    except OSError as e:
        s.close()
        if e.errno == errno.EADDRINUSE:
            raise UserError(
                f"{key} {host}:{port} is already in use (another console or web server?); "
                f"stop it or choose a free {key}"
            ) from None
        raise UserError(f"web.host {host}:{port} cannot be bound: {e.strerror}; use e.g. 127.0.0.1") from None
    s.set_inheritable(True)
    return s


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def serve(app, sock: socket.socket, should_exit_holder: list | None = None) -> None:
    """Run uvicorn on `sock` until it is told to exit (SIGINT/SIGTERM, or should_exit set on the
    server object put into `should_exit_holder`)."""
    import uvicorn

    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=1,
        ws_ping_interval=20.0,
        ws_ping_timeout=20.0,
    )
    server = uvicorn.Server(config)
    if should_exit_holder is not None:
        should_exit_holder.append(server)
    server.run(sockets=[sock])


__all__ = ["listen", "serve", "url_of"]
