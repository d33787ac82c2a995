# expect: operator
# class: shortcut
# attempts: operator.methodcaller with the method's name as a string
import operator


def stable_log_softmax(x, dim=-1, temperature=1.0):
    return operator.methodcaller("soft" + "max", dim)(x / temperature)
