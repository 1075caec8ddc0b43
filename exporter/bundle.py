"""Bundles on disk: one folder per version, published atomically, with pointers.

    EXPORTS/20261127T101500Z-s0004000/model.onnx       self-contained ONNX model (no .onnx.data)
    EXPORTS/20261127T101500Z-s0004000/model.int8.onnx  the same model in 8 bits, faster on a CPU (when it
                                                       passed its check, exporter/quantize.py)
    EXPORTS/20261127T101500Z-s0004000/manifest.json    version, sequence, sha256 and length of every file,
                                                       specs, metrics (and, signed, key_id and expiry)
    EXPORTS/20261127T101500Z-s0004000/manifest.sig     Ed25519 signature of manifest.json, when the
                                                       exporter has a signing key (exporter/signing.py)
    EXPORTS/LATEST                                     the version in service (one line)
    EXPORTS/PREVIOUS                                   the one before, for rollback (one line)

A bundle is written into EXPORTS/.tmp-<version>-<pid>/, every file fsynced, the folder fsynced and
renamed into place; only then is LATEST rewritten (temp file, fsync, rename). A crash, a full disk
or a failed check leaves LATEST on the previous good bundle. An exporter and a device keep the same
layout, so `motionmask predict --model EXPORTS` and BundleRunner read either.

No torch here: devices import this module.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import json_input
from common.atomic import fsync_dir
from common.errors import UserError
from common.log import log_event
from common.pids import pid_alive
from exporter.signing import SIG_FILE, next_sequence, signed_fields

logger = logging.getLogger(__name__)

FORMAT = "motionmask-bundle"
FORMAT_VERSION = 1
MODEL_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"  # the same model in 8 bits (exporter/quantize.py), when it passed its check
PRECISIONS = ("auto", "fp32", "int8")  # which of a bundle's models a runner loads (exporter/runtime.py)
MANIFEST_FILE = "manifest.json"
LATEST = "LATEST"
PREVIOUS = "PREVIOUS"
TMP_PREFIX = ".tmp-"
# Version names become folder names, also on devices that got them over the network: no path
# separators, no leading dot, bounded length.
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
FILE_RE = VERSION_RE


@dataclass
class Bundle:
    dir: Path
    manifest: dict[str, Any]

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    @property
    def model_path(self) -> Path:
        return self.dir / MODEL_FILE

    @property
    def int8_path(self) -> Path | None:
        """The 8-bit model, or None where the bundle has none (older, or the int8 check refused it)."""
        return self.dir / INT8_FILE if INT8_FILE in self.manifest.get("files", {}) else None

    @property
    def sha256(self) -> str:
        return str(self.manifest["sha256"])

    @property
    def step(self) -> int:
        step = self.manifest.get("source", {}).get("step", -1)  # parse_manifest: source is a mapping
        return step if isinstance(step, int) and not isinstance(step, bool) else -1


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def check_version_name(version: str) -> str:
    if not isinstance(version, str) or not VERSION_RE.match(version):
        raise UserError(
            f"bundle version {version!r} is not a valid name (letters, digits, '.', '_', '-'; "
            f"at most 100; no leading dot)"
        )
    return version


def new_version(exports: Path, step: int, now: float | None = None) -> str:
    """A fresh, sortable version name: UTC time and training step, e.g. 20261127T101500Z-s0004000."""
    now = time.time() if now is None else now
    base = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now)) + f"-s{max(step, 0):07d}"
    version, n = base, 1
    while (exports / version).exists():
        n += 1
        version = f"{base}-{n}"
    return version


# ----------------------------------------------------------------------------------------------
# Pointers


def read_pointer(d: str | Path, name: str = LATEST) -> str | None:
    """The version a pointer file names, or None when it is missing, empty or not a valid name."""
    try:
        text = (Path(d) / name).read_text().strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except UnicodeDecodeError:
        return None
    return text if VERSION_RE.match(text) else None


def write_pointer(d: str | Path, version: str, name: str = LATEST) -> None:
    """Rewrite a pointer atomically (temp file, fsync, rename, fsync of the folder)."""
    d = Path(d)
    data = f"{check_version_name(version)}\n".encode()
    fd, tmp = tempfile.mkstemp(dir=d, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o644)  # readable like the bundles (mkstemp makes it private)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, d / name)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(d)


def versions(d: str | Path) -> list[str]:
    """Complete bundles in an exports folder (those with a manifest), oldest first."""
    d = Path(d)
    if not d.is_dir():
        return []
    found = [p.name for p in d.iterdir() if VERSION_RE.match(p.name) and p.is_dir() and (p / MANIFEST_FILE).is_file()]
    return sorted(found)


# ----------------------------------------------------------------------------------------------
# Reading


def resolve_bundle(path: str | Path) -> Path:
    """A bundle folder (it holds manifest.json), or an exports folder (it holds LATEST), as the
    bundle folder to load."""
    p = Path(path).expanduser()
    if (p / MANIFEST_FILE).is_file():
        return p
    if (p / LATEST).is_file():
        version = read_pointer(p)
        if version is None:
            raise UserError(
                f"{p / LATEST}: does not name a bundle version; re-export, or `motionmask device --dir {p} --rollback`"
            )
        if not (p / version / MANIFEST_FILE).is_file():
            raise UserError(f"{p / LATEST}: names {version}, but {p / version} holds no bundle")
        return p / version
    if not p.exists():
        raise UserError(f"{p}: no such bundle or exports folder")
    raise UserError(
        f"{p}: neither a bundle folder (no {MANIFEST_FILE}) nor an exports folder (no {LATEST}); "
        f"make one with `motionmask export --checkpoint CKPT --out {p}`"
    )


def _file_entry_ok(name: Any, meta: Any) -> bool:
    """A manifest's files entry: a safe name, a sha256 string and, when given, a length >= 0."""
    if not (
        isinstance(name, str) and FILE_RE.match(name) and isinstance(meta, dict) and isinstance(meta.get("sha256"), str)
    ):
        return False
    n = meta.get("bytes", 0)
    return isinstance(n, int) and not isinstance(n, bool) and n >= 0


