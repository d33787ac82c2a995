"""The sandbox's traps: what makes a forbidden implementation unreachable inside a worker, however it is spelled.

Runs beside submitted code; imports nothing from attnlib (see the package's docstring). Three layers, all read
from :mod:`policy`:

* **dispatcher traps** (:func:`trap_operators`): every torch operator whose name belongs to a forbidden family
  (``aten::_softmax``, ``aten::_scaled_dot_product_flash_attention_for_cpu``, ``aten::nll_loss_forward``...) gets
  a CPU kernel that raises. Every Python route to the C++ implementation goes through the dispatcher, so
  ``torch._C.TensorBase.softmax``, ``torch._C._VariableFunctions.softmax``, ``torch.ops.aten.softmax`` and code
  run through ``exec`` are all caught;
* **poisoned names** (:func:`poison`): every callable of the imported library modules (and of ``torch.Tensor``,
  ``torch.nn.Module`` and ``torch.ops``) whose name belongs to a family is replaced by a stand-in that raises:
  this catches the Python-level implementations (``nn.MultiheadAttention``) and names the call;
* **the audit hook** (:func:`install_audit_hook`): code of the submission may not run ``exec``/``eval``/
  ``compile`` itself, load native code with ``ctypes``, or import the course's library (or, where the exercise
  forbids it, another library's implementation). An audit hook cannot be removed once installed.

:func:`snapshot` / :func:`changed` notice a submission that replaces attributes of torch or numpy.
"""

from __future__ import annotations

import sys

try:
    from .policy import ATTNLIB, FAMILIES, LIBRARIES, OTHER_LIBRARIES, SCRATCH_FAMILIES, name_hit
except ImportError:  # run as a script inside the sandbox, beside policy.py
    from policy import ATTNLIB, FAMILIES, LIBRARIES, OTHER_LIBRARIES, SCRATCH_FAMILIES, name_hit


class ForbiddenCall(Exception):
    """Raised by a trapped or poisoned entry point, and by the audit hook."""


HITS: list[str] = []  # labels of the traps the submission reached (reported; it can only lose points)


class Poison:
    """Stands in for a forbidden entry point: calling it (or an overload, ``torch.ops.aten.softmax.int``) raises."""

    __slots__ = ("label",)
    __attnlib_poison__ = True

    def __init__(self, label: str):
        self.label = label

    def __call__(self, *args, **kwargs):
        HITS.append(self.label)
        raise ForbiddenCall(f"{self.label} may not be used in this exercise")

    def __getattr__(self, name: str):
        return self


def find_targets(families, done: set[int], torch_too: bool = True) -> list[tuple[object, str, str]]:
    """(owner, attribute, label) of every forbidden callable of the families among the imported library modules
    not in ``done`` (their ids are added), and of ``torch.Tensor``, ``torch.nn.Module`` and ``torch.ops``."""
    families = set(families)
    out: list[tuple[object, str, str]] = []
    if not families & set(FAMILIES):
        return out
    for modname, module in list(sys.modules.items()):
        if module is None or id(module) in done or modname.split(".")[0] not in LIBRARIES:
            continue
        done.add(id(module))
        try:
            items = list(vars(module).items())
        except TypeError:
            continue
        out += [
            (module, name, f"{modname}.{name}")
            for name, value in items
            if name_hit(name, families) and callable(value) and not isinstance(value, Poison)
        ]
    if torch_too and "torch" in sys.modules:
        import torch

        for owner, label in ((torch.Tensor, "torch.Tensor"), (torch.nn.Module, "torch.nn.Module")):
            out += [(owner, name, f"{label}.{name}") for name in dir(owner) if name_hit(name, families)]
        for op in _operators():
            ns, _, rest = op.partition("::")
            base = rest.split(".")[0]
            if name_hit(base, families):
                out.append((getattr(torch.ops, ns), base, f"torch.ops.{ns}.{base}"))
    return out


def _operators() -> list[str]:
    import torch

    try:
        return [op for op in torch._C._dispatch_get_all_op_names() if op.startswith(("aten::", "quantized::"))]
    except Exception:  # noqa: BLE001 - an older torch: the other layers still apply
        return []


def apply_poison(targets: list[tuple[object, str, str]]) -> int:
    count = 0
    for owner, name, label in targets:
        try:
            if not isinstance(vars(owner).get(name), Poison):
                setattr(owner, name, Poison(label))
                count += 1
        except Exception:  # noqa: BLE001 - an attribute that cannot be set: the other layers still apply
            pass
    return count


def poison(families, done: set[int]) -> int:
    """Replace every forbidden callable reachable from the imported library modules; returns how many."""
    return apply_poison(find_targets(families, done)) if families else 0


_LIBRARY = []  # the torch.library.Library holding the raising kernels: kept alive for the worker's lifetime


