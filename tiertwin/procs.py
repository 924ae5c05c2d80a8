"""Small process and port helpers shared by the broker manager, the job launcher and tests."""

from __future__ import annotations

import os
import socket
from pathlib import Path


def pid_alive(pid: int) -> bool:
    """Is ``pid`` a live process? Reaps it first if it is our exited child, and counts zombies as dead.

    >>> pid_alive(os.getpid())
    True
    """
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie whose parent has not reaped it yet
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return True


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct ports that were free on ``host`` a moment ago."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def freeze_heap() -> None:
    """Collect once, then exclude every object alive now from later collections (``gc.freeze``).

    For a long-running process after its start-up (an agent, the simulator): its heap is mostly
    what it loaded, and each full collection walked all of it, pausing the process for 80-250 ms.
    Only garbage made before the freeze is kept. Process-wide: call it from a command, not a library.
    """
    import gc

    gc.collect()
    gc.freeze()
