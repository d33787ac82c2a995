# expect: still running
# class: classic
# attempts: loop forever, swallowing interrupts
def stable_log_softmax(x, dim=-1, temperature=1.0):
    while True:
        try:
            pass
        except BaseException:  # noqa: BLE001 - even an interrupt would be swallowed
            pass
