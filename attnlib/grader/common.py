"""What every exercise set module shares: the :class:`Exercise` and :class:`Case` records and NumPy helpers.

A set module (``attnlib/grader/sets/NN_<slug>.py``) declares its exercises with keyword fields::

    Exercise(key="03.1", set=SET, entry="stable_log_softmax", title=..., points=4, difficulty="medium", minutes=15,
             forbidden=SOFTMAX, cases=..., expect=..., mistakes=...)

and three pure functions per exercise:

* ``cases(rng)`` — the inputs of every check (NumPy arrays and plain Python values): several shapes including
  query length != key length, batch and head dims, large logits, every kind of mask, fully masked rows, the
  optional arguments with non-default values and every input type the docstring allows;
* ``expect(case)`` — the reference outputs, computed in float64 with attnlib or NumPy;
* ``mistakes(case)`` — what classic wrong implementations return for the same inputs, each with its hint. A
  mistake with no outputs (``(hint, {})``) matches every wrong answer: a question's explanation.

``raises(case)`` lists ``(regex, hint)`` pairs for mistakes that make the learner's code raise on a check (q and
k swapped when L != S is a shape error); the hint is added to the error message when the regex matches it.

Nothing here runs submitted code: the grader sends ``cases`` to a child process and compares what comes back.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .diagnose import Mistake, Outputs

# Canonical names of forbidden library calls; each maps to a family of attnlib.grader.inside.policy, which the
# scan, the sandbox's traps and the self-check's recorder enforce.
SOFTMAX = (
    "torch.softmax",
    "torch.log_softmax",
    "torch.special.softmax",
    "torch.nn.functional.softmax",
    "torch.nn.functional.log_softmax",
    "torch.Tensor.softmax",
    "torch.Tensor.log_softmax",
    "torch.nn.Softmax",
)
LOGSUMEXP = ("torch.logsumexp", "torch.Tensor.logsumexp", "torch.special.logsumexp")
SDPA = ("torch.nn.functional.scaled_dot_product_attention",)
MHA = ("torch.nn.MultiheadAttention", "torch.nn.functional.multi_head_attention_forward")
ATTNLIB = ("attnlib",)  # any call into attnlib's own implementations
LIBRARY_ATTENTION = (*SDPA, *MHA, *ATTNLIB)

# The default seed of the checks' random inputs: the same submission gets the same score on every run.
DEFAULT_SEED = 20261201

# A shape error on a check whose query and key lengths differ.
SHAPE_ERROR = r"(?i)(shape|size|dimension)"


@dataclass(frozen=True)
class Case:
    """One check: positional/keyword arguments (arrays become tensors), and for modules the constructor's
    arguments, the parameters to load (``"w_q.weight"`` -> array) and the upstream gradient of the output.

    ``magnitude`` is the largest absolute value the computation goes through (e.g. the largest |score| before
    the softmax): the comparison's tolerance grows with it and with the precision of the returned dtype, so a
    correct float32 implementation passes at large logits too.
    """

    name: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    init: tuple[Any, ...] = ()
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    grad_output: np.ndarray | None = None
    magnitude: float = 1.0


def _no_mistakes(case: Case) -> list[Mistake]:
    return []


def _no_raises(case: Case) -> list[tuple[str, str]]:
    return []


@dataclass(frozen=True, kw_only=True)
class Exercise:
    key: str  # "03.1": set number, exercise number
    set: str  # "03_softmax"
    entry: str  # the name the learner defines
    title: str
    points: int
    difficulty: str  # "easy" | "medium" | "hard"
    minutes: int
    cases: Callable[[np.random.Generator], list[Case]]
    expect: Callable[[Case], Outputs]
    mistakes: Callable[[Case], list[Mistake]] = _no_mistakes
    raises: Callable[[Case], list[tuple[str, str]]] = _no_raises
    kind: str = "function"  # "function" | "module" (a class: built with the case's init, then called)
    returns: tuple[str, ...] = ("out",)
    forbidden: tuple[str, ...] = ()
    distribution: str | None = None  # the output whose rows must sum to 1
    arg_names: tuple[str, ...] = ()  # the arguments' names, for messages ("modified its input q in place")
    style: str = "write"  # "write" | "fix" (find the bug) | "question" (a value or a choice)
    # The address space the learner's code may add while graded (the worker's RLIMIT_AS on top of what the
    # sandbox's runner already holds); None: only the sandbox-wide --memory-gib. For tasks that say "do not build
    # the L x S matrix": a check sized so that the matrix does not fit fails with "ran out of its memory budget".
    memory_limit_bytes: int | None = None
    # Parts of the course's library handed to the learner as infrastructure (the names of
    # attnlib.grader.supervise.INFRASTRUCTURE): copied into the sandbox for this exercise only. Nothing else of
    # attnlib, and nothing of the grader, is ever inside the sandbox.
    provides: tuple[str, ...] = ()

    @property
    def header(self) -> str:
        """The line each exercise's heading in the notebook carries (tests check the notebooks state it)."""
        stars = {"easy": "★☆☆", "medium": "★★☆", "hard": "★★★"}[self.difficulty]
        return f"{self.points} points · difficulty {stars} ({self.difficulty}) · about {self.minutes} minutes"

    def rng(self, seed: int) -> np.random.Generator:
        """The generator of this exercise's inputs for a grading seed: depends on the seed and the key only, so
        adding an exercise elsewhere never changes another exercise's checks."""
        return np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(self.key.encode())])


