"""datasets.wire.BackgroundWriter and write_hashed: order kept, partial writes finished,
write errors reported as such."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from typing import Any

import pytest

from datasets.wire import BackgroundWriter, WriteFailed, write_hashed


class _Trickle(io.RawIOBase):
    """A raw file that takes at most 3 bytes per write, and fails from the nth write on."""

    def __init__(self, fail_from: int | None = None) -> None:
        self.data = bytearray()
        self.calls = 0
        self.fail_from = fail_from

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        self.calls += 1
        if self.fail_from is not None and self.calls >= self.fail_from:
            raise OSError(28, "No space left on device")
        piece = bytes(b[:3])
        self.data += piece
        return len(piece)


def test_every_chunk_is_written_whole_and_in_order() -> None:
    out = _Trickle()
    writer = BackgroundWriter(out, depth=2)
    chunks = [bytes([i]) * (i + 1) for i in range(50)]
    for chunk in chunks:
        writer.write(chunk)
    assert writer.finish() is None
    assert bytes(out.data) == b"".join(chunks)


def test_a_failed_write_is_reported_and_the_producer_never_blocks() -> None:
    out = _Trickle(fail_from=5)
    writer = BackgroundWriter(out, depth=2)
    for _ in range(100):  # far more than the queue holds: the rest are dropped
        writer.write(b"abcdefgh")
    error = writer.finish()
    assert isinstance(error, OSError) and error.errno == 28
    assert writer.error is error
    # 3 bytes a call: the first chunk whole (3 calls), 3 bytes of the second, then the
    # failing fifth call; nothing after it.
    assert bytes(out.data) == b"abcdefgh" + b"abc"


def test_a_real_file(tmp_path: Any) -> None:
    path = tmp_path / "f.bin"
    with path.open("wb", buffering=0) as f:
        writer = BackgroundWriter(f)
        writer.write(b"x" * (1 << 20))
        writer.write(b"y")
        assert writer.finish() is None
    assert path.stat().st_size == (1 << 20) + 1


def test_write_hashed_tells_a_failed_write_from_a_failed_source() -> None:
    data = [b"abcdefgh"] * 3
    sha, size = write_hashed(iter(data), _Trickle())
    assert (sha, size) == (hashlib.sha256(b"".join(data)).hexdigest(), 24)

    with pytest.raises(WriteFailed) as failed:
        write_hashed(iter([b"abcdefgh"] * 100), _Trickle(fail_from=2))
    assert failed.value.errno == 28 and isinstance(failed.value, OSError)

    class ClientGone(Exception):
        pass

    def source() -> Iterator[bytes]:
        yield b"abc"
        raise ClientGone

    with pytest.raises(ClientGone):  # unchanged, not taken for a write failure
        write_hashed(source(), _Trickle())
