# expect: differs from the reference
# class: self-report
# attempts: replace json.dumps and os.write so the worker's own messages claim success
import json
import os

import torch

_real = json.dumps


def _lying_dumps(obj, *args, **kwargs):
    if isinstance(obj, dict) and obj.get("event") == "case":
        obj = {**obj, "error": None, "calls": []}
    return _real(obj, *args, **kwargs)


json.dumps = _lying_dumps
os.write = lambda fd, data: len(data)


def stable_log_softmax(x, dim=-1, temperature=1.0):
    json.dumps = _lying_dumps
    return torch.full_like(x, 0.5)