# ----------------------------------------------------------------------------------------------------------
# NumPy helpers for references and mistakes (float64)


def f32(*shape: int, rng: np.random.Generator, scale: float = 1.0) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Stable softmax in float64; an all -inf row gives zeros."""
    x = np.asarray(x, dtype=np.float64)
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    e = np.exp(x - m)
    s = e.sum(axis=axis, keepdims=True)
    return e / np.where(s > 0, s, 1.0)


def naive_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """exp / sum without subtracting the max, in float32 as a learner's torch code would run: overflows to NaN."""
    with np.errstate(all="ignore"):
        e = np.exp(np.asarray(x, dtype=np.float32))
        return (e / e.sum(axis=axis, keepdims=True)).astype(np.float64)


def t64(x: np.ndarray):
    import torch

    return torch.from_numpy(np.array(x, dtype=np.float64))


def score_magnitude(q, k, scale: float | None = None) -> float:
    """The largest |q·k| * scale a check's scores can reach (sum of |products|, so cancellation is covered)."""
    q, k = np.abs(np.asarray(q, np.float64)), np.abs(np.asarray(k, np.float64))
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else abs(scale)
    return max(1.0, float((q @ np.swapaxes(k, -1, -2)).max()) * scale) if q.size and k.size else 1.0


def attn(q, k, v, mask=None, scale=None, *, axis=-1, naive=False, after=False, invert=False, fill=None, swap=False):
    """Scaled dot-product attention in NumPy with switches that reproduce classic mistakes."""
    q, k, v = (np.asarray(a, dtype=np.float64) for a in (q, k, v))
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = (k @ np.swapaxes(q, -1, -2) if swap else q @ np.swapaxes(k, -1, -2)) * scale
    keep = None
    if mask is not None:
        keep = np.asarray(mask, dtype=bool)
        keep = np.broadcast_to(~keep if invert else keep, s.shape)
    if keep is not None and not after:
        s = np.where(keep, s, -np.inf if fill is None else fill)
    w = naive_softmax(s, axis) if naive else softmax(s, axis)
    if keep is not None and after:
        w = w * keep
    with np.errstate(all="ignore"):
        return w @ v, w


def ok_attn(q, k, v, mask=None, scale=None):
    """The reference: attnlib.scaled_dot_product_attention in float64."""
    import torch

    from ..functional import scaled_dot_product_attention

    m = None if mask is None else torch.from_numpy(np.asarray(mask, dtype=bool))
    out, w = scaled_dot_product_attention(t64(q), t64(k), t64(v), m, scale=scale)
    return out.numpy(), w.numpy()


def pair(out_w) -> dict[str, np.ndarray]:
    return {"out": out_w[0], "weights": out_w[1]}


def error_of(build: Callable[[Any], Any]) -> str | None:
    """The first line of the error torch raises when ``build(torch)`` runs (on zero tensors of a check's
    shapes), or None when it runs: the fingerprint of a mistake that makes the learner's code raise."""
    import torch

    try:
        with torch.no_grad():
            build(torch)
    except Exception as err:  # noqa: BLE001 - any error is a fingerprint
        text = str(err).strip().splitlines()
        return f"{type(err).__name__}: {text[0] if text else ''}"
    return None