def parse_manifest(data: bytes, where: str | Path) -> dict[str, Any]:
    """A manifest's bytes (from disk, or pulled from an exporter) checked as far as every reader
    relies on them; UserError naming `where` for anything else."""
    try:
        m = json_input.loads(data)
    except ValueError as e:  # not UTF-8, not JSON, nested too deeply, a number too long
        raise UserError(f"{where}: not a readable manifest ({str(e)[:200]})") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise UserError(f"{where}: not a motionmask bundle manifest")
    if m.get("format_version") != FORMAT_VERSION or isinstance(m.get("format_version"), bool):
        raise UserError(
            f"{where}: bundle format version {str(m.get('format_version'))[:40]} is not supported "
            f"(this motionmask reads version {FORMAT_VERSION})"
        )
    files = m.get("files")
    if (
        not isinstance(files, dict)
        or MODEL_FILE not in files
        or not all(_file_entry_ok(k, v) for k, v in files.items())
    ):
        raise UserError(f"{where}: manifest lists no valid files")
    if not isinstance(m.get("source", {}), dict):
        raise UserError(f"{where}: manifest's source is not a mapping")
    check_version_name(m.get("version"))
    if m.get("sha256") != files[MODEL_FILE]["sha256"]:
        raise UserError(f"{where}: manifest sha256 and files.{MODEL_FILE}.sha256 differ")
    return m


def load_bundle(path: str | Path, check_hash: bool = True) -> Bundle:
    """Read and check a bundle (a bundle folder or an exports folder's LATEST). check_hash:
    compare every file's sha256 with the manifest (a few ms per MB)."""
    d = resolve_bundle(path)
    m = parse_manifest((d / MANIFEST_FILE).read_bytes(), d / MANIFEST_FILE)
    for name, meta in m["files"].items():
        f = d / name
        if not f.is_file():
            raise UserError(f"{f}: missing from the bundle; re-export it or pull it again")
        if check_hash:
            got = sha256_file(f)
            if got != meta["sha256"]:
                raise UserError(
                    f"{f}: sha256 {got[:12]}... does not match the manifest's {meta['sha256'][:12]}...: "
                    f"the bundle is damaged or was altered; re-export it or pull it again"
                )
    return Bundle(d, m)