def trap_operators(families) -> int:
    """Give every dispatcher operator of the families a CPU kernel that raises; returns how many were trapped."""
    families = set(families) & set(FAMILIES)
    if not families:
        return 0
    import warnings

    import torch

    lib = torch.library.Library("aten", "IMPL")
    _LIBRARY.append(lib)
    count = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "overriding a previously registered kernel"
        for op in _operators():
            ns, _, rest = op.partition("::")
            if ns != "aten" or not name_hit(rest.split(".")[0], families):
                continue

            def kernel(*args, _label=f"torch.ops.aten.{rest}", **kwargs):
                HITS.append(_label)
                raise ForbiddenCall(f"{_label} may not be used in this exercise")

            try:
                lib.impl(rest, kernel, "CPU")
                count += 1
            except Exception:  # noqa: BLE001 - an operator without a CPU kernel to replace
                pass
    return count


# ----------------------------------------------------------------------------------------------------------
# The audit hook

SUBMISSION_PREFIX = "<code cell"  # the file name of every statement the worker runs from the notebook
_AUDIT = {"on": False, "blocked": frozenset(), "inside": False}
_WATCHED = frozenset(
    {
        "exec",
        "compile",
        "import",
        "ctypes.dlopen",
        "ctypes.dlsym",
        "ctypes.cdata",
        "ctypes.call_function",
        "open",
        "os.listdir",
        "os.scandir",
    }
)
_FILES = {"hidden": (), "allowed": ()}  # folders the worker may not open or list, and exceptions inside them


def _under(path: str, folders) -> bool:
    return any(path == f or path.startswith(f.rstrip("/") + "/") for f in folders)


def _submission_on_stack(depth: int, caller_only: bool = False) -> bool:
    frame = sys._getframe(depth)
    while frame is not None:
        if frame.f_code.co_filename.startswith(SUBMISSION_PREFIX):
            return True
        if caller_only:
            return False
        frame = frame.f_back
    return False


def _hook(event: str, args: tuple) -> None:
    if event not in _WATCHED or not _AUDIT["on"] or _AUDIT["inside"]:
        return
    _AUDIT["inside"] = True
    try:
        if event == "import":
            top = str(args[0]).split(".")[0]
            if top in _AUDIT["blocked"]:
                HITS.append(f"import {args[0]}")
                raise ForbiddenCall(f"import {args[0]}: not available in this exercise")
        elif event in ("open", "os.listdir", "os.scandir"):
            target = args[0] if args else None
            if isinstance(target, (str, bytes)) and _FILES["hidden"]:
                import os

                path = os.path.realpath(os.fsdecode(target))
                if _under(path, _FILES["hidden"]) and not _under(path, _FILES["allowed"]):
                    raise PermissionError(13, "the course's files are not readable while grading", os.fsdecode(target))
        elif event in ("exec", "compile"):
            # only what the submission's own code runs: libraries (dataclasses, namedtuple...) may generate code
            if _submission_on_stack(2, caller_only=True):
                HITS.append(f"{event}()")
                raise ForbiddenCall(f"{event}() of dynamic code is not allowed in a graded exercise")
        elif _submission_on_stack(2):
            HITS.append(event)
            raise ForbiddenCall(f"{event}: native code is not allowed in a graded exercise")
    finally:
        _AUDIT["inside"] = False


def install_audit_hook(families, hidden=(), allowed=()) -> None:
    """Install the hook (once per worker; it cannot be removed): it starts refusing when :func:`arm` is called.

    ``hidden``: folders (the course's checkout, where the grader lives) the worker may not open or list, except
    under ``allowed`` (the Python environment, when it lives inside the checkout). Under bubblewrap they are not
    mounted at all; at the uid and none levels this keeps Python-level reads out, but not native code that opens
    files itself: those levels remain unfit for grading a class."""
    _FILES["hidden"], _FILES["allowed"] = tuple(hidden), tuple(allowed)
    blocked = {ATTNLIB}
    if set(families) & SCRATCH_FAMILIES:
        blocked |= set(OTHER_LIBRARIES)
    _AUDIT["blocked"] = frozenset(blocked)
    sys.addaudithook(_hook)


def allow_import(top: str) -> None:
    """An exercise handed part of a library as infrastructure may import it."""
    _AUDIT["blocked"] = frozenset(_AUDIT["blocked"] - {top})


def arm() -> None:
    _AUDIT["on"] = True


# ----------------------------------------------------------------------------------------------------------
# Monkeypatching


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


def changed(before: dict[str, int], after: dict[str, int], ignore: set[str]) -> list[str]:
    """Attributes whose identity changed between two snapshots, ignoring the ones the traps replaced."""
    return sorted(n for n, ident in before.items() if n not in ignore and after.get(n) != ident)
