"""The wire protocol between the grading process and the sandbox: what goes in (the checks' inputs as ``.npy``
files and JSON: :class:`Arrays`, :func:`case_spec`) and what comes back (JSON lines, outputs as base64 ``.npy``
bytes), validated here before anything is judged (:func:`events`, :func:`decode`)."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np

from .common import Case

MAX_ELEMENTS = 1_000_000
MAX_ARRAY_BYTES = 16_000_000


class Arrays:
    """The checks' arrays as ``.npy`` bytes named ``<prefix><n>.npy`` (``blobs``, written into a job folder by
    :func:`write_inputs`); plain values travel in the JSON."""

    def __init__(self, prefix: str = ""):
        self.prefix = prefix
        self.blobs: dict[str, bytes] = {}

    def spec(self, value):
        if isinstance(value, np.ndarray):
            name = f"{self.prefix}{len(self.blobs)}.npy"
            buf = io.BytesIO()
            np.save(buf, value, allow_pickle=False)
            self.blobs[name] = buf.getvalue()
            return {"npy": name}
        if isinstance(value, (bool, int, float, str)) or value is None:
            return {"json": value}
        if isinstance(value, list) and all(type(v) in (bool, int, float) for v in value):
            return {"json": value}  # a Python list argument (e.g. lengths), as a docstring may allow
        raise TypeError(f"cannot send {type(value).__name__} to the sandbox")


def write_inputs(folder: Path, blobs: dict[str, bytes]) -> None:
    """Write a job's input files (``name -> .npy bytes``) into its ``inputs`` folder."""
    for name, data in blobs.items():
        (folder / name).write_bytes(data)


def case_spec(case: Case, arrays: Arrays) -> dict:
    return {
        "args": [arrays.spec(a) for a in case.args],
        "kwargs": {k: arrays.spec(v) for k, v in case.kwargs.items()},
        "init": [arrays.spec(a) for a in case.init],
        "weights": {k: arrays.spec(v) for k, v in case.weights.items()},
        "grad_output": None if case.grad_output is None else arrays.spec(case.grad_output),
    }


def events(lines: list[str]) -> list[dict]:
    """The JSON objects among a worker's lines (anything else is ignored)."""
    out = []
    for line in lines:
        try:
            e = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if isinstance(e, dict):
            out.append(e)
    return out


def decode(spec: object) -> np.ndarray:
    """One output as sent by the worker, validated: ``{"npy": base64}``, a plain numeric array of bounded size,
    read without pickles."""
    text = spec.get("npy") if isinstance(spec, dict) and set(spec) == {"npy"} else spec
    if not isinstance(text, str) or len(text) > MAX_ARRAY_BYTES * 4 // 3 + 8:
        raise ValueError("not an encoded array")
    raw = base64.b64decode(text, validate=True)
    if len(raw) > MAX_ARRAY_BYTES:
        raise ValueError("far too large")
    fh = io.BytesIO(raw)
    version = np.lib.format.read_magic(fh)
    if version not in ((1, 0), (2, 0)):
        raise ValueError(f"unsupported .npy version {version}")
    shape, fortran, dtype = (
        np.lib.format.read_array_header_1_0(fh) if version == (1, 0) else np.lib.format.read_array_header_2_0(fh)
    )
    if dtype.kind not in "biuf" or dtype.hasobject or dtype.fields is not None or dtype.itemsize > 16:
        raise ValueError(f"not a numeric array (dtype {dtype})")
    if len(shape) > 8 or any(type(n) is not int or n < 0 for n in shape):
        raise ValueError("a malformed shape")
    if int(np.prod(shape, dtype=np.int64)) > MAX_ELEMENTS:
        raise ValueError("far more elements than the exercise produces")
    if fh.tell() + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize != len(raw):
        raise ValueError("the data does not match its header")
    arr = np.load(io.BytesIO(raw), allow_pickle=False)
    if type(arr) is not np.ndarray or arr.shape != tuple(shape) or arr.dtype != dtype:
        raise ValueError("not a plain array")
    return arr
