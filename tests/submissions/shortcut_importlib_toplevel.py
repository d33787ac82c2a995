# expect: importlib
# class: shortcut
# attempts: importlib at the top level, the function only uses the module it returned
import importlib

functional = importlib.import_module("torch.nn.functional")
soft = getattr(functional, "soft" + "max")


def stable_log_softmax(x, dim=-1, temperature=1.0):
    return soft(x / temperature, dim=dim)
