"""The storage backend interface: a content-addressed object store.

Objects are named by the SHA-256 of their bytes, so identical content is stored once and
an object never changes after it is written. A backend writes a new object to a
temporary place while hashing it, and only then commits it under its hash: a reader can
never see a half-written object, and an interrupted upload leaves nothing behind under
a real name.

Backends know nothing of datasets, organizations or the database; the catalog
(`datasets.catalog`) decides which object belongs to what.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from datasets.wire import Reader, is_sha256
from policies.errors import Invalid, NotFound, Unavailable

DEFAULT_CHUNK = 1024 * 1024


class StorageError(Unavailable):
    """The store did not do what was asked (unreachable, refused, failed); retryable."""

    code = "storage_unavailable"


class ObjectMissing(NotFound):
    """No object with this checksum in the store."""

    code = "object_missing"


class ChecksumMismatch(Invalid):
    """The bytes received do not have the checksum the sender announced."""

    code = "checksum_mismatch"


@dataclass(frozen=True, slots=True)
class PutResult:
    sha256: str
    size: int
    created: bool  # False: identical content was already stored (deduplicated)


def check_sha256(sha256: str) -> str:
    if not is_sha256(sha256):
        raise ValueError(f"not a lowercase hex SHA-256: {sha256[:80]!r}")
    return sha256


def object_key(sha256: str) -> str:
    """`objects/ab/cd/abcd...`: two levels of fan-out keep directories and listings small."""
    check_sha256(sha256)
    return f"objects/{sha256[:2]}/{sha256[2:4]}/{sha256}"


class Storage(ABC):
    """A content-addressed object store (see the module docstring)."""

    kind: str = ""

    @abstractmethod
    def put_stream(self, reader: Reader, *, expected_sha256: str | None = None) -> PutResult:
        """Store everything `reader.read(n)` yields until it returns b"".

        Reads in bounded chunks, never the whole stream. When `expected_sha256` is given
        and the bytes hash differently, nothing is committed and `ChecksumMismatch` is
        raised. Any exception from `reader` (a client going away) aborts the same way.
        """

    @abstractmethod
    def open(self, sha256: str) -> Iterator[bytes]:
        """The object's bytes in chunks. Raises `ObjectMissing` at once (not on the first
        `next`) when there is no such object. The chunks are not verified here: callers
        that hand them on check them against the checksum (`datasets.catalog.verified`)."""

    @abstractmethod
    def exists(self, sha256: str) -> bool: ...

    @abstractmethod
    def size(self, sha256: str) -> int:
        """The stored object's size in bytes; `ObjectMissing` if absent."""

    @abstractmethod
    def delete(self, sha256: str) -> None:
        """Remove the object; removing an absent object is not an error."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """Where the objects live, for people (never credentials)."""

    def check(self) -> None:
        """Raise `StorageError` if the store cannot be written and read back."""
        data = b"cshare storage check\n"
        reader = _BytesReader(data)
        result = self.put_stream(reader)
        got = b"".join(self.open(result.sha256))
        if got != data:
            raise StorageError("The store returned different bytes than were written.")


class _BytesReader:
    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)

    def read(self, size: int = -1, /) -> bytes:
        if size < 0:
            size = len(self._data)
        out, self._data = self._data[:size], self._data[size:]
        return bytes(out)
