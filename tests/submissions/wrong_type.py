# expect: is a builtins.list, expected a torch.Tensor
def stable_softmax(x, dim=-1, temperature=1.0):
    return [1.0 / x.shape[dim]] * x.shape[dim]
