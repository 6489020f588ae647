"""A tiny TCP round-robin load balancer for the topology tests: what an operator's nginx
or HAProxy does in front of the replicas (deploy/compose.yaml).

Each new connection goes to the next backend in turn; a backend that refuses the
connection (a killed replica) is skipped for that connection. Bytes are relayed as they
are, so HTTP keep-alive connections stay on one backend until either side closes.
Runs its own asyncio loop in a daemon thread; `close()` stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager


class RoundRobinProxy:
    def __init__(self, backends: Sequence[tuple[str, int]]) -> None:
        self.backends = list(backends)
        self._turn = itertools.count()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self.port = 0
        self.connections = [0] * len(self.backends)  # per backend, for the report
        started = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(started,), name="rr-proxy", daemon=True
        )
        self._thread.start()
        started.wait(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", 0)
        )
        self.port = self._server.sockets[0].getsockname()[1]
        started.set()
        self._loop.run_forever()

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        first = next(self._turn)
        for k in range(len(self.backends)):
            index = (first + k) % len(self.backends)
            host, port = self.backends[index]
            try:
                pair = await asyncio.wait_for(asyncio.open_connection(host, port), 3)
            except (OSError, TimeoutError):
                continue
            self.connections[index] += 1
            return pair
        return None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream = await self._connect()
        if upstream is None:
            writer.close()
            return
        up_reader, up_writer = upstream

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                with contextlib.suppress(OSError, RuntimeError):
                    dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def close(self) -> None:
        async def stop() -> None:
            if self._server is not None:
                self._server.close()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


@contextmanager
def round_robin(backends: Sequence[tuple[str, int]]) -> Iterator[RoundRobinProxy]:
    proxy = RoundRobinProxy(backends)
    try:
        yield proxy
    finally:
        proxy.close()
