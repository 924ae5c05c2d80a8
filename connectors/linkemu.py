"""Network distance for Kafka clients, emulated in user space: a TCP delay proxy per link path.

The kernel here has no ``netem`` (``tc`` cannot delay loopback traffic), so distance is
emulated where the bytes pass: a :class:`LinkEmulator` accepts TCP connections on one port,
connects each to an upstream address (a broker listener), and delivers every chunk of
bytes in each direction after the one-way delay of every :class:`Link` on its path.

* **Latency and jitter**: each chunk waits ``one_way_ms`` plus a normal jitter (clipped at
  zero) per link. Chunks leave in the order they came (a TCP stream never reorders), so a
  late chunk holds back the ones behind it, as TCP's in-order delivery does.
* **Loss**: TCP hides loss, so a lost segment shows up as delay: with probability
  ``1 - (1 - loss) ** segments`` (segments of :data:`MSS_BYTES`) a chunk is delivered one
  retransmission timeout later (``rto_ms``, Linux's ``TCP_RTO_MIN`` of 200 ms by default).

For Kafka the proxy must **be** the advertised address of the listener it fronts: clients
bootstrap through it, then reconnect to whatever the broker advertises, so a listener
advertised as the proxy makes every request of its clients pay the delay (see
``ManagedBroker(extra_listeners=...)`` and :mod:`tiertwin.jobs.experiments.evaluation`).

>>> path = LinkPath.parse(["2:0.5", "20:3:0.0001"])
>>> [link.one_way_ms for link in path.links], path.one_way_ms
([2.0, 20.0], 22.0)
>>> import random
>>> rng = random.Random(1)
>>> delays = [path.sample_ms(rng, 200) for _ in range(2000)]
>>> round(sum(delays) / len(delays))   # 22 ms, jitter around it; a rare loss adds 200 ms
22
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Sequence

from tiertwin.errors import ConfigError

MSS_BYTES = 1448          # TCP payload per segment on a 1500-byte MTU path
RTO_MIN_MS = 200.0        # Linux TCP_RTO_MIN: the earliest a segment without fast retransmit is resent
CHUNK_BYTES = 64 * 1024


@dataclass(frozen=True)
class Link:
    """One network link: one-way latency, its jitter (standard deviation) and segment loss rate."""

    one_way_ms: float
    jitter_ms: float = 0.0
    loss: float = 0.0
    rto_ms: float = RTO_MIN_MS

    def __post_init__(self) -> None:
        if not (0 <= self.one_way_ms <= 60_000 and 0 <= self.jitter_ms <= 60_000 and 0 <= self.loss < 1
                and self.rto_ms >= 0):
            raise ConfigError(f"link {self}: need 0 <= one_way_ms, jitter_ms <= 60000, 0 <= loss < 1, rto_ms >= 0")

    @classmethod
    def parse(cls, spec: str) -> "Link":
        """``"ONE_WAY_MS[:JITTER_MS[:LOSS]]"``, e.g. ``"20:3:0.0001"``.

        >>> Link.parse("20:3:0.0001")
        Link(one_way_ms=20.0, jitter_ms=3.0, loss=0.0001, rto_ms=200.0)
        """
        parts = spec.split(":")
        try:
            values = [float(p) for p in parts]
        except ValueError:
            raise ConfigError(f"link {spec!r}: use ONE_WAY_MS[:JITTER_MS[:LOSS]], e.g. 20:3:0.0001") from None
        if not 1 <= len(values) <= 3:
            raise ConfigError(f"link {spec!r}: use ONE_WAY_MS[:JITTER_MS[:LOSS]], e.g. 20:3:0.0001")
        return cls(*values)

    def sample_ms(self, rng: random.Random, nbytes: int) -> float:
        delay = max(0.0, self.one_way_ms + (rng.gauss(0.0, self.jitter_ms) if self.jitter_ms else 0.0))
        if self.loss:
            segments = max(1, math.ceil(nbytes / MSS_BYTES))
            if rng.random() < 1.0 - (1.0 - self.loss) ** segments:
                delay += self.rto_ms
        return delay

    def spec(self) -> str:
        return f"{self.one_way_ms:g}:{self.jitter_ms:g}:{self.loss:g}"


@dataclass(frozen=True)
class LinkPath:
    """The links between a client and the broker, crossed one after the other."""

    links: tuple[Link, ...] = ()

    @classmethod
    def parse(cls, specs: Sequence[str]) -> "LinkPath":
        return cls(tuple(Link.parse(s) for s in specs))

    @property
    def one_way_ms(self) -> float:
        return sum(link.one_way_ms for link in self.links)

    def sample_ms(self, rng: random.Random, nbytes: int) -> float:
        return sum(link.sample_ms(rng, nbytes) for link in self.links)


@dataclass
class DirectionStats:
    chunks: int = 0
    bytes: int = 0
    delay_ms_total: float = 0.0


@dataclass
class LinkEmulator:
    """A TCP proxy ``listen_port -> upstream`` that delays both directions by ``path``.

    ``start()`` serves from a background thread (tests, in-process use) and returns once the
    port accepts; ``stop()`` closes it. :func:`serve` runs one in the foreground (a process).
    """

    listen_port: int
    upstream: tuple[str, int]
    path: LinkPath
    host: str = "127.0.0.1"
    seed: int | None = None
    stats: dict[str, DirectionStats] = field(default_factory=lambda: {"up": DirectionStats(), "down": DirectionStats()})

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._server = await asyncio.start_server(self._accept, self.host, self.listen_port, reuse_address=True)

    async def serve_until_cancelled(self) -> None:
        await self.open()
        async with self._server:
            await self._server.serve_forever()

    def start(self, timeout_s: float = 10.0) -> "LinkEmulator":
        def run() -> None:
            loop = asyncio.new_event_loop()
            try:
                loop.run_until_complete(self.open())
            except BaseException as exc:  # noqa: BLE001 - reported to start()'s caller
                self._failure = exc
                self._ready.set()
                return
            self._ready.set()
            try:
                loop.run_forever()
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name=f"linkemu-{self.listen_port}", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s) or self._failure is not None:
            raise ConfigError(f"link emulator could not listen on {self.host}:{self.listen_port}: {self._failure!r}")
        return self

    def stop(self) -> None:
        loop, server = self._loop, self._server
        if loop is None or server is None:
            return

        async def shutdown() -> None:
            server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        if self._thread is not None:
            asyncio.run_coroutine_threadsafe(shutdown(), loop).result(5)
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join(5)
        self._loop = self._server = None

    def __enter__(self) -> "LinkEmulator":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the two pipes of one connection -------------------------------------------------------
    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_writer.close()
            return
        pipes = [asyncio.create_task(self._pipe(client_reader, up_writer, "up")),
                 asyncio.create_task(self._pipe(up_reader, client_writer, "down"))]
        try:
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pipes:
                task.cancel()
            for writer in (client_writer, up_writer):
                writer.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: str) -> None:
        """Read chunks as they come; deliver each at its due time, in order."""
        loop, stats = asyncio.get_running_loop(), self.stats[direction]
        queue: asyncio.Queue[tuple[float, bytes | None]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                if data is None:
                    return
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()

        delivering = asyncio.create_task(deliver())
        last_due = 0.0
        try:
            while True:
                data = await reader.read(CHUNK_BYTES)
                if not data:
                    break
                delay_ms = self.path.sample_ms(self._rng, len(data))
                stats.chunks += 1
                stats.bytes += len(data)
                stats.delay_ms_total += delay_ms
                last_due = max(loop.time() + delay_ms / 1000.0, last_due)
                queue.put_nowait((last_due, data))
            queue.put_nowait((last_due, None))
            await delivering
        finally:
            delivering.cancel()


def serve(listen_port: int, upstream: tuple[str, int], path: LinkPath, host: str = "127.0.0.1",
          seed: int | None = None) -> None:
    """Run one emulator in the foreground until interrupted (SIGINT / SIGTERM end the process)."""
    emulator = LinkEmulator(listen_port, upstream, path, host=host, seed=seed)
    try:
        asyncio.run(emulator.serve_until_cancelled())
    except KeyboardInterrupt:
        pass


def wait_listening(host: str, port: int, timeout_s: float = 10.0) -> bool:
    """True once ``host:port`` accepts a TCP connection (within ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            sock.settimeout(0.2)
            if sock.connect_ex((host, port)) == 0:
                return True
        time.sleep(0.05)
    return False


def parse_address(text: str) -> tuple[str, int]:
    """``"127.0.0.1:9092"`` -> ``("127.0.0.1", 9092)``; only loopback addresses are accepted."""
    host, _, port = text.rpartition(":")
    if host not in ("127.0.0.1", "localhost", "::1") or not port.isdigit():
        raise ConfigError(f"address {text!r}: use a loopback HOST:PORT such as 127.0.0.1:9092")
    return host, int(port)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m tiertwin.connectors.linkemu --listen 19192 --upstream 127.0.0.1:29192 --link 20:3:0.0001``."""
    parser = argparse.ArgumentParser(prog="linkemu", description=__doc__.splitlines()[0])
    parser.add_argument("--listen", type=int, required=True, help="port to accept clients on (127.0.0.1)")
    parser.add_argument("--upstream", required=True, help="HOST:PORT to forward to")
    parser.add_argument("--link", action="append", default=[], help="ONE_WAY_MS[:JITTER_MS[:LOSS]], repeatable")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    serve(args.listen, parse_address(args.upstream), LinkPath.parse(args.link), seed=args.seed)


if __name__ == "__main__":  # pragma: no cover - process entry point
    main()
