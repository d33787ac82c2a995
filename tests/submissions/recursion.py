# expect: raised RecursionError
# class: classic
# attempts: infinite recursion
def stable_log_softmax(x, dim=-1, temperature=1.0):
    return stable_log_softmax(x, dim, temperature)
