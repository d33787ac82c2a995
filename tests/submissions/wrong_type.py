# expect: is a builtins.list, expected a torch.Tensor
# class: classic
# attempts: return a list instead of a tensor
def stable_log_softmax(x, dim=-1, temperature=1.0):
    return [1.0 / x.shape[dim]] * x.shape[dim]
