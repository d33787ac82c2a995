"""The forbidden-call policy, declared once: read by the static scan (:mod:`attnlib.grader.notebook`), the
sandbox's traps (:mod:`traps`) and the self-check's recorder (:mod:`attnlib.grader.record`).

Standard library only: this file runs beside submitted code (see the package's docstring).

A *family* is a kind of library implementation an exercise may forbid ("write the softmax yourself"). Each family
declares one pattern, matched against

* attribute and function names, by the scan (``F.softmax``, ``x.softmax``, ``getattr(t, "softmax")``, the name
  as a string) and by the recorder (which library functions to wrap in the learner's kernel);
* the names of the imported library modules' callables, which the sandbox replaces by stand-ins that raise;
* the names of torch's dispatcher operators (``aten::_softmax``), which the sandbox overrides with a kernel
  that raises, so that every route to the C++ implementation (``torch._C.TensorBase.softmax``,
  ``torch._C._VariableFunctions.softmax``, ``torch.ops.aten``...) is closed however it is spelled.

``attnlib`` is a family too: the course's own library, which is not inside the sandbox at all (importing it there
fails) except for the exercises that are handed part of it as infrastructure.

The second half lists what would hide a call from the scan (dynamic code, reflection, escapes); the scan
refuses it in every exercise, and the sandbox's audit hook refuses dynamic code run directly by the submission.
"""

from __future__ import annotations

import re

# family -> pattern of the names it covers (attributes, functions, classes, dispatcher operators)
FAMILIES: dict[str, re.Pattern[str]] = {
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
    "logsumexp": re.compile(r"^_*(special_)?logsumexp(_out|_backward)?$", re.IGNORECASE),
    "cross_entropy": re.compile(
        r"^_*(cross_?entropy(_?loss)?|nll_?loss(2d|_nd|_forward|_backward|2d_forward|2d_backward)?)$",
        re.IGNORECASE,
    ),
}
ATTNLIB = "attnlib"

# Libraries whose modules are searched for the families' names (and, for "from scratch" exercises, the ones
# besides torch and numpy that may not be used at all).
LIBRARIES = ("torch", "numpy", "scipy", "jax", "flax", "tensorflow", "keras", "sklearn", "xformers", "flash_attn")
OTHER_LIBRARIES = ("scipy", "jax", "flax", "tensorflow", "keras", "sklearn", "xformers", "flash_attn", "transformers")
SCRATCH_FAMILIES = frozenset({"softmax", "sdpa", "mha"})  # exercises that ask for attention "from scratch"

# What no exercise needs and what would hide a library call from the scan.
TRICK_NAMES = frozenset(
    {
        "eval",
        "exec",
        "compile",
        "__import__",
        "globals",
        "locals",
        "vars",
        "setattr",
        "delattr",
        "__builtins__",
        "breakpoint",
        "memoryview",
    }
)
TRICK_MODULES = frozenset(
    {
        "importlib",
        "ctypes",
        "gc",
        "inspect",
        "builtins",
        "pickle",
        "marshal",
        "dill",
        "cloudpickle",
        "code",
        "codeop",
        "runpy",
        "pydoc",
        "imp",
        "pkgutil",
        "zipimport",
        "operator",
        "_operator",
        "timeit",
        "types",
    }
)
TRICK_CHAINS = ("torch.ops", "torch.library", "torch.jit", "torch.hub", "torch.fx", "torch.utils.cpp_extension")
SYS_TRICKS = frozenset(
    {"modules", "_getframe", "meta_path", "path_hooks", "path", "path_importer_cache", "settrace", "setprofile"}
)
# Attributes that reach code, frames, namespaces, base classes or the originals behind a wrapper. Refused as
# attributes and as constant names given to getattr/hasattr (``getattr(x, "__mro__")``).
ESCAPES = frozenset(
    {
        "__dict__",
        "__globals__",
        "__builtins__",
        "__subclasses__",
        "__bases__",
        "__base__",
        "__mro__",
        "mro",
        "__class__",
        "__code__",
        "__closure__",
        "__wrapped__",
        "__getattribute__",
        "__getattr__",
        "__setattr__",
        "__delattr__",
        "__import__",
        "__loader__",
        "__spec__",
        "__self__",
        "__func__",
        "__reduce__",
        "__reduce_ex__",
        "__defaults__",
        "__kwdefaults__",
        "__objclass__",
        "__init_subclass__",
        "__subclasshook__",
        "f_globals",
        "f_locals",
        "f_back",
        "f_builtins",
        "tb_frame",
        "gi_frame",
        "cr_frame",
        "ag_frame",
    }
)


def family_of(canonical: str) -> str | None:
    """The family of a canonical forbidden name (``torch.nn.functional.softmax`` -> ``"softmax"``)."""
    if canonical == ATTNLIB or canonical.startswith(ATTNLIB + "."):
        return ATTNLIB
    last = canonical.rsplit(".", 1)[-1]
    for fam, pattern in FAMILIES.items():
        if pattern.search(last):
            return fam
    return None


def families_of(forbidden) -> set[str]:
    """The families of an exercise's forbidden names."""
    return {f for f in (family_of(c) for c in forbidden) if f}


def name_hit(name: str, families) -> bool:
    """Whether ``name`` (an attribute, function or operator name) belongs to one of ``families``."""
    return any(FAMILIES[f].search(name) for f in families if f in FAMILIES)