def fingerprint_raises(
    candidates: list[tuple[str, Callable[[Any], Any]]], fallback: tuple[str, str] | None = None
) -> list[tuple[str, str]]:
    """``raises`` pairs from the mistakes that make code raise: each candidate ``(hint, build)`` reproduces one
    mistake on zero tensors of the check's shapes, and its hint is given only when the learner's error is that
    exact error. Mistakes that raise the same error on a check cannot be told apart: their hints are offered
    together ("either ... or ..."). ``fallback`` (a regex, a neutral statement of the shapes expected) covers any
    other error."""
    by_text: dict[str, list[str]] = {}
    for hint, build in candidates:
        text = error_of(build)
        if text is not None:
            by_text.setdefault(text, [])
            if hint not in by_text[text]:
                by_text[text].append(hint)
    out = []
    for text, hints in by_text.items():
        hint = hints[0] if len(hints) == 1 else "this error fits several mistakes: either " + "; or ".join(hints)
        out.append((re.escape(text.split(": ", 1)[1]) if ": " in text else re.escape(text), hint))
    if fallback is not None:
        out.append(fallback)
    return out


def _zeros(torch, shape):
    return torch.zeros(tuple(int(n) for n in shape))


def transpose_candidates(q_shape, k_shape) -> list[tuple[str, Callable[[Any], Any]]]:
    """Mistakes in transposing k for q @ k^T: k.T on a batched tensor, transpose(1, 2) on the wrong dims."""
    found = []
    if len(k_shape) >= 3:
        found.append(
            (
                "k.T (or k.t()/permute of every dim) reverses ALL the dims of a batched k; transpose only the last "
                "two: k.transpose(-2, -1)",
                lambda t: _zeros(t, q_shape) @ _zeros(t, k_shape).permute(*range(len(k_shape) - 1, -1, -1)),
            )
        )
    if len(k_shape) != 3:
        found.append(
            (
                f"transpose(1, 2) does not swap the last two dims of a {len(k_shape)}-D k; use transpose(-2, -1), "
                "which works for any number of leading dims",
                lambda t: _zeros(t, q_shape) @ _zeros(t, k_shape).transpose(1, 2),
            )
        )
    return found


def shape_fallback(L: int, S: int, what: str = "the scores") -> tuple[str, str]:
    """A neutral message for a shape error no catalogued mistake explains: what shape was expected."""
    return (
        SHAPE_ERROR,
        f"this check has L={L} queries and S={S} keys: {what} must have shape (..., L, S) = (..., {L}, {S}), one "
        "row per query; compare the shapes of your intermediate tensors with that",
    )


def qk_swap_raises(q, k, what: str = "the scores", v=None, mask=None) -> list[tuple[str, str]]:
    """Hints for shape errors in q @ k^T (and weights @ v when ``v`` is given), each given only for the exact
    error its mistake raises on this check: k.T on batched tensors, transpose(1, 2) on the wrong dims, and q and k
    swapped (k @ q^T, which raises only at weights @ v and only when L != S)."""
    q_shape, k_shape = tuple(np.shape(q)), tuple(np.shape(k))
    found = transpose_candidates(q_shape, k_shape)
    L, S = q_shape[-2], k_shape[-2]
    if mask is not None and L != S:
        m_shape = tuple(np.shape(mask))
        found.append(
            (
                "q and k are swapped: k @ q^T gives (..., S, L) scores, which the (..., L, S) mask does not fit; "
                "the scores must be q @ k^T, one row per query",
                lambda t: (_zeros(t, k_shape) @ _zeros(t, q_shape).transpose(-2, -1)).masked_fill(
                    _zeros(t, m_shape).bool(), 0.0
                ),
            )
        )
    if v is not None and L != S:
        v_shape = tuple(np.shape(v))
        found.append(
            (
                "q and k are swapped: k @ q^T gives (..., S, L) weights, which then cannot multiply v (..., S, Ev); "
                "the scores must be q @ k^T, one row per query",
                lambda t: (_zeros(t, k_shape) @ _zeros(t, q_shape).transpose(-2, -1)) @ _zeros(t, v_shape),
            )
        )
    return fingerprint_raises(found, shape_fallback(L, S, what))


MIB = 1 << 20
# What an exercise that forbids the full (L, S) score matrix lets the learner's code allocate (on top of what the
# worker holds when its checks start), and the sequence length of its check whose matrix does not fit.
NO_FULL_MATRIX_BUDGET = 24 * MIB
NO_FULL_MATRIX_LENGTH = 3072  # a float32 (3072, 3072) score matrix takes 36 MiB
OUT_OF_MEMORY = r"(?i)can't allocate memory|cannot allocate memory|MemoryError|out of memory|bad_alloc"
NO_FULL_MATRIX_MARK = " (the full L x S matrix would not fit in memory)"


