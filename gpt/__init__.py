"""gpt: train GPT-style language models with PyTorch Lightning and Hydra.

The package, in layers (``docs/architecture.md``): the core (this module: errors and constants; ``files``,
``context``, ``signals``, ``compat``, ``metrics``), then ``models``, ``data``, ``training``, ``eval`` and ``cli``; a
part imports from its own layer and the ones below only.
"""

IGNORE_INDEX = -100  # the label of positions without a loss (cross_entropy's default ignore_index)


class UserError(Exception):
    """A problem with the user's input or files, reported as one line without a traceback."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite: the run failed (in a sweep, only this trial), though the input was valid."""


class RunStopped(BaseException):
    """A signal (SIGTERM, SIGINT, ...) stopped the run. A BaseException, as KeyboardInterrupt is: it ends a sweep
    too, instead of being recorded as a failed job."""

    def __init__(self, signal: str, saved: bool, step: int | None = None):
        super().__init__(signal)
        self.signal, self.saved, self.step = signal, saved, step


def format_count(n: int) -> str:
    """A parameter count for people: 124.44M, 1.56B."""
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"
