"""Signed bundles: the exporter signs each bundle's manifest with Ed25519; a device with a pinned
public key checks it, with the small part of The Update Framework a device needs (docs/signing.md).

    EXPORTS/<version>/manifest.json   + "sequence" (monotonic), "expires", "key_id"; lists every
                                      file with its sha256 and length (the signed part)
    EXPORTS/<version>/manifest.sig    {"alg": "ed25519", "key_id", "sig"}: the signature of the
                                      manifest's exact bytes (after a domain-separation prefix)
    DEVICE/TRUST.json                 the highest sequence (and its version) the device installed

A device with a pinned key refuses a bundle that is unsigned, signed by another key, whose
manifest changed after signing, whose sequence is below the highest it installed (rollback), or
whose expiry has passed (freeze); it downloads no file beyond the signed length.

No torch here: devices import this module. Its one dependency is `cryptography` (prebuilt wheels
for x86_64, aarch64 and armv7); docs/signing.md says why not OpenSSF model-signing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import stat
import time
from pathlib import Path
from typing import Any

from common import json_input
from common.atomic import write_durable, write_private
from common.errors import UserError

ALG = "ed25519"
SIG_FILE = "manifest.sig"
TRUST_FILE = "TRUST.json"
PRIVATE_SUFFIX = ".sign_key"  # NAME.sign_key (0600) and NAME.sign_pub, next to CurveZMQ's NAME.key(_secret)
PUBLIC_SUFFIX = ".sign_pub"
# What a signature covers: this prefix and the manifest's bytes, so that a signature made for a
# bundle can never be taken for a signature of anything else this key might sign one day.
DOMAIN = b"motionmask-bundle-manifest-v1\n"
MAX_SIG_BYTES = 4 << 10  # a signature file is ~200 bytes; a device never downloads more
MAX_MANIFEST_BYTES = 256 << 10  # a manifest is a few KB; the cap holds before the signature is checked
DEFAULT_EXPIRY_DAYS = 30.0


class SignatureError(UserError):
    """A bundle the device's trust policy refuses. kind: unsigned, bad_signature, wrong_key,
    rollback, expired, oversized."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def key_id(public_raw: bytes) -> str:
    """A short name for a public key (first 16 hex digits of its sha256): logs and the manifest say
    which key signed, never the key itself."""
    return hashlib.sha256(public_raw).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------
# Keys


def _ed25519():
    try:
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:  # pragma: no cover - a dependency of the package
        raise UserError("signed bundles need the `cryptography` package; pip install cryptography") from None
    return ed25519


def _serialization():
    from cryptography.hazmat.primitives import serialization

    return serialization


def create_signing_keys(directory: str | Path, name: str, force: bool = False) -> tuple[Path, Path]:
    """Write NAME.sign_key (PKCS#8 PEM, mode 0600, created private: never readable by others for a
    moment) and NAME.sign_pub (PEM) into directory; refuse to overwrite unless force, since a new
    key makes every device that pinned the old one refuse new bundles."""
    ser = _serialization()
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    private, public = d / f"{name}{PRIVATE_SUFFIX}", d / f"{name}{PUBLIC_SUFFIX}"
    existing = [p for p in (private, public) if p.exists()]
    if existing and not force:
        raise UserError(
            f"{existing[0]} already exists; pass --force to replace it (devices that pinned "
            f"the old public key will refuse bundles signed by the new one)"
        )
    key = _ed25519().Ed25519PrivateKey.generate()
    priv_pem = key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption())
    pub_pem = key.public_key().public_bytes(ser.Encoding.PEM, ser.PublicFormat.SubjectPublicKeyInfo)
    write_private(private, priv_pem)
    write_durable(public, pub_pem)
    return private, public


def _public_raw(public_key: Any) -> bytes:
    ser = _serialization()
    return public_key.public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw)


class Signer:
    """The exporter's private key. Signs manifests; never logs or repr()s the key."""

    def __init__(self, private_key: Any, path: str | Path = ""):
        self._key = private_key
        self.path = str(path)
        self.key_id = key_id(_public_raw(private_key.public_key()))

    def __repr__(self) -> str:
        return f"Signer(key_id={self.key_id})"

    @classmethod
    def from_file(cls, path: str | Path, what: str = "export.signing_key") -> Signer:
        """Load NAME.sign_key; refuse a file others can read (as ssh does): a signing key that leaked
        lets anyone ship models to every device."""
        p = Path(path).expanduser()
        try:
            st = p.stat()
            data = p.read_bytes()
        except OSError as e:
            raise UserError(
                f"{what} {p}: cannot read it ({e.strerror}); create one with `motionmask keys DIR --signing`"
            ) from None
        if stat.S_IMODE(st.st_mode) & 0o077:
            raise UserError(
                f"{what} {p}: permissions {stat.S_IMODE(st.st_mode):04o} let others read the private key; chmod 600 {p}"
            )
        try:
            key = _serialization().load_pem_private_key(data, password=None)
        except (ValueError, TypeError):
            key = None
        if not isinstance(key, _ed25519().Ed25519PrivateKey):
            raise UserError(
                f"{what} {p}: not an Ed25519 private key in PEM (the NAME{PRIVATE_SUFFIX} file "
                f"of `motionmask keys DIR --signing`)"
            )
        return cls(key, p)

    def sign(self, manifest_body: bytes) -> bytes:
        """The manifest.sig file for these exact manifest bytes."""
        sig = self._key.sign(DOMAIN + manifest_body)
        return (json.dumps({"alg": ALG, "key_id": self.key_id, "sig": base64.b64encode(sig).decode()}) + "\n").encode()


