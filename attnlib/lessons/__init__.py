"""Code behind the lessons: pure render functions for the figures and widgets, and the small toy models and
training loops the lessons run. One module per lesson topic; each has its own tests in ``tests/``."""
