"""The code bundle format, shared by the CLI (packs), the server (checks) and the agent
(verifies and unpacks).

Standard library only (and `datasets.wire`, itself standard library only), like
`datasets.wire`: the agent runs on members' machines and imports no server code, yet it
must accept exactly what the CLI produced.

A bundle is a gzipped tar of a project's files, made **deterministic** so that the same
content always gives the same bytes and so the same digest (`sha256:<hex>` of the
.tar.gz bytes):

- regular files only (directories are implied by the paths), sorted by path;
- every mtime 0, uid/gid 0, no user or group names;
- modes normalised: 0755 when the file is executable by its owner, else 0644;
- PAX format (long and non-ASCII paths), gzip header mtime 0 and no file name,
  compression level 6.

Which files go in (`.gitignore`, `.cshareignore`) is the CLI's business
(`api.cli.bundle_files`); this module packs the list it is given.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import tarfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

from datasets import wire

__all__ = [
    "DIGEST_PREFIX",
    "BundleError",
    "Packed",
    "digest_hex",
    "format_digest",
    "is_digest",
    "pack",
    "short",
    "unpack",
    "verify",
]

DIGEST_PREFIX: Final = "sha256:"
MEDIA_TYPE: Final = "application/gzip"
GZIP_LEVEL: Final = 6
CHUNK: Final = 1 << 20
# What one bundle may unpack to, whatever its header claims (a gzip bomb stops here).
MAX_FILES: Final = 100_000
MAX_UNPACKED_BYTES: Final = 4 << 30


class BundleError(ValueError):
    """A bundle that must not be used: wrong digest, unsafe or malformed entries."""


@dataclass(frozen=True, slots=True)
class Packed:
    digest: str  # sha256:<hex> of the .tar.gz bytes
    size: int  # bytes of the .tar.gz
    files: int
    unpacked_bytes: int


def format_digest(hex_digest: str) -> str:
    return DIGEST_PREFIX + hex_digest


def is_digest(value: str) -> bool:
    return value.startswith(DIGEST_PREFIX) and wire.is_sha256(value[len(DIGEST_PREFIX) :])


def digest_hex(value: str) -> str:
    """The hex part of `sha256:<hex>` (a bare hex digest is accepted too)."""
    hex_part = value.removeprefix(DIGEST_PREFIX)
    if not wire.is_sha256(hex_part):
        raise BundleError(f"not a bundle digest (sha256:<64 hex>): {value[:80]!r}")
    return hex_part


def short(digest: str) -> str:
    """`sha256:1a2b3c4d5e6f` for people (12 hex digits)."""
    return DIGEST_PREFIX + digest.removeprefix(DIGEST_PREFIX)[:12]


class _HashingWriter(io.RawIOBase):
    """A write-only file that hashes and counts what goes through to `out`."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self.hash = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(data)
        self.hash.update(view)
        self._out.write(view)
        self.size += len(view)
        return len(view)


def _mode(st_mode: int) -> int:
    return 0o755 if st_mode & stat.S_IXUSR else 0o644


def pack(root: Path, files: Iterable[str], out: BinaryIO) -> Packed:
    """Write the deterministic .tar.gz of `files` (paths relative to `root`, `/`-separated)
    to `out`; returns its digest and sizes."""
    names = sorted(set(files))
    sink = _HashingWriter(out)
    unpacked = 0
    with (
        gzip.GzipFile(
            filename="", mode="wb", fileobj=sink, compresslevel=GZIP_LEVEL, mtime=0
        ) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for name in names:
            if wire.safe_path(name) != name:
                raise BundleError(f"unsafe path in a bundle: {name!r}")
            path = root / name
            st = path.stat()
            info = tarfile.TarInfo(name)
            info.size = st.st_size
            info.mtime = 0
            info.mode = _mode(st.st_mode)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.type = tarfile.REGTYPE
            with path.open("rb") as handle:
                tar.addfile(info, handle)
            unpacked += st.st_size
    return Packed(format_digest(sink.hash.hexdigest()), sink.size, len(names), unpacked)


def verify(source: BinaryIO, digest: str) -> int:
    """Read `source` to its end; raise BundleError unless its sha256 is `digest`.
    Returns its size."""
    want = digest_hex(digest)
    h = hashlib.sha256()
    size = 0
    while chunk := source.read(CHUNK):
        h.update(chunk)
        size += len(chunk)
    if h.hexdigest() != want:
        raise BundleError(
            f"bundle checksum is sha256:{h.hexdigest()}, not the expected {DIGEST_PREFIX}{want}"
        )
    return size


def unpack(
    bundle: Path,
    dest: Path,
    *,
    digest: str | None = None,
    max_files: int = MAX_FILES,
    max_bytes: int = MAX_UNPACKED_BYTES,
) -> int:
    """Unpack the .tar.gz at `bundle` into `dest` (which must not exist yet); verify it
    against `digest` first when given. Refused (BundleError, nothing left in `dest`'s
    place is the caller's to clean): links, devices, absolute paths, `..`, more than
    `max_files` files or `max_bytes` bytes. Returns the number of files."""
    if digest is not None:
        with bundle.open("rb") as handle:
            verify(handle, digest)
    dest.mkdir(parents=True)
    count = 0
    total = 0
    try:
        with tarfile.open(bundle, mode="r:gz") as tar:
            for member in tar:
                name = wire.safe_path(member.name)
                if name is None:
                    raise BundleError(f"unsafe path in the bundle: {member.name[:200]!r}")
                if member.isdir():
                    (dest / name).mkdir(parents=True, exist_ok=True)
                    continue
                if not member.isreg():
                    raise BundleError(f"only regular files may be in a bundle: {name!r}")
                count += 1
                total += member.size
                if count > max_files or total > max_bytes:
                    raise BundleError(
                        f"the bundle unpacks to more than {max_files} files or {max_bytes} bytes"
                    )
                target = dest / name
                target.parent.mkdir(parents=True, exist_ok=True)
                extracted = tar.extractfile(member)
                assert extracted is not None  # a regular file
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as out:
                    written = 0
                    while chunk := extracted.read(CHUNK):
                        written += len(chunk)
                        if written > member.size:
                            raise BundleError(f"{name!r} is longer than its header says")
                        out.write(chunk)
                target.chmod(_mode(member.mode))
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        if isinstance(exc, FileExistsError):
            raise BundleError(f"the bundle holds {exc.filename!r} twice") from None
        if isinstance(exc, OSError) and not isinstance(exc, gzip.BadGzipFile):
            raise
        raise BundleError(f"the bundle is not a valid tar.gz: {exc}") from None
    return count
