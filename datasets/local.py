"""Local disk storage: the embedded default, under `CSHARE_HOME/datasets`.

Layout: `objects/ab/cd/<sha256>` (read-only files) and `tmp/` for uploads in progress,
on the same filesystem so that committing is one atomic `rename`.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from datasets.storage import (
    DEFAULT_CHUNK,
    ChecksumMismatch,
    ObjectMissing,
    PutResult,
    Storage,
    StorageError,
    object_key,
)
from datasets.wire import Reader, WriteFailed, write_hashed

TEMP_PREFIX = "upload-"
# A temp file unwritten for this long belongs to no live upload (writes touch it).
TEMP_IDLE_S = 6 * 3600.0


class LocalStorage(Storage):
    kind = "local"

    def __init__(self, root: Path, *, chunk_size: int = DEFAULT_CHUNK, fsync: bool = True) -> None:
        self.root = root
        self.chunk_size = chunk_size
        # fsync before the rename: a version row is committed right after put_stream
        # returns, and must not point at bytes a power cut can still take away.
        self.fsync = fsync
        self._tmp = root / "tmp"

    def _path(self, sha256: str) -> Path:
        return self.root / object_key(sha256)

    def put_stream(self, reader: Reader, *, expected_sha256: str | None = None) -> PutResult:
        try:
            # Only the API's own user may look inside (the objects are other people's data).
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._tmp.mkdir(exist_ok=True, mode=0o700)
            fd, tmp_name = tempfile.mkstemp(dir=self._tmp, prefix=TEMP_PREFIX)
        except OSError as exc:
            raise _write_error(exc) from None
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb", buffering=0) as out:
                # The reader's own errors (a client going away) propagate unchanged;
                # only the store's are turned into StorageError.
                # Asking for more than one network batch lets whole batches pass through
                # a chunked reader untouched (no re-slicing copies); reads stay bounded.
                chunks = iter(lambda: reader.read(4 * self.chunk_size), b"")
                try:
                    sha, size = write_hashed(chunks, out)
                except WriteFailed as exc:
                    raise _write_error(exc) from None
                if self.fsync:
                    os.fsync(out.fileno())
            if expected_sha256 is not None and expected_sha256 != sha:
                raise ChecksumMismatch(
                    f"The upload's SHA-256 is {sha}, not the announced {expected_sha256}.",
                    field="X-Content-SHA256",
                )
            return self._commit(tmp, sha, size)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def _commit(self, tmp: Path, sha: str, size: int) -> PutResult:
        final = self._path(sha)
        try:
            if final.stat().st_size == size:
                return PutResult(sha, size, created=False)  # identical content: keep one
        except FileNotFoundError:
            pass
        try:
            # Absent, or present with the wrong size (damaged): the fresh bytes replace it.
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp.chmod(0o444)
            tmp.replace(final)
            if self.fsync:
                _fsync_dir(final.parent)
        except OSError as exc:
            raise _write_error(exc) from None
        return PutResult(sha, size, created=True)

    def open(self, sha256: str) -> Iterator[bytes]:
        try:
            f = self._path(sha256).open("rb", buffering=0)
        except FileNotFoundError:
            raise ObjectMissing(f"No object {sha256} in the local store.") from None
        except OSError as exc:
            raise StorageError(f"Cannot read the local store: {exc.strerror}.") from None
        return self._chunks(f)

    def _chunks(self, f: Any) -> Iterator[bytes]:
        with f:
            while chunk := f.read(self.chunk_size):
                yield chunk

    def exists(self, sha256: str) -> bool:
        return self._path(sha256).is_file()

    def size(self, sha256: str) -> int:
        try:
            return self._path(sha256).stat().st_size
        except FileNotFoundError:
            raise ObjectMissing(f"No object {sha256} in the local store.") from None

    def delete(self, sha256: str) -> None:
        try:
            self._path(sha256).unlink()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StorageError(
                f"Cannot remove an object from the local store: {exc.strerror}."
            ) from None

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": str(self.root)}

    def sweep_temp(self, idle_s: float = TEMP_IDLE_S) -> int:
        """Remove upload temp files nobody has written to for `idle_s`: what a killed
        process left (every failure it lives through removes its own). Returns how many."""
        removed = 0
        cutoff = time.time() - idle_s
        try:
            entries = list(os.scandir(self._tmp))
        except FileNotFoundError:
            return 0
        for entry in entries:
            with contextlib.suppress(FileNotFoundError):
                if entry.name.startswith(TEMP_PREFIX) and entry.stat().st_mtime < cutoff:
                    os.unlink(entry.path)
                    removed += 1
        return removed


def _write_error(exc: OSError) -> StorageError:
    return StorageError(f"Cannot write to the local store: {exc.strerror or exc}.")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
