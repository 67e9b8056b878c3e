"""A free loopback port for the processes labelaudit starts itself (the demo's gateway and broker, the
benchmarks, the tests)."""

from __future__ import annotations

import socket


def _is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def free_port(span: int = 1) -> int:
    """A port p with p .. p+span-1 all free on 127.0.0.1 (the Kafka broker's controller takes p+1)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + span <= 65536 and all(_is_free(p) for p in range(port + 1, port + span)):
            return port
    raise RuntimeError("no free loopback port")


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports on 127.0.0.1 (all held at once while they are picked)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()
