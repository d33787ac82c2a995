"""Under `make test`'s pytest-xdist workers, each worker's Jupyter kernels get ports from a range of its own (the
root conftest.py), so two workers starting kernels at once cannot be handed the same port."""

from __future__ import annotations

import os

import pytest


def test_a_worker_hands_its_kernels_ports_from_its_own_range():
    from jupyter_client.connect import LocalPortCache

    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if not worker:
        pytest.skip("not under pytest-xdist: one process, nothing to share ports with")
    index = int(worker.removeprefix("gw"))
    low, high = 20000 + 2000 * index, 20000 + 2000 * (index + 1)
    cache = LocalPortCache.instance()
    ports = [cache.find_available_port("127.0.0.1") for _ in range(5)]
    try:
        assert all(low <= p < high for p in ports), (worker, ports)
        assert len(set(ports)) == 5
    finally:
        for p in ports:
            cache.return_port(p)