class TrustedKey:
    """A device's pinned public key."""

    def __init__(self, public_key: Any, path: str | Path = ""):
        self._key = public_key
        self.path = str(path)
        self.key_id = key_id(_public_raw(public_key))

    def __repr__(self) -> str:
        return f"TrustedKey(key_id={self.key_id})"

    @classmethod
    def from_file(cls, path: str | Path, what: str = "--trusted-key") -> TrustedKey:
        p = Path(path).expanduser()
        try:
            data = p.read_bytes()
        except OSError as e:
            raise UserError(
                f"{what} {p}: cannot read it ({e.strerror}); copy the exporter's NAME{PUBLIC_SUFFIX} here"
            ) from None
        try:
            key = _serialization().load_pem_public_key(data)
        except (ValueError, TypeError):
            key = None
        if not isinstance(key, _ed25519().Ed25519PublicKey):
            hint = " (that is the private key: pin the .sign_pub file)" if b"PRIVATE KEY" in data else ""
            raise UserError(
                f"{what} {p}: not an Ed25519 public key in PEM{hint}; use the exporter's "
                f"NAME{PUBLIC_SUFFIX} from `motionmask keys DIR --signing`"
            )
        return cls(key, p)

    def verify(self, manifest_body: bytes, sig_body: bytes | None, where: str) -> None:
        """Raise SignatureError unless sig_body is this key's signature of manifest_body."""
        from cryptography.exceptions import InvalidSignature

        if sig_body is None:
            raise SignatureError(
                "unsigned",
                f"{where}: unsigned (no {SIG_FILE}); this device pins key {self.key_id} and refuses unsigned bundles",
            )
        if len(sig_body) > MAX_SIG_BYTES:
            raise SignatureError(
                "oversized", f"{where}: {SIG_FILE} is {len(sig_body)} bytes, more than {MAX_SIG_BYTES}"
            )
        try:
            doc = json_input.loads(sig_body)
            if not isinstance(doc, dict) or doc.get("alg") != ALG:
                raise ValueError(f"alg {doc.get('alg') if isinstance(doc, dict) else None!r}")
            sig = base64.b64decode(str(doc["sig"]), validate=True)
        except (ValueError, KeyError, UnicodeDecodeError, binascii.Error) as e:
            raise SignatureError("bad_signature", f"{where}: {SIG_FILE} is not an {ALG} signature ({e})") from None
        if doc.get("key_id") != self.key_id:
            raise SignatureError(
                "wrong_key",
                f"{where}: signed by key {str(doc.get('key_id'))[:16]}, not by the pinned key {self.key_id}",
            )
        try:
            self._key.verify(sig, DOMAIN + manifest_body)
        except InvalidSignature:
            raise SignatureError(
                "bad_signature",
                f"{where}: the signature does not match the manifest (altered after signing, or forged)",
            ) from None


# ----------------------------------------------------------------------------------------------
# What the exporter adds to a manifest, and what a device checks


def next_sequence(previous: list[int], now: float | None = None) -> int:
    """Above every earlier bundle's sequence, and at least the Unix time in milliseconds: a wiped
    exports folder (or a second exporter with the same key) still ships sequences devices accept."""
    now = time.time() if now is None else now
    return max([int(now * 1000)] + [p + 1 for p in previous])


def signed_fields(signer: Signer, sequence: int, days: float, now: float | None = None) -> dict[str, Any]:
    now = time.time() if now is None else now
    expires = now + days * 86400
    return {
        "sequence": int(sequence),
        "key_id": signer.key_id,
        "expires_unix": int(expires),
        "expires": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires)),
    }


def check_fresh(manifest: dict[str, Any], trust: dict[str, Any] | None, where: str, now: float | None = None) -> int:
    """The TUF checks after the signature: expiry (freeze attack) and sequence (rollback: below the
    highest installed, or equal under another version name). Returns the sequence."""
    now = time.time() if now is None else now
    seq, expires = manifest.get("sequence"), manifest.get("expires_unix")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0 or not isinstance(expires, int):
        raise SignatureError("bad_signature", f"{where}: the signed manifest has no sequence or expiry")
    if now >= expires:
        raise SignatureError(
            "expired",
            f"{where}: expired at {manifest.get('expires')} (signed with "
            f"export.signature_days; a stale bundle replayed, or this device's "
            f"clock is wrong)",
        )
    if trust:
        high, high_version = int(trust.get("sequence", -1)), trust.get("version")
        if seq < high or (seq == high and manifest.get("version") != high_version):
            raise SignatureError(
                "rollback",
                f"{where}: sequence {seq} is not above {high} ({high_version}), the "
                f"highest this device installed: an older bundle replayed",
            )
    return seq


def read_trust(device_dir: str | Path) -> dict[str, Any] | None:
    """The device's highest installed sequence, or None (none yet, or unreadable: the caller falls
    back on the sequence of the bundle in service)."""
    try:
        doc = json_input.loads((Path(device_dir) / TRUST_FILE).read_bytes())
    except (OSError, ValueError):
        return None
    ok = isinstance(doc, dict) and isinstance(doc.get("sequence"), int) and not isinstance(doc["sequence"], bool)
    return doc if ok else None


def write_trust(device_dir: str | Path, sequence: int, version: str, key: str) -> None:
    """Rewrite TRUST.json atomically (temp file, fsync, rename, fsync of the folder): a power cut
    leaves the old or the new one, never a torn one that would forget the floor."""
    body = (
        json.dumps(
            {
                "sequence": int(sequence),
                "version": version,
                "key_id": key,
                "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
        )
        + "\n"
    )
    write_durable(Path(device_dir) / TRUST_FILE, body.encode())
