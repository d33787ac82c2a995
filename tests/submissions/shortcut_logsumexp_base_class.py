# expect: "__mro__"
# class: shortcut
# attempts: the C-level tensor base class's logsumexp, reached through getattr(x, "__mro__") and "__dict__"
def stable_log_softmax(x, dim=-1, temperature=1.0):
    z = x / temperature
    base = getattr(type(z), "__mro__")[1]  # noqa: B009 - torch._C.TensorBase: immutable, so never poisoned by name
    table = getattr(base, "__dict__")  # noqa: B009
    method = [v for k, v in table.items() if k.startswith("logsum") and k.endswith("exp")][0]
    return z - method(z, dim, True)