# ----------------------------------------------------------------------------------------------
# Writing


def _disk_message(path: Path, e: OSError) -> str:
    if e.errno == errno.ENOSPC or e.errno == errno.EDQUOT:
        return f"{path}: no space left on the device"
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{path}: not writable ({e.strerror})"
    return f"{path}: {e.strerror or e}"


def check_exports_dir(path: str | Path) -> Path:
    """Create the exports folder and prove it writable now, before minutes of work."""
    d = Path(path).expanduser()
    if d.exists() and not d.is_dir():
        raise UserError(f"--out {d}: is a file, not a folder; pass a folder path")
    try:
        d.mkdir(parents=True, exist_ok=True)
        probe = d / f"{TMP_PREFIX}probe-{os.getpid()}"
        with open(probe, "wb") as f:
            f.write(b"ok")
        probe.unlink()
    except OSError as e:
        raise UserError(f"{_disk_message(d, e)}; choose an exports folder you can write to") from None
    return d


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def sequences(d: str | Path) -> list[int]:
    """The sequence numbers of the bundles in an exports folder (bundles from before sequences: none)."""
    found = []
    for v in versions(d):
        try:
            seq = json.loads((Path(d) / v / MANIFEST_FILE).read_bytes()).get("sequence")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(seq, int):
            found.append(seq)
    return found


def publish_bundle(
    exports: str | Path,
    version: str,
    files: dict[str, bytes],
    manifest: dict[str, Any],
    keep: int = 5,
    signer: Any = None,
    expiry_days: float = 30.0,
) -> Path:
    """Write a bundle atomically and point LATEST at it (PREVIOUS at the bundle it replaces).

    files: name -> bytes (model.onnx, and any other file the bundle ships); their sha256 and size
    go into manifest["files"] (and the model's into manifest["sha256"]). Every manifest gets a
    sequence number above the folder's earlier ones; with a signer (exporter.signing.Signer) it
    also gets key_id and an expiry `expiry_days` ahead, and manifest.sig is written next to it in
    the same atomic step. On any error nothing changes: the temp folder is removed and a
    UserError says why."""
    d = Path(exports)
    check_version_name(version)
    final = d / version
    if final.exists():
        raise UserError(f"{final}: already exists; bundle versions are never overwritten")
    manifest = _complete_manifest(d, version, files, manifest, signer, expiry_days)
    body = (json.dumps(manifest, indent=2) + "\n").encode()
    signature = signer.sign(body) if signer is not None else None
    _check_space(d, version, sum(len(b) for b in files.values()) + len(body) + (1 << 20))
    previous = read_pointer(d)
    _write_bundle(d, version, files, body, signature, previous)
    try:
        if previous and previous != version:
            write_pointer(d, previous, PREVIOUS)
        write_pointer(d, version, LATEST)
    except OSError as e:
        raise UserError(
            f"{_disk_message(d, e)} while pointing LATEST at {version}; "
            f"LATEST still names {read_pointer(d) or 'no bundle'}"
        ) from None
    prune(d, keep)
    return final


def _complete_manifest(
    d: Path, version: str, files: dict[str, bytes], manifest: dict[str, Any], signer: Any, expiry_days: float
) -> dict[str, Any]:
    """A copy of `manifest` with the files' sha256 and sizes, the format, the version, the next
    sequence number and, with a signer, key_id and expiry."""
    manifest = dict(manifest)
    manifest["files"] = {name: {"sha256": sha256_bytes(data), "bytes": len(data)} for name, data in files.items()}
    manifest["sha256"] = manifest["files"][MODEL_FILE]["sha256"]
    manifest.update(format=FORMAT, format_version=FORMAT_VERSION, version=version)
    sequence = next_sequence(sequences(d))
    manifest["sequence"] = sequence
    if signer is not None:
        manifest.update(signed_fields(signer, sequence, expiry_days))
    return manifest


