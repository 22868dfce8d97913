"""Evaluating and comparing runs: exact match on checkable answers (a callback of training), the tasks of
``eval.py`` over local files (``tasks``), the summary table of a sweep, and the comparison plots of run directories (``python -m gpt.eval.compare``). The metrics themselves are
declared once in ``gpt.metrics``.

May import: the core, ``gpt.models``, ``gpt.data`` and ``gpt.training``.
"""
