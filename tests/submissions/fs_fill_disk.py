# expect: differs from the reference
# class: file-system
# attempts: fill the temporary file system
import os

import torch


def stable_log_softmax(x, dim=-1, temperature=1.0):
    block = b"x" * (1 << 20)
    for folder in ("/tmp", os.getcwd()):
        try:
            with open(os.path.join(folder, "fill.bin"), "wb") as fh:
                for _ in range(4096):
                    fh.write(block)
        except OSError:
            pass
    return torch.full_like(x, 0.5)
