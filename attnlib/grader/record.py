"""The self-check's recorder: which library implementations the learner's code called, in the learner's kernel.

:func:`recorded_calls` wraps, for one self-check, every library entry point of the forbidden-call policy
(:mod:`attnlib.grader.inside.policy`: the same families the scan and the sandbox's traps read) with a thin
wrapper that notes its name, then puts the originals back. Feedback only: code in the same process can undo
it; the grader enforces the policy in the sandbox.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager

from .inside.policy import FAMILIES, family_of, name_hit

CALLS: list[str] = []
_state = {"recording": False}


def _targets() -> list[tuple[object, str, str]]:
    """(owner, attribute, canonical name) of every library entry point of the policy's families."""
    import torch
    import torch.nn.functional as F

    import attnlib

    from .. import functional, masks, modules, reference

    out = []
    families = set(FAMILIES)
    for owner, label in ((torch, "torch"), (F, "torch.nn.functional"), (torch.special, "torch.special")):
        for name, value in list(vars(owner).items()):
            if name_hit(name, families) and callable(value) and not isinstance(value, type):
                out.append((owner, name, f"{label}.{name}"))
    for name in dir(torch.Tensor):
        if name_hit(name, families) and not name.startswith("__"):
            out.append((torch.Tensor, name, f"torch.Tensor.{name}"))
    for name, value in list(vars(torch.nn).items()):
        if isinstance(value, type) and issubclass(value, torch.nn.Module) and name_hit(name, families):
            out.append((value, "forward", f"torch.nn.{name}"))
    for module in (functional, masks, reference):
        for name, value in list(vars(module).items()):
            if callable(value) and not name.startswith("_") and getattr(value, "__module__", "") == module.__name__:
                out.append((module, name, f"attnlib.{module.__name__.split('.')[-1]}.{name}"))
                if module is not reference and getattr(attnlib, name, None) is value:
                    out.append((attnlib, name, f"attnlib.{name}"))
    for cls in (modules.SelfAttention, modules.CrossAttention, modules.MultiHeadAttention):
        out.append((cls, "forward", f"attnlib.{cls.__name__}"))
    return out


def _wrap(fn, name):
    @functools.wraps(fn)
    def recorded(*args, **kwargs):
        if _state["recording"]:
            CALLS.append(name)
        return fn(*args, **kwargs)

    recorded.__attnlib_recorded__ = name
    return recorded


def install() -> list[tuple[object, str, object]]:
    """Wrap every target; returns what :func:`uninstall` needs to put the originals back."""
    saved = []
    for owner, attr, name in _targets():
        original = owner.__dict__.get(attr) if isinstance(owner, type) else getattr(owner, attr, None)
        if original is None:
            original = getattr(owner, attr, None)
        if original is None or getattr(original, "__attnlib_recorded__", None):
            continue
        try:
            setattr(owner, attr, _wrap(original, name))
        except (TypeError, AttributeError):
            continue
        saved.append((owner, attr, original))
    return saved


def uninstall(saved: list[tuple[object, str, object]]) -> None:
    for owner, attr, original in reversed(saved):
        setattr(owner, attr, original)


@contextmanager
def recording() -> Iterator[list[str]]:
    """Record calls made inside the block; yields the list of canonical names called."""
    CALLS.clear()
    _state["recording"] = True
    try:
        yield CALLS
    finally:
        _state["recording"] = False


def forbidden(calls, forbidden_names) -> list[str]:
    """The recorded calls that belong to the families of an exercise's forbidden names."""
    from .inside.policy import families_of

    fams = families_of(forbidden_names)
    return sorted({c for c in calls if family_of(c) in fams})
