"""`motionmask keys`: create a CurveZMQ certificate pair for a publisher or a subscriber, or
(--signing) the Ed25519 key pair that signs model bundles for devices."""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

import zmq.auth

from common.atomic import write_durable, write_private
from common.errors import UserError

EPILOG = """examples:
  motionmask keys keys/ --name server     # on the robot: keys/server.key, keys/server.key_secret
  motionmask keys keys/ --name laptop     # on each viewer: keys/laptop.key, keys/laptop.key_secret

then, on the robot, in the config:
  publish:
    curve_secret_file: keys/server.key_secret
    curve_clients_dir: keys/clients        # copy each viewer's laptop.key (public) in here
and on the viewer:
  motionmask subscribe --endpoint tcp://robot:5555 --curve-server-key server.key \\
      --curve-secret-file keys/laptop.key_secret
NAME.key is public: hand it out. NAME.key_secret stays on its machine (written mode 0600).

signing model bundles (docs/signing.md):
  motionmask keys /etc/motionmask --name exporter --signing
      # /etc/motionmask/exporter.sign_key (private, 0600) and exporter.sign_pub (public)
then, on the exporter, in the config:
  export:
    signing_key: /etc/motionmask/exporter.sign_key
and on each device (copy exporter.sign_pub there):
  motionmask device --endpoint tcp://exporter:5560 --dir model/ --trusted-key exporter.sign_pub
The private key is never printed or logged; only its key id is."""


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "keys",
        help="create CurveZMQ key files for encrypted, authenticated masks",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("dir", type=Path, help="directory for the key files (created if missing)")
    p.add_argument("--name", default="server", help="file stem: NAME.key and NAME.key_secret (default server)")
    p.add_argument("--force", action="store_true", help="replace existing key files of that name")
    p.add_argument(
        "--signing",
        action="store_true",
        help="an Ed25519 pair that signs model bundles (NAME.sign_key, NAME.sign_pub) instead of CurveZMQ keys",
    )
    return p


def create_keys(directory: Path, name: str, force: bool = False) -> tuple[Path, Path]:
    """Write NAME.key (public) and NAME.key_secret (0600) atomically; refuse to overwrite
    unless force, since replacing a server's secret locks out every client."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise UserError(f"--name {name!r}: use letters, digits, '_', '-' or '.'")
    directory.mkdir(parents=True, exist_ok=True)
    public, secret = directory / f"{name}.key", directory / f"{name}.key_secret"
    existing = [p for p in (public, secret) if p.exists()]
    if existing and not force:
        raise UserError(
            f"{existing[0]} already exists; pass --force to replace it "
            f"(clients holding the old public key will be refused)"
        )
    with tempfile.TemporaryDirectory(dir=directory, prefix=".keys.") as tmp:  # 0700: private meanwhile
        pub_tmp, sec_tmp = zmq.auth.create_certificates(tmp, name)
        write_private(secret, Path(sec_tmp).read_bytes())
        write_durable(public, Path(pub_tmp).read_bytes())
    return public, secret


def run(args: argparse.Namespace) -> int:
    if args.signing:
        from exporter.signing import Signer, create_signing_keys

        if not re.fullmatch(r"[A-Za-z0-9_.-]+", args.name):
            raise UserError(f"--name {args.name!r}: use letters, digits, '_', '-' or '.'")
        secret, public = create_signing_keys(args.dir, args.name, args.force)
        print(f"public key (pin it on devices: --trusted-key): {public}")
        print(f"private key (export.signing_key; keep it): {secret}")
        print(f"key id: {Signer.from_file(secret).key_id}")
        return 0
    public, secret = create_keys(args.dir, args.name, args.force)
    print(f"public key (share it): {public}")
    print(f"secret key (keep it):  {secret}")
    print("see `motionmask keys --help` for where each goes", file=sys.stderr)
    return 0
