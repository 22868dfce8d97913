"""gpt: train GPT-style language models with PyTorch Lightning and Hydra.

This module holds what every layer of the package shares: its errors, checks and constants.
"""

IGNORE_INDEX = -100  # the label of positions without a loss (cross_entropy's default ignore_index)


class UserError(Exception):
    """A problem with the user's input or files, reported as one line without a traceback."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite: the run failed (in a sweep, only this trial), though the input was valid."""


def format_count(n: int) -> str:
    """A parameter count for people: 124.44M, 1.56B."""
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"


def check_positive(name: str, value, kind: type = int) -> None:
    """Raise a UserError unless ``value`` is a positive int (or, with ``kind=float``, a positive number)."""
    allowed = (int, float) if kind is float else int
    if isinstance(value, bool) or not isinstance(value, allowed) or value <= 0:
        what = "number" if kind is float else "integer"
        raise UserError(f"{name} must be a positive {what}, got {value!r}")
