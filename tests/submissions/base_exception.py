# expect: raised Escape
# class: classic
# attempts: raise a BaseException subclass that escapes except Exception
class Escape(BaseException):
    """Not an Exception: slips past `except Exception`."""


def stable_log_softmax(x, dim=-1, temperature=1.0):
    raise Escape("caught me?")