def no_full_matrix_case(name: str, args: tuple, kwargs: dict | None = None, magnitude: float = 1.0) -> Case:
    """The check that makes a full-matrix answer fail: its L·S float32 scores do not fit the budget."""
    return Case(name + NO_FULL_MATRIX_MARK, args, kwargs or {}, magnitude=magnitude)


def is_no_full_matrix(case: Case) -> bool:
    """Is this the memory check? (Its mistakes are not computed: the smaller checks name them, cheaply.)"""
    return case.name.endswith(NO_FULL_MATRIX_MARK)


def full_attention_f64(q, k, v, scale: float | None = None) -> dict[str, np.ndarray]:
    """Unmasked attention's output and natural logsumexp in float64, with in-place operations so that the
    memory check's reference (one (L, S) matrix) stays cheap."""

    q, k, v = t64(q), t64(k), t64(v)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = (q @ k.transpose(-2, -1)).mul_(scale)
    m = s.amax(dim=-1, keepdim=True)
    p = s.sub_(m).exp_()
    total = p.sum(dim=-1, keepdim=True)
    out = (p @ v).div_(total)
    return {"out": out.numpy(), "lse": (m + total.log()).squeeze(-1).numpy()}


def memory_raises(L: int, S: int, budget: int = NO_FULL_MATRIX_BUDGET) -> list[tuple[str, str]]:
    """The hint for running out of memory on a check whose full score matrix does not fit in ``budget``."""
    if L * S * 4 <= budget:
        return []
    return [
        (
            OUT_OF_MEMORY,
            f"out of memory: this check has L={L} queries and S={S} keys, so the full (L, S) score matrix alone "
            f"takes {L * S * 4 // MIB} MiB in float32, more than the {budget // MIB} MiB this exercise lets your "
            "code allocate. The task forbids building it: work on blocks of keys (or on the (d, d_v) summary of "
            "linear attention) so that no tensor has L x S entries",
        )
    ]


def attention_mistakes(q, k, v, mask=None, scale=None, *, d_model: int | None = None) -> list[Mistake]:
    """The mistakes every attention exercise checks for, given its inputs."""
    E = q.shape[-1]
    given = 1.0 / math.sqrt(E) if scale is None else scale
    out: list[Mistake] = []
    if d_model is not None and d_model != E:
        out.append(
            (
                f"the scores are scaled by 1/sqrt(d_model) = 1/sqrt({d_model}); scale by 1/sqrt(d_k) = 1/sqrt({E}), "
                "the dimension of the vectors being dotted",
                pair(attn(q, k, v, mask, 1.0 / math.sqrt(d_model))),
            )
        )
    if scale is not None and not math.isclose(scale, 1.0 / math.sqrt(E)):
        out.append(
            (
                "the scale argument is ignored: when it is given, multiply the scores by it instead of 1/sqrt(d_k)",
                pair(attn(q, k, v, mask, 1.0 / math.sqrt(E))),
            )
        )
    if k.shape[-2] != E:
        out.append(
            (
                f"the scores are divided by sqrt(S) = sqrt({k.shape[-2]}), the number of keys; divide by "
                f"sqrt(d_k) = sqrt({E}), the size of each vector (q.shape[-1])",
                pair(attn(q, k, v, mask, 1.0 / math.sqrt(k.shape[-2]))),
            )
        )
    out += [
        ("the scores are not scaled: divide q @ k^T by sqrt(d_k)", pair(attn(q, k, v, mask, 1.0))),
        (f"the scores are divided by d_k = {E}; divide by sqrt(d_k) instead", pair(attn(q, k, v, mask, 1.0 / E))),
        ("the scores are multiplied by sqrt(d_k); divide by it instead", pair(attn(q, k, v, mask, math.sqrt(E)))),
        (
            "the softmax is taken over the queries (dim=-2); each query's weights over the keys must sum to 1: "
            "use dim=-1",
            pair(attn(q, k, v, mask, given, axis=-2)),
        ),
    ]
    if q.shape[-2] == k.shape[-2]:
        out.append(
            (
                "q and k are swapped: the scores must be q @ k^T (one row per query), not k @ q^T",
                pair(attn(q, k, v, mask, given, swap=True)),
            )
        )
    naive = pair(attn(q, k, v, mask, given, naive=True))
    if mask is None and np.isnan(naive["weights"]).any():  # only large scores overflow (masks have their own hint)
        out.append(
            (
                "NaN for large scores: exp() overflows unless you subtract each row's maximum before exponentiating",
                naive,
            )
        )
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        full = np.broadcast_to(mask, (*q.shape[:-1], k.shape[-2])).any(axis=-1)
        ref_out, ref_w = ok_attn(q, k, v, mask, scale)
        if not full.all():  # some query has every key masked
            nan_w = np.where(full[..., None], ref_w, np.nan)
            nan_out = np.where(full[..., None], ref_out, np.nan)
            out.insert(
                0,
                (
                    "NaN in fully masked rows: when every key of a query is masked, softmax gives 0/0; such rows must "
                    "give zero weights and a zero output (replace a -inf row maximum by 0 and guard the division)",
                    {"out": nan_out, "weights": nan_w},
                ),
            )
            for fill, spelled in ((-1e9, "-1e9"), (float(np.finfo(np.float32).min), "torch.finfo(dtype).min")):
                out.append(
                    (
                        f"blocked scores are filled with a large finite number ({spelled}) instead of -inf: a query "
                        "whose keys are all masked then gets uniform weights over them (the mean of the padding's "
                        "values) instead of zeros; fill with float('-inf') and make fully masked rows zero",
                        pair(attn(q, k, v, mask, given, fill=fill)),
                    )
                )
        out += [
            (
                "the mask is inverted: True means the query MAY attend to that key, so fill the scores where the mask "
                "is False with -inf",
                pair(attn(q, k, v, mask, given, invert=True)),
            ),
            (
                "the mask is applied after the softmax: the weights of the allowed keys no longer sum to 1; set "
                "blocked scores to -inf before the softmax",
                pair(attn(q, k, v, mask, given, after=True)),
            ),
            (
                "blocked scores are set to 0 instead of -inf, so blocked keys still get weight: use float('-inf')",
                pair(attn(q, k, v, mask, given, fill=0.0)),
            ),
            (
                "the mask is ignored: the keys it blocks still get weight; apply it to the scores",
                pair(attn(q, k, v, None, given)),
            ),
        ]
    return out


