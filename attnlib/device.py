"""Pick the device the course runs on.

``get_device()`` returns ``$ATTNLIB_DEVICE`` when it is set (``cpu``, ``cuda``, ``cuda:1``, ``mps``), otherwise the
best available device: CUDA, then Apple's MPS, then the CPU. Lessons call it with ``prefer="cpu"`` so their
committed outputs are reproducible; set ``ATTNLIB_DEVICE=cuda`` to run them on a GPU.
"""

from __future__ import annotations

import os

import torch

ENV_VAR = "ATTNLIB_DEVICE"


def available_devices() -> list[str]:
    """Device types usable in this process, best first."""
    found = []
    if torch.cuda.is_available():
        found.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps")
    found.append("cpu")
    return found


def get_device(prefer: str | None = None) -> torch.device:
    """The device to compute on: ``$ATTNLIB_DEVICE`` if set, else ``prefer`` if given, else the best available.

    Raises ``ValueError`` naming the source of the request when the requested device is not available.
    """
    requested, source = os.environ.get(ENV_VAR, "").strip(), f"${ENV_VAR}"
    if not requested and prefer is not None:
        requested, source = prefer, "prefer"
    if not requested:
        return torch.device(available_devices()[0])
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise ValueError(f"{source}={requested!r} is not a device name; use one of {available_devices()}") from None
    if device.type not in available_devices():
        raise ValueError(
            f"{source}={requested!r} asks for {device.type}, which is not available here; "
            f"available: {available_devices()}"
        )
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"{source}={requested!r}: only {torch.cuda.device_count()} CUDA device(s) present")
    return device
