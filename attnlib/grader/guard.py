"""Record calls to library implementations, and notice monkeypatching.

:func:`install` replaces torch's softmax, scaled-dot-product and multi-head attention entry points and attnlib's
public functions and modules with thin wrappers that append a canonical name (``"torch.softmax"``) to
:data:`CALLS` while :data:`RECORDING` is on, then call the original. The grader's child process installs them
before it runs submitted code; the self-check installs them for one call and removes them again.

:func:`snapshot` takes the identity of every public attribute of torch and numpy, so that a submission that
replaces one (``torch.allclose = lambda *a: True``) is noticed when the snapshot is compared afterwards.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from contextlib import contextmanager

# The families of forbidden library entry points, matched against attribute and function names: the sandbox
# poisons every match in the library modules (attnlib.grader.worker) and the static scan flags every spelling
# (attnlib.grader.notebook). A canonical forbidden name (attnlib.grader.exercises) maps to its family.
FAMILIES = {
    "softmax": re.compile(
        r"^_*(log_?|safe_|masked_|special_|special_log_|gumbel_|sparse_|sparse_log_|fused_)?soft(max|min)"
        r"(2d|_backward_data|_backward|_out|_with_shape)?$",
        re.IGNORECASE,
    ),
    "sdpa": re.compile(
        r"scaled_dot_product|dot_product_attention|scaled_dot_attention|flash_attention|efficient_attention"
        r"|flex_attention|cudnn_attention|fused_sdp",
        re.IGNORECASE,
    ),
    "mha": re.compile(
        r"multi_?head_?attention|^Transformer(Encoder|Decoder)?(Layer)?$|transformer_encoder_layer",
        re.IGNORECASE,
    ),
}
# Libraries whose modules are poisoned in the sandbox (and, for "from scratch" exercises, may not be imported
# apart from torch and numpy).
LIBRARIES = ("torch", "numpy", "scipy", "jax", "flax", "tensorflow", "keras", "sklearn", "xformers", "flash_attn")


def family_of(canonical: str) -> str | None:
    """The family of a canonical forbidden name (``torch.nn.functional.softmax`` -> ``"softmax"``)."""
    if canonical == "attnlib" or canonical.startswith("attnlib."):
        return "attnlib"
    last = canonical.rsplit(".", 1)[-1]
    for fam, pattern in FAMILIES.items():
        if pattern.search(last):
            return fam
    return None


CALLS: list[str] = []
_state = {"recording": False}


def _targets():
    """(owner object, attribute name, canonical name) of everything recorded."""
    import torch
    import torch.nn.functional as F

    from .. import functional, masks, modules, reference

    out = [
        (torch, "softmax", "torch.softmax"),
        (torch, "log_softmax", "torch.log_softmax"),
        (torch.special, "softmax", "torch.special.softmax"),
        (F, "softmax", "torch.nn.functional.softmax"),
        (F, "log_softmax", "torch.nn.functional.log_softmax"),
        (torch.Tensor, "softmax", "torch.Tensor.softmax"),
        (torch.Tensor, "log_softmax", "torch.Tensor.log_softmax"),
        (torch.nn.Softmax, "forward", "torch.nn.Softmax"),
        (F, "scaled_dot_product_attention", "torch.nn.functional.scaled_dot_product_attention"),
        (torch.nn.MultiheadAttention, "forward", "torch.nn.MultiheadAttention"),
        (F, "multi_head_attention_forward", "torch.nn.functional.multi_head_attention_forward"),
    ]
    import attnlib

    for module, names in (
        (functional, ("softmax", "attention_scores", "scaled_dot_product_attention", "split_heads", "merge_heads")),
        (masks, ("causal_mask", "padding_mask", "combine_masks", "to_additive")),
        (reference, ("softmax", "attention", "attention_loops")),
    ):
        for name in names:
            out.append((module, name, f"attnlib.{module.__name__.split('.')[-1]}.{name}"))
            if module is not reference and hasattr(attnlib, name):
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
        original = owner.__dict__.get(attr) if isinstance(owner, type) else getattr(owner, attr)
        if original is None:
            original = getattr(owner, attr)
        if getattr(original, "__attnlib_recorded__", None):
            continue
        saved.append((owner, attr, original))
        setattr(owner, attr, _wrap(original, name))
    return saved


def uninstall(saved: list[tuple[object, str, object]]) -> None:
    for owner, attr, original in reversed(saved):
        setattr(owner, attr, original)


def intact() -> list[str]:
    """Names of recorded targets whose wrapper has been removed or replaced since :func:`install`."""
    gone = []
    for owner, attr, name in _targets():
        if not getattr(getattr(owner, attr, None), "__attnlib_recorded__", None):
            gone.append(name)
    return gone


@contextmanager
def recording() -> Iterator[list[str]]:
    """Record calls made inside the block; yields the list of canonical names called."""
    CALLS.clear()
    _state["recording"] = True
    try:
        yield CALLS
    finally:
        _state["recording"] = False


@contextmanager
def recorded_calls() -> Iterator[list[str]]:
    """Install the wrappers, record calls inside the block, and put the originals back (used by the self-check)."""
    saved = install()
    try:
        with recording() as calls:
            yield calls
    finally:
        uninstall(saved)


def snapshot() -> dict[str, int]:
    """Identity of each public attribute of torch, torch.nn.functional, torch.Tensor, numpy and numpy.testing."""
    import numpy
    import numpy.testing
    import torch
    import torch.nn.functional

    ids = {}
    for label, obj in (
        ("torch", torch),
        ("torch.nn.functional", torch.nn.functional),
        ("torch.Tensor", torch.Tensor),
        ("torch.testing", torch.testing),
        ("numpy", numpy),
        ("numpy.testing", numpy.testing),
        ("numpy.ndarray", numpy.ndarray),
    ):
        # vars(): the objects themselves (getattr on a class would build a new bound method each time)
        for name, value in list(vars(obj).items()):
            if name.startswith("__") and name not in ("__eq__", "__ne__", "__bool__", "__float__", "__array__"):
                continue
            ids[f"{label}.{name}"] = id(value)
    return ids


def changed(before: dict[str, int], after: dict[str, int], recorded: set[str]) -> list[str]:
    """Attributes whose identity changed between two snapshots, ignoring the recorded (wrapped) ones."""
    skip = {n.rsplit(".", 1)[-1] for n in recorded}
    out = []
    for name, ident in before.items():
        if name.rsplit(".", 1)[-1] in skip:
            continue
        if after.get(name) != ident:
            out.append(name)
    return sorted(out)
