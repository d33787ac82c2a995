# expect: "__globals__"
# class: shortcut
# attempts: import the course's own attnlib through builtins, use its softmax, then remove it from sys.modules
def stable_log_softmax(x, dim=-1, temperature=1.0):
    table = getattr(stable_log_softmax, "__globals__")["__builtins__"]  # noqa: B009
    table = table if isinstance(table, dict) else getattr(table, "__dict__")  # noqa: B009
    load = table["__imp" + "ort__"]
    module = load("attnlib.functional", None, None, ["x"])
    method = [v for k, v in getattr(module, "__dict__").items() if k.startswith("soft") and k.endswith("ax")][0]  # noqa: B009
    out = method(x / temperature, dim)
    modules = getattr(load("sys"), "modules")  # noqa: B009
    for name in [n for n in modules if n.startswith("attnlib")]:
        del modules[name]  # so that the poisoning never sees it
    return out
