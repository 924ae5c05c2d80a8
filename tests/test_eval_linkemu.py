"""The link emulator: the configured one-way delay is added in each direction, loss shows up as delay."""

import random
import socket
import statistics
import threading
import time

import pytest

from tiertwin.connectors.linkemu import Link, LinkEmulator, LinkPath
from tiertwin.errors import ConfigError
from tiertwin.procs import free_ports


@pytest.fixture
def echo_port():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()

    def serve():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return

            def echo(c=conn):
                with c:
                    while data := c.recv(65536):
                        c.sendall(data)

            threading.Thread(target=echo, daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    yield server.getsockname()[1]
    server.close()


def _round_trips(port, n=15, size=200):
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        rtts = []
        for _ in range(n):
            started = time.perf_counter()
            sock.sendall(b"x" * size)
            got = 0
            while got < size:
                got += len(sock.recv(65536))
            rtts.append((time.perf_counter() - started) * 1000)
        return rtts


def test_round_trip_pays_the_one_way_delay_twice(echo_port):
    direct = statistics.median(_round_trips(echo_port))
    with LinkEmulator(free_ports(1)[0], ("127.0.0.1", echo_port), LinkPath.parse(["5", "10"])) as emulator:
        rtts = _round_trips(emulator.listen_port)
    assert min(rtts) >= 2 * 15.0                       # never less than the configured path, both ways
    assert statistics.median(rtts) < 2 * 15.0 + direct + 25.0   # and not wildly more (a loaded 2-core machine)
    assert emulator.stats["up"].chunks == emulator.stats["down"].chunks == 15


def test_bytes_arrive_whole_and_in_order_despite_jitter(echo_port):
    payload = bytes(range(256)) * 4000                  # ~1 MB, many chunks, each with its own jitter
    with LinkEmulator(free_ports(1)[0], ("127.0.0.1", echo_port), LinkPath.parse(["1:3"]), seed=1) as emulator:
        with socket.create_connection(("127.0.0.1", emulator.listen_port)) as sock:
            threading.Thread(target=sock.sendall, args=(payload,), daemon=True).start()
            received = bytearray()
            while len(received) < len(payload):
                received += sock.recv(65536)
    assert bytes(received) == payload


def test_loss_is_a_retransmission_timeout_per_lost_segment():
    link = Link(one_way_ms=10.0, loss=0.1, rto_ms=200.0)
    rng = random.Random(3)
    one_segment = [link.sample_ms(rng, 100) for _ in range(4000)]
    ten_segments = [link.sample_ms(rng, 14_000) for _ in range(4000)]
    late = lambda samples: sum(d >= 200.0 for d in samples) / len(samples)
    assert late(one_segment) == pytest.approx(0.1, abs=0.02)
    assert late(ten_segments) == pytest.approx(1 - 0.9 ** 10, abs=0.03)
    assert min(one_segment) == 10.0


def test_link_specs_are_validated():
    assert Link.parse("20:3:0.001") == Link(20.0, 3.0, 0.001)
    with pytest.raises(ConfigError, match="ONE_WAY_MS"):
        Link.parse("fast")
    with pytest.raises(ConfigError):
        Link.parse("-1")