def _check_space(d: Path, version: str, need: int) -> None:
    """A UserError, before anything is written, when the folder's disk has less than `need` bytes free."""
    try:
        free = shutil.disk_usage(d).free
    except OSError:
        free = need
    if free < need:
        raise UserError(
            f"{d}: no space left on the device for bundle {version} (needs {need / 2**20:.1f} MB, "
            f"{free / 2**20:.1f} MB free); LATEST still names {read_pointer(d) or 'no bundle'}"
        )


def _write_bundle(
    d: Path, version: str, files: dict[str, bytes], body: bytes, signature: bytes | None, previous: str | None
) -> None:
    """Write the bundle in a temp folder and rename it to d/version; on an error remove it and
    raise a UserError that says nothing was published."""
    tmp = d / f"{TMP_PREFIX}{version}-{os.getpid()}"
    try:
        tmp.mkdir()
        for name, data in files.items():
            _write_file(tmp / name, data)
        _write_file(tmp / MANIFEST_FILE, body)
        if signature is not None:
            _write_file(tmp / SIG_FILE, signature)
        fsync_dir(tmp)
        os.rename(tmp, d / version)
        fsync_dir(d)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(
            f"{_disk_message(d, e)} while writing bundle {version}; nothing was published, "
            f"LATEST still names {previous or 'no bundle'}"
        ) from None


def install_bundle(dest: str | Path, staged: Path, keep: int = 2) -> tuple[Path, str | None]:
    """Move a checked bundle folder (staged, on the same file system) into dest as its version,
    point LATEST at it and PREVIOUS at the one it replaces. Returns (bundle dir, previous)."""
    d = Path(dest)
    m = parse_manifest((staged / MANIFEST_FILE).read_bytes(), staged / MANIFEST_FILE)
    version = m["version"]
    final = d / version
    previous = read_pointer(d)
    keep_ours = False
    if final.exists():  # the same version again (a re-pull): keep ours if it is whole and the same
        try:
            keep_ours = load_bundle(final).sha256 == m["sha256"]
        except (UserError, OSError):
            keep_ours = False
    if keep_ours:
        shutil.rmtree(staged, ignore_errors=True)
    else:
        fsync_dir(staged)
        if final.exists():  # a damaged or different copy under this name: replaced
            trash = d / f"{TMP_PREFIX}old-{version}-{os.getpid()}"
            os.rename(final, trash)
            shutil.rmtree(trash, ignore_errors=True)
        os.rename(staged, final)
        fsync_dir(d)
    if previous and previous != version:
        write_pointer(d, previous, PREVIOUS)
    write_pointer(d, version, LATEST)
    prune(d, keep)
    return final, (previous if previous != version else read_pointer(d, PREVIOUS))


def rollback(d: str | Path) -> tuple[str, str]:
    """Swap LATEST and PREVIOUS. Returns (now in service, the one rolled back from)."""
    d = Path(d)
    cur, prev = read_pointer(d), read_pointer(d, PREVIOUS)
    if not prev or not (d / prev / MANIFEST_FILE).is_file():
        raise UserError(f"{d}: no previous bundle to roll back to")
    load_bundle(d / prev)  # refuse to roll back onto a damaged bundle
    if cur:
        write_pointer(d, cur, PREVIOUS)
    write_pointer(d, prev, LATEST)
    return prev, cur or ""


def prune(d: str | Path, keep: int) -> list[str]:
    """Remove all but the newest `keep` bundles (LATEST and PREVIOUS always stay) and temp folders
    of processes that are gone. Returns the versions removed."""
    d = Path(d)
    protect = {read_pointer(d), read_pointer(d, PREVIOUS)}
    all_versions = versions(d)
    removed = []
    for v in all_versions[: max(0, len(all_versions) - keep)]:
        if v in protect:
            continue
        shutil.rmtree(d / v, ignore_errors=True)
        removed.append(v)
    for p in d.iterdir():
        if p.name.startswith(TMP_PREFIX) and p.is_dir():
            pid = p.name.rsplit("-", 1)[-1]
            if pid.isdigit() and not pid_alive(int(pid)):
                shutil.rmtree(p, ignore_errors=True)
    if removed:
        log_event(logger, "bundles_pruned", dir=d, removed=",".join(removed), kept=keep)
    return removed
