"""Pure diagnosis: compare a submission's output arrays with the reference and with known mistakes.

Everything here takes plain NumPy arrays (already validated) and returns ``(passed, message)``. The grader (in
the parent process, on arrays decoded from the child's ``.npy`` bytes) and the notebooks' self-check cells (in
the learner's kernel) call the same functions, so a learner sees the same hint the grader would give.

A *mistake* is a ``(hint, outputs)`` pair: what a classic wrong implementation returns for the same inputs, and
the hint that names it. A submission whose outputs match a mistake's (NaN matching NaN) gets that hint. A
mistake with no outputs matches any wrong answer: it is the explanation a question gives after a wrong one.

Tolerances follow the precision of the returned dtype and the magnitude of the computation (``magnitude``: the
largest |value| it goes through, e.g. the largest |score| before a softmax): a float32 result may differ from
the float64 reference by a few float32 ulps of that magnitude, a float64 result by the fixed base tolerance.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np

RTOL = 1e-4
ATOL = 1e-5
ULPS = 16  # rounding errors allowed, in units of the returned dtype's epsilon times the magnitude

Outputs = Mapping[str, np.ndarray]
Mistake = tuple[str, Outputs]


def shape_str(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(int(s)) for s in shape) + ")"


def tolerance(got: np.ndarray, expected: np.ndarray, magnitude: float = 1.0) -> tuple[float, float]:
    """(rtol, atol) for comparing ``got`` with the float64 ``expected``: the base tolerance, plus ULPS rounding
    errors of ``got``'s dtype at the computation's ``magnitude`` (scaled by the size of the expected values)."""
    eps = float(np.finfo(got.dtype).eps) if got.dtype.kind == "f" else 0.0
    slack = ULPS * eps * max(1.0, float(magnitude))
    finite = expected[np.isfinite(expected)] if expected.size else expected
    size = max(1.0, float(np.abs(finite).max())) if finite.size else 1.0
    return RTOL + slack, ATOL * size + slack * size


def close(got: np.ndarray, expected: np.ndarray, *, magnitude: float = 1.0) -> bool:
    """Same shape and equal within tolerance; NaN matches NaN (so a mistake that yields NaN can be recognised)."""
    got, expected = np.asarray(got), np.asarray(expected)
    if got.shape != expected.shape:
        return False
    if got.dtype == bool or expected.dtype == bool:
        return got.dtype == expected.dtype and bool(np.array_equal(got, expected))
    with np.errstate(invalid="ignore", over="ignore"):
        rtol, atol = tolerance(got, expected.astype(np.float64), magnitude)
        return bool(
            np.allclose(got.astype(np.float64), expected.astype(np.float64), rtol=rtol, atol=atol, equal_nan=True)
        )


def matches(outputs: Outputs, expected: Outputs, *, magnitude: float = 1.0) -> bool:
    """Every array named in ``expected`` is present in ``outputs`` and close to it."""
    return all(name in outputs and close(outputs[name], value, magnitude=magnitude) for name, value in expected.items())


def check_dtype(name: str, got: np.ndarray, expected: np.ndarray) -> str | None:
    """A message when ``got`` is not the kind of array expected (bool mask vs float values), else None."""
    if expected.dtype == bool and got.dtype != bool:
        return f"{name} has dtype {got.dtype}; expected a boolean mask (torch.bool, True = may attend)"
    if expected.dtype != bool and got.dtype.kind not in "f":
        return f"{name} has dtype {got.dtype}; expected a floating-point tensor"
    if expected.dtype == np.float32 and got.dtype != np.float32:
        # a reference in float32 (not the usual float64) means: keep the inputs' dtype, as the next exercise needs it
        return (
            f"{name} has dtype {got.dtype} for float32 inputs; keep the inputs' dtype (float32): an exercise "
            "that builds on this one multiplies the result with other float32 tensors"
        )
    return None


def row_sums_message(weights: np.ndarray, expected: np.ndarray, magnitude: float = 1.0) -> str | None:
    """When attention weights should be distributions along the last axis but are not, say what the evidence
    shows: the reference transposed, the columns summing to 1 instead of the rows, or only how far the rows'
    sums are off (without naming a cause the evidence does not single out)."""
    if weights.shape != expected.shape or weights.ndim < 2 or not np.isfinite(weights).all():
        return None
    got_sums = weights.sum(axis=-1)
    want_sums = expected.sum(axis=-1)
    off = np.abs(got_sums - want_sums) > 1e-3
    if not off.any():
        return None
    if weights.shape[-1] == weights.shape[-2] and close(weights, np.swapaxes(expected, -1, -2), magnitude=magnitude):
        return (
            "the weights are the reference transposed: row i must hold query i's weights over the keys, "
            "weights[..., i, :]; return (..., L, S) with the keys on the last axis"
        )
    idx = tuple(int(i) for i in np.argwhere(off)[0])
    if abs(want_sums[idx]) < 1e-12:
        return (
            f"row {idx} of the weights belongs to a query whose keys are all masked: it should be all zeros but sums "
            f"to {got_sums[idx]:.2f}; every such row must give zero weights and a zero output"
        )
    if not (np.abs(want_sums - 1) < 1e-6).all():
        return None
    text = (
        f"each row of the weights (one query's weights over the keys) must sum to 1, but row {idx} sums to "
        f"{got_sums[idx]:.2f}"
    )
    if np.allclose(weights.sum(axis=-2), 1.0, atol=1e-3):
        text += "; the columns (over the queries) sum to 1 instead"
    return text


def difference_message(name: str, got: np.ndarray, expected: np.ndarray, magnitude: float = 1.0) -> str:
    """Where and by how much two same-shape float arrays differ."""
    if got.dtype == bool or expected.dtype == bool:
        wrong = np.argwhere(got != expected)
        idx = tuple(int(i) for i in wrong[0])
        return (
            f"{name} is wrong at {len(wrong)} of {got.size} positions, e.g. at {idx}: got {bool(got[idx])}, "
            f"expected {bool(expected[idx])}"
        )
    g, e = got.astype(np.float64), expected.astype(np.float64)
    bad = ~np.isfinite(g) & np.isfinite(e)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        return (
            f"{name} contains NaN or inf (first at {idx}) where the reference is finite: look for an exp() that "
            "overflows to inf, or a division 0/0 (a row whose terms all underflow to 0, or whose keys are all "
            "masked)"
        )
    with np.errstate(invalid="ignore"):
        err = np.abs(g - e)
    err = np.where(g == e, 0.0, err)  # an inf where the reference has the same inf (a -inf log-probability) is right
    err = np.where(np.isnan(err), np.inf, err)
    idx = tuple(int(i) for i in np.unravel_index(int(np.argmax(err)), err.shape))
    rtol, atol = tolerance(got, e, magnitude)
    with np.errstate(invalid="ignore"):
        wrong = int((err > atol + rtol * np.abs(e)).sum())
    where = f"at index {idx}" if g.ndim else "the value"
    return (
        f"{name} differs from the reference at {wrong} of {g.size} entries, by up to {float(err[idx]):.3g} "
        f"({where}: got {g[idx]:.4g}, expected {e[idx]:.4g})"
    )


def error_message(error: str, raises: Sequence[tuple[str, str]] = ()) -> str:
    """What the grader says about a check on which the submission raised ``error`` (a 'Type: message' string):
    the error, and the hint of the first known mistake whose pattern it matches."""
    text = f"raised {error}"
    for pattern, hint in raises:
        if re.search(pattern, error):
            return f"{text}: {hint}"
    return text


def diagnose(
    outputs: Outputs,
    expected: Outputs,
    mistakes: Sequence[Mistake] = (),
    *,
    distribution: str | None = None,
    magnitude: float = 1.0,
) -> tuple[bool, str]:
    """Compare ``outputs`` with ``expected``; return ``(passed, message)``.

    Order: missing outputs, wrong dtypes, known mistakes whose shape differs from the reference (e.g. a
    transposed result), wrong shapes, a match (then the gradients, with the known mistakes that get the forward
    pass right but not the gradients), known mistakes, NaN/inf, rows of the output named ``distribution`` that
    do not sum to 1, then where and by how much the output differs.
    """
    tol = {"magnitude": magnitude}
    forward = {n: e for n, e in expected.items() if not n.startswith("grad:")}
    grads = {n: e for n, e in expected.items() if n.startswith("grad:")}
    for name in forward:
        if name not in outputs:
            return False, f"no output named {name!r} was returned"
    for name, exp in forward.items():
        message = check_dtype(name, outputs[name], exp)
        if message:
            return False, message
    shapes_ok = all(outputs[name].shape == exp.shape for name, exp in forward.items())
    if shapes_ok and matches(outputs, forward, **tol):
        got_grads = {n: outputs[n] if n in outputs else np.zeros_like(e) for n, e in grads.items()}
        if grads and not matches(got_grads, grads, **tol):
            for hint, wrong in mistakes:
                wrong_grads = {n: w for n, w in wrong.items() if n.startswith("grad:")}
                if wrong_grads and matches(got_grads, wrong_grads, **tol):
                    return False, hint
        for name, exp in grads.items():
            if name not in outputs:
                return False, (
                    f"no gradient reached {name[5:]}: the output is not connected to it by autograd (did you use "
                    ".detach(), .data, .item() or NumPy inside forward, or skip a layer?)"
                )
            if not close(outputs[name], exp, **tol):
                return False, (
                    f"the forward pass is right but the gradient for {name[5:]} is not "
                    f"({difference_message(name, outputs[name], exp, magnitude)}): it reaches the output by another "
                    "path than the formula's (detached somewhere, or read from another input that has equal values "
                    "in this check)"
                )
        return True, "correct"
    mistakes = list(mistakes)  # computed only now: a correct answer never pays for them
    for hint, wrong in mistakes:
        if any(outputs[n].shape != forward[n].shape for n in wrong if n in forward) and matches(outputs, wrong, **tol):
            return False, hint
    for name, exp in forward.items():
        if outputs[name].shape != exp.shape:
            return False, f"{name} has shape {shape_str(outputs[name].shape)}, expected {shape_str(exp.shape)}"
    for hint, wrong in mistakes:
        if matches(outputs, {n: w for n, w in wrong.items() if not n.startswith("grad:")}, **tol):
            return False, hint
    if distribution is not None and distribution in outputs:
        message = row_sums_message(outputs[distribution], forward[distribution], magnitude)
        if message:
            return False, message
    name = next(n for n in forward if not close(outputs[n], forward[n], **tol))
    return False, difference_message(name, outputs[name], forward[name], magnitude)


def mutation_message(name: str, before: np.ndarray, after: np.ndarray) -> str | None:
    """A message when an input's contents changed during the call (an in-place operation), else None."""
    if before.shape == after.shape and before.dtype == after.dtype and np.array_equal(before, after, equal_nan=True):
        return None
    return (
        f"your code modified its input {name} in place (e.g. x -= ..., x.masked_fill_(...), x[...] = ...): "
        "functions must leave their inputs unchanged; use out-of-place operations (x - m, x.masked_fill(...))"
    )


def judge(
    args: Sequence[object],
    arg_names: Sequence[str],
    outputs: Outputs,
    expected: Outputs,
    mistakes: Sequence[Mistake] = (),
    *,
    distribution: str | None = None,
    magnitude: float = 1.0,
) -> tuple[bool, str]:
    """One check: were the array arguments left unchanged (``outputs["input:i"]``), and are the outputs right?"""
    for i, arg in enumerate(args):
        if isinstance(arg, np.ndarray):
            after = outputs.get(f"input:{i}")
            name = arg_names[i] if i < len(arg_names) else f"argument {i}"
            if after is None:
                return False, f"{name} could not be read back after the call"
            message = mutation_message(name, arg, after)
            if message:
                return False, message
    return diagnose(outputs, expected, mistakes, distribution=distribution, magnitude=magnitude)
