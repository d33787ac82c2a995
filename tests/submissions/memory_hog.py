# expect: raised MemoryError
# class: classic
# attempts: allocate ever larger blocks
def stable_log_softmax(x, dim=-1, temperature=1.0):
    chunks = []
    size = 1 << 30
    while True:  # ever larger blocks, until the address-space limit stops it
        chunks.append(bytes(size))
        size *= 4
