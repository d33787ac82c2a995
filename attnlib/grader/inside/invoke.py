"""Call a learner's function or module on one check's inputs and turn what it returns into NumPy arrays.

Runs where the learner's code runs: in the sandbox's workers (copied there with the rest of
:mod:`attnlib.grader.inside`; it imports nothing from attnlib), or in the learner's kernel for a self-check.
Nothing here decides a score: it only produces arrays (and error strings) that
:mod:`attnlib.grader.diagnose` judges. Library functions are captured at import time, so a submission that
replaces ``torch.Tensor.numpy`` or ``torch.Tensor.detach`` cannot change how results are converted.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

_Tensor = torch.Tensor
_Parameter = torch.nn.Parameter
_Module = torch.nn.Module
_detach = torch.Tensor.detach
_cpu = torch.Tensor.cpu
_to_numpy = torch.Tensor.numpy
_from_numpy = torch.from_numpy
_no_grad = torch.no_grad
_np_array = np.array
_ndarray = np.ndarray
_np_number = (np.integer, np.floating, np.bool_)

MAX_ELEMENTS = 1_000_000  # an output larger than this is not an answer to any exercise


class SubmissionError(Exception):
    """What the submission returned (or how it failed) cannot be graded; the message says why."""


def as_input(value: Any) -> Any:
    """Arrays become fresh tensors (a copy, so the caller's array is untouched); other values pass through."""
    if isinstance(value, _ndarray):
        return _from_numpy(_np_array(value, copy=True))
    return value


def to_array(value: Any, what: str) -> np.ndarray:
    """A plain NumPy copy of a tensor the submission returned; anything that is not a real tensor is refused,
    except a number (a Python bool, int or float, a NumPy number or a 0-d NumPy array: a question's answer)."""
    if type(value) in (bool, int, float):
        return _np_array(float(value), dtype=np.float64)
    if isinstance(value, _np_number) or (type(value) is _ndarray and value.ndim == 0):
        # a NumPy number (np.int64(2), np.float64, np.sum(...)) or a 0-d array: a question's answer
        if value.dtype.kind not in "biuf":
            raise SubmissionError(f"{what} is a NumPy {value.dtype} value, expected a number")
        return _np_array(value, dtype=np.float64)
    if type(value) not in (_Tensor, _Parameter):
        kind = type(value).__module__ + "." + type(value).__qualname__
        raise SubmissionError(f"{what} is a {kind}, expected a torch.Tensor")
    arr = _to_numpy(_cpu(_detach(value)))
    if type(arr) is not _ndarray:
        raise SubmissionError(f"{what} could not be converted to an array")
    if arr.size > MAX_ELEMENTS:
        raise SubmissionError(f"{what} has {arr.size} elements, far more than the exercise produces")
    return _np_array(arr, copy=True)


def _param(module: Any, dotted: str) -> Any:
    obj = module
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise SubmissionError(f"the module has no attribute {dotted!r}: keep the layers the template defines")
    if type(obj) is not _Parameter:
        raise SubmissionError(f"{dotted} should be an nn.Parameter (keep the nn.Linear layers the template defines)")
    return obj


def run_case(target: Any, kind: str, returns: list[str], case: dict[str, Any]) -> dict[str, np.ndarray]:
    """Run one check; returns ``{"out": ..., "weights": ..., "grad:arg0": ..., "input:0": ...}`` as arrays.

    ``case`` holds ``args`` / ``kwargs`` (arrays or plain values), and for modules ``init``, ``weights`` and
    ``grad_output``. ``input:i`` is argument i after the call, so the grader can see in-place changes.
    """
    args = [as_input(a) for a in case["args"]]
    kwargs = {k: as_input(v) for k, v in case.get("kwargs", {}).items()}
    grad = case.get("grad_output") is not None
    if kind == "module":
        module = target(*case.get("init", ()))
        if not isinstance(module, _Module):
            raise SubmissionError(f"{getattr(target, '__name__', 'the class')}(...) did not build an nn.Module")
        with _no_grad():
            for name, value in case.get("weights", {}).items():
                p = _param(module, name)
                if tuple(p.shape) != value.shape:
                    raise SubmissionError(f"{name} has shape {tuple(p.shape)}, expected {value.shape}")
                p.copy_(_from_numpy(value))
        for a in args:
            if isinstance(a, _Tensor) and a.is_floating_point() and grad:
                a.requires_grad_(True)
        result = module(*args, **kwargs)
    else:
        module = None
        result = target(*args, **kwargs)

    if len(returns) == 1:
        values = [result]
    else:
        if not isinstance(result, (tuple, list)) or len(result) != len(returns):
            raise SubmissionError(f"expected a tuple ({', '.join(returns)}), got {type(result).__name__}")
        values = list(result)
    out = {name: to_array(v, name) for name, v in zip(returns, values, strict=True)}

    if grad:
        first = values[0]
        if type(first) is _Tensor and first.requires_grad and tuple(first.shape) == case["grad_output"].shape:
            (first * _from_numpy(case["grad_output"])).sum().backward()
        for i, a in enumerate(args):
            if isinstance(a, _Tensor) and a.requires_grad and a.grad is not None:
                out[f"grad:arg{i}"] = to_array(a.grad, f"the gradient of argument {i}")
        for name in case.get("weights", {}):
            g = _param(module, name).grad
            if g is not None:
                out[f"grad:{name}"] = to_array(g, f"the gradient of {name}")
    for i, a in enumerate(args):
        if isinstance(a, _Tensor):
            out[f"input:{i}"] = to_array(a, f"argument {i}")
    return out
