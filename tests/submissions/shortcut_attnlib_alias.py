# expect: attnlib
# class: shortcut
# attempts: attnlib's own softmax under an innocent alias, bound at the top level
from attnlib import functional as helpers

normalise = helpers.softmax


def stable_log_softmax(x, dim=-1, temperature=1.0):
    return normalise(x / temperature, dim=dim)
