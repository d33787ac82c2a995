"""Kernel ports for `make test`'s two pytest-xdist workers (``-n 2 --dist loadfile``).

jupyter_client picks a kernel's five TCP ports by asking the OS for free ones and closing them again; the kernel
binds them a moment later. Two processes that start kernels at the same time can be handed the same ports, and a
client may then talk to the other process's kernel, which ignores it (seen once: a kernel idle for 13 minutes).
Here each xdist worker takes its kernels' ports from a range of its own, below the range the OS hands out, so the
workers never share one. Without xdist (``pytest`` alone) nothing changes.
"""

from __future__ import annotations

import os
import socket

PORTS_PER_WORKER = 2000
FIRST_PORT = 20000  # below Linux's ephemeral range (32768-60999), so the OS gives these to no one else


def _worker_index() -> int | None:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    return int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else None


def worker_port_range(index: int) -> range:
    start = FIRST_PORT + PORTS_PER_WORKER * index
    return range(start, start + PORTS_PER_WORKER)


def _free(ip: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((ip, port))
        except OSError:
            return False
    return True


def _pin_kernel_ports(index: int) -> None:
    """Make jupyter_client's port cache (its guard against this race within one process, jupyter_client issue
    487) hand out ports from this worker's range only."""
    from jupyter_client.connect import LocalPortCache

    ports = worker_port_range(index)
    state = {"next": 0}

    def find_available_port(self, ip: str) -> int:
        for _ in range(len(ports)):
            port = ports[state["next"] % len(ports)]
            state["next"] += 1  # round the range: a port is handed out again only after 2000 others
            if port not in self.currently_used_ports and _free(ip, port):
                self.currently_used_ports.add(port)
                return port
        raise RuntimeError(f"no free port in {ports} for a kernel")

    LocalPortCache.find_available_port = find_available_port


def pytest_configure(config):
    index = _worker_index()
    if index is not None:
        _pin_kernel_ports(index)
