"""Each child's output under `CSHARE_HOME/logs/`, rotated by size.

The child writes to a pipe; a thread of the supervisor reads it line by line into a
`RotatingFileHandler`. The supervisor owns the file, so rotation is a rename between two
lines: nothing is lost or truncated under a writer (as copy-truncate would), and a child
restarted under the same name keeps appending to the same rotated series.
"""

from __future__ import annotations

import logging
import logging.handlers
import threading
from pathlib import Path
from typing import IO, Final

LOG_MAX_BYTES: Final = 10 * 2**20
LOG_BACKUPS: Final = 5
# A line longer than this is written in pieces (a child printing without newlines must
# not make the supervisor buffer without bound).
_MAX_LINE: Final = 64 * 1024


class ChildLog:
    """One child's rotating log file, shared by the readers of its successive runs."""

    def __init__(
        self, path: Path, *, max_bytes: int = LOG_MAX_BYTES, backups: int = LOG_BACKUPS
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._handler = logging.handlers.RotatingFileHandler(
            path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8"
        )
        self._handler.setFormatter(logging.Formatter("%(message)s"))
        self._readers: list[threading.Thread] = []

    def write(self, line: str) -> None:
        # The handler's lock serialises an old run's reader still draining with the new one.
        self._handler.handle(logging.makeLogRecord({"msg": line, "levelno": logging.INFO}))

    def follow(self, stream: IO[bytes], name: str) -> None:
        """Copy `stream` into the log from a daemon thread until its end (every writer gone)."""
        reader = threading.Thread(
            target=self._copy, args=(stream,), name=f"log:{name}", daemon=True
        )
        reader.start()
        self._readers = [r for r in self._readers if r.is_alive()] + [reader]

    def _copy(self, stream: IO[bytes]) -> None:
        with stream:
            for raw in iter(lambda: stream.readline(_MAX_LINE), b""):
                self.write(raw.decode("utf-8", errors="replace").rstrip("\r\n"))

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def close(self, timeout_s: float = 5.0) -> None:
        """Wait for the readers to drain (their children are stopped), then close the file."""
        for reader in self._readers:
            reader.join(timeout_s)
        self._handler.close()
