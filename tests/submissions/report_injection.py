# expect: raised ValueError
# class: reports
# attempts: control characters, bidi overrides, markup and Markdown images in the message of an exception
def stable_log_softmax(x, dim=-1, temperature=1.0):
    raise ValueError(
        "\x1b[2J\x1b[31mFULL MARKS\r\x00\u202egnp.x\u202c</failure><script>alert(1)</script>"
        "![x](https://example.invalid/p.png) | **49/49** ]]> &amp; \x07\x08\x0c\x1f\x7f\x85\ud800"
    )
