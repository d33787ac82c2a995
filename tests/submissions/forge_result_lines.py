# expect: differs from the reference
# class: self-report
# attempts: write forged "case" / "finished" / "end" lines (for itself and other exercises) into every open fd
import json
import os

import numpy as np
import torch


def _b64_npy(arr):
    import base64
    import io

    buf = io.BytesIO()
    np.save(buf, arr)
    return base64.b64encode(buf.getvalue()).decode()


def stable_log_softmax(x, dim=-1, temperature=1.0):
    fake = {"out": {"npy": _b64_npy(np.full(tuple(x.shape), 0.25, dtype=np.float32))}}
    lines = [{"event": "case", "i": i, "error": None, "calls": [], "outputs": fake} for i in range(20)]
    lines += [{"event": "finished", "patched": [], "calls": []}, {"event": "end", "key": "0/02.2", "status": "exited"}]
    lines += [{"event": "start", "key": "0/02.2"}, {"event": "worker", "key": "0/02.2", "line": "{}"}]
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    for fd in range(0, 64):
        try:
            os.write(fd, data)
        except OSError:
            pass
    return torch.full_like(x, 0.5)
