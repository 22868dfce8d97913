"""A training run: what ``python train.py`` does.

Owns the run (``run.train``: check and build every part, then fit and report), the objectives (the
``LightningModule``s: causal and masked LM), the optimizer and schedule, the devices and their memory, the
checkpoint record and its safe loading (``checkpoint``), the loggers, the run directory's ownership (``rundir``),
and the callbacks, by concern: watching a run (``monitoring``), checkpoints and the result (``checkpoints``), and
stopping (``stops``).

May import: the core, ``gpt.models`` and ``gpt.data``. Torch-free: ``rundir``. Lightning-free: ``checkpoint``
(``sample.py`` and ``export.py`` read checkpoints without Lightning).
"""
