"""Shared fixtures: the devices to test on, and hypothesis profiles."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import settings

# Torch timings vary a lot on a shared 2-core machine; deadlines would only add flakiness.
settings.register_profile("default", deadline=None, max_examples=60)
settings.register_profile("ci", deadline=None, max_examples=60, derandomize=True, print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else "default")


def _device_params():
    cuda_ok = torch.cuda.is_available()
    mps = getattr(torch.backends, "mps", None)
    mps_ok = mps is not None and mps.is_available()
    return [
        pytest.param("cpu", id="cpu"),
        pytest.param("cuda", id="cuda", marks=pytest.mark.skipif(not cuda_ok, reason="no CUDA device on this machine")),
        pytest.param("mps", id="mps", marks=pytest.mark.skipif(not mps_ok, reason="no Apple MPS device here")),
    ]


@pytest.fixture(params=_device_params())
def device(request) -> torch.device:
    """Every test that takes ``device`` runs on the CPU, and on CUDA and MPS when they are present."""
    return torch.device(request.param)


@pytest.fixture(scope="module")
def one_thread():
    """Torch ops on one thread for a module of tests on tiny models: on a busy 2-core machine a second thread
    costs far more than it saves. Restored afterwards. Use with ``pytestmark = pytest.mark.usefixtures(...)``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
