# expect: dynamic
# class: shortcut
# attempts: vars(torch)[...] = ....__wrapped__ to undo the recorder
import torch


def stable_log_softmax(x, dim=-1, temperature=1.0):
    # put the unrecorded softmax back without naming it, then use it
    name = "soft" + "max"
    vars(torch)[name] = getattr(torch, name).__wrapped__
    return getattr(torch, name)(x / temperature, dim)
