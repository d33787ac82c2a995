# expect: __import__
# class: shortcut
# attempts: __import__ with a computed module name
def stable_log_softmax(x, dim=-1, temperature=1.0):
    nn = __import__("torch.nn." + "functional", fromlist=["x"])
    return nn.softmax(x / temperature, dim=dim)