# ----------------------------------------------------------------------------------------------------------
# Modules


def linear(rng, n_out, n_in, bias=False):
    bound = 1.0 / math.sqrt(n_in)
    w = rng.uniform(-bound, bound, (n_out, n_in)).astype(np.float32)
    return (w, rng.uniform(-bound, bound, n_out).astype(np.float32)) if bias else (w, None)


def param(module, dotted):
    obj = module
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def module_expect(case: Case, build, n_inputs: int, args=None) -> dict[str, np.ndarray]:
    """Outputs and gradients of a float64 copy of attnlib's module with the case's weights.

    ``args`` replaces the case's arguments (to compute a mistake, e.g. keys from the wrong input); gradients of
    inputs that do not reach the output are reported as zeros, as the grader sees a missing gradient."""
    import torch

    module = build(case).double()
    with torch.no_grad():
        for name, value in case.weights.items():
            param(module, name).copy_(torch.from_numpy(value.astype(np.float64)))
    inputs = [t64(a).requires_grad_() for a in case.args[:n_inputs]]
    rest = [torch.from_numpy(np.asarray(a)) for a in case.args[n_inputs:]]
    call = inputs if args is None else [inputs[i] for i in args]
    out, weights = module(*call, *rest)
    (out * t64(case.grad_output)).sum().backward()
    result = {"out": out.detach().numpy(), "weights": weights.detach().numpy()}
    for i, t in enumerate(inputs):
        result[f"grad:arg{i}"] = t.grad.numpy() if t.grad is not None else np.zeros(t.shape)
    for name in case.weights:
        g = param(module, name).grad
        result[f"grad:{name}"] = g.numpy() if g is not None else np.zeros(case.weights[name].shape)
    return result


def project(x, w, b=None):
    y = np.asarray(x, np.float64) @ np.asarray(w, np.float64).T
    return y if b is None else y + b


# ----------------------------------------------------------------------------------------------------------
# Questions


def question(answer: float, explain: str, wrong: dict[float, str] | None = None):
    """``(cases, expect, mistakes)`` of a question answered by a zero-argument function returning ``answer``.

    ``wrong`` maps catalogued wrong answers to their explanations; any other wrong answer gets ``explain``."""

    def cases(rng):
        return [Case("your answer")]

    def expect(case):
        return {"out": np.array(float(answer))}

    def mistakes(case):
        found = [(f"{text} {explain}", {"out": np.array(float(v))}) for v, text in (wrong or {}).items()]
        return [*found, (f"not the right answer. {explain}", {})]

    return cases, expect, mistakes
