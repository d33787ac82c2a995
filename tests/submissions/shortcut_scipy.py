# expect: another library's implementation
# class: shortcut
# attempts: scipy.special.softmax through NumPy
import torch
from scipy import special


def stable_log_softmax(x, dim=-1, temperature=1.0):
    return torch.from_numpy(special.softmax(x.numpy() / temperature, axis=dim))
