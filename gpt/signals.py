"""Signals that stop a command: SIGTERM (what SLURM and Kubernetes send before they kill), SIGINT (Ctrl-C) and
SIGUSR1 (SLURM's warning). Outside training they stop it at once with ``RunStopped``, so that its clean-up runs (a
temporary file, a directory made for the work); a training run handles them itself
(``gpt.training.stops.StopOnSignal``: the step is saved first). No torch here."""

import os
import signal
from contextlib import contextmanager

from gpt import RunStopped

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


def stop_now(signum: int, frame) -> None:
    raise RunStopped(signal.Signals(signum).name, saved=False)


@contextmanager
def stopped_by_signals():
    """While the block runs, the stop signals raise ``RunStopped`` (SIGTERM would end the process without its
    clean-up); the handlers before are restored after."""
    previous = {signum: signal.signal(signum, stop_now) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextmanager
def stops_deferred():
    """Stop signals that come during the block take effect when it ends. For the imports of torch and Lightning: an
    import stopped half-way can leave a native extension half-registered (scipy's, which Lightning's torchmetrics
    loads), and its next import in the process then fails with a traceback instead of the stop's message."""
    received = []
    previous = {signum: signal.signal(signum, lambda signum, frame: received.append(signum)) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if received:
        os.kill(os.getpid(), received[0])  # now, to the handler in place again


def default_signals_in_child() -> None:
    """A forked process (a data preparation or DataLoader worker) takes the default action on the stop signals
    where this package handles them: a Python handler there may never run while the worker waits in a lock, and the
    parent, which stops the work, would then wait for it forever."""
    for signum in STOP_SIGNALS:
        if getattr(signal.getsignal(signum), "__module__", "").startswith("gpt."):
            signal.signal(signum, signal.SIG_DFL)


os.register_at_fork(after_in_child=default_signals_in_child)
