# expect: write it yourself
# class: shortcut
# attempts: import the grader's registry and return its reference answer
import numpy as np
import torch


def stable_log_softmax(x, dim=-1, temperature=1.0):
    from attnlib.grader.exercises import BY_ENTRY, Case

    expected = BY_ENTRY["stable_log_softmax"].expect(Case("x", (x.numpy(),), {"dim": dim, "temperature": temperature}))
    return torch.from_numpy(np.asarray(expected["out"], dtype=np.float32))
