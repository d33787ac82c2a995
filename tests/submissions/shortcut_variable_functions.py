# expect: "__dict__"
# class: shortcut
# attempts: torch._C._VariableFunctions (not a module, so not poisoned), reached through "__dict__" lookups
import torch


def stable_log_softmax(x, dim=-1, temperature=1.0):
    native = getattr(torch, "__dict__")["_C"]  # noqa: B009
    functions = getattr(native, "__dict__")["_VariableFunctions"]  # noqa: B009
    table = getattr(type(functions), "__dict__")  # noqa: B009
    method = [v for k, v in table.items() if k.startswith("soft") and k.endswith("ax")][0]
    return method(x / temperature, dim)
