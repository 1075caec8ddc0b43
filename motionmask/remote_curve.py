"""CurveZMQ for the sample transport (learner.transport.curve_*): key files are those of
`motionmask keys`; errors name the config key and say how to make the file."""

from __future__ import annotations

import logging
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from common.errors import UserError
from learner.transport_config import TransportConfig
from streamer.live.publish import ClientKeys


def _load(path_s: str, key: str, secret: bool) -> tuple[bytes, bytes | None]:
    path = Path(path_s).expanduser()
    if not path.is_file():
        raise UserError(
            f"learner.transport.{key}: {path} not found; create one with "
            f"`motionmask keys {path.parent} --name {path.name.split('.')[0]}`"
        )
    try:
        public, sec = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as e:
        raise UserError(f"learner.transport.{key}: {path} is not a ZeroMQ certificate ({e})") from None
    if secret and not sec:
        raise UserError(f"learner.transport.{key}: {path} holds no secret key; name the .key_secret file")
    return public, sec


def check_keys(cfg: TransportConfig, role: str) -> None:
    """At the daemon's start: every key file this role will use exists and reads, so that a typo
    stops `motionmask run` / `learn` in one line instead of failing a child over and over."""
    if cfg.curve_secret_file:
        _load(cfg.curve_secret_file, "curve_secret_file", True)
    if role == "rig" and cfg.curve_secret_file:
        if not cfg.curve_server_key:
            raise UserError(
                "learner.transport.curve_server_key: the learner's public NAME.key is needed "
                "with learner.transport.curve_secret_file on a rig"
            )
        _load(cfg.curve_server_key, "curve_server_key", False)
    if role == "learner" and cfg.curve_clients_dir and not Path(cfg.curve_clients_dir).expanduser().is_dir():
        raise UserError(
            f"learner.transport.curve_clients_dir: {cfg.curve_clients_dir} is not a directory; "
            f"create it and copy each rig's public .key file into it"
        )
    if role == "rig" and cfg.trusted_key:
        from exporter.signing import TrustedKey

        TrustedKey.from_file(cfg.trusted_key, "learner.transport.trusted_key")


def client_curve(sock: zmq.Socket, cfg: TransportConfig) -> bool:
    """Set a rig's socket up as a CurveZMQ client when keys are configured (before connect)."""
    if not cfg.curve_secret_file:
        return False
    if not cfg.curve_server_key:
        raise UserError(
            "learner.transport.curve_server_key: the learner's public NAME.key is needed "
            "with learner.transport.curve_secret_file on a rig"
        )
    pub, sec = _load(cfg.curve_secret_file, "curve_secret_file", True)
    server, _ = _load(cfg.curve_server_key, "curve_server_key", False)
    sock.curve_publickey, sock.curve_secretkey, sock.curve_serverkey = pub, sec, server
    return True


def server_curve(ctx: zmq.Context, sock: zmq.Socket, cfg: TransportConfig) -> ThreadAuthenticator | None:
    """Set the learner's socket up as a CurveZMQ server (before bind); the authenticator admits
    the rigs in curve_clients_dir (re-read when it changes) or any rig that knows the key."""
    if not cfg.curve_secret_file:
        return None
    pub, sec = _load(cfg.curve_secret_file, "curve_secret_file", True)
    auth = ThreadAuthenticator(ctx, log=logging.getLogger("motionmask.remote.auth"))
    auth.start()
    if cfg.curve_clients_dir:
        d = Path(cfg.curve_clients_dir).expanduser()
        if not d.is_dir():
            auth.stop()
            raise UserError(
                f"learner.transport.curve_clients_dir: {d} is not a directory; create it and copy "
                f"each rig's public .key file into it"
            )
        auth.configure_curve_callback(domain="*", credentials_provider=ClientKeys(d))
    else:
        auth.configure_curve(domain="*", location=zmq.auth.CURVE_ALLOW_ANY)
    sock.curve_publickey, sock.curve_secretkey = pub, sec
    sock.curve_server = True
    return auth


__all__ = ["check_keys", "client_curve", "server_curve"]
