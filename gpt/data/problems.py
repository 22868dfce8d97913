"""Synthetic arithmetic with a checkable answer: ``123+456=`` -> ``579``, or with the answer's digits reversed
(least significant first, ``975``), which *Teaching Arithmetic to Small Transformers* (Lee et al., 2024) finds a
small model learns from far fewer examples: the digit it writes first depends only on the digits it has read.

Problems are distinct pairs of numbers of up to ``digits`` digits; the held-out test problems are drawn first, and
the training problems from the rest, so that no test problem ever occurs in training.
"""

import json
import random
from pathlib import Path

from gpt import UserError
from gpt.context import available_memory, format_bytes
from gpt.files import atomic_write_text

OPERATIONS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
FORMATS = ("plain", "reversed")
MAX_DIGITS = 9  # pairs are drawn from range(10 ** (2 * digits)), which random.sample takes up to 2 ** 63
# what generating and preparing a problem takes at its peak (measured: 500 bytes for 1M 6-digit additions)
BYTES_PER_PROBLEM = 600


def check_arithmetic(operation: str, digits: int, answer_format: str, train_examples: int, test_examples: int) -> None:
    """Stop with one line when the options cannot make the problems asked for."""
    if operation not in OPERATIONS:
        raise UserError(f"data.operation={operation!r} is not an operation; choose one of {', '.join(OPERATIONS)}")
    if answer_format not in FORMATS:
        raise UserError(f"data.format={answer_format!r} is not a format; choose one of {', '.join(FORMATS)}")
    if digits > MAX_DIGITS:
        raise UserError(f"data.digits={digits} is more than this generator draws; use at most {MAX_DIGITS} digits")
    distinct = 10 ** (2 * digits)
    if train_examples + test_examples > distinct:
        raise UserError(f"data.digits={digits} makes only {distinct:,} distinct problems, fewer than "
                        f"data.train_examples={train_examples:,} + data.test_examples={test_examples:,}; use more "
                        "digits or fewer examples")
    needed, free = (train_examples + test_examples) * BYTES_PER_PROBLEM, available_memory()
    if free is not None and needed > free:
        raise UserError(f"data.train_examples={train_examples:,} + data.test_examples={test_examples:,} problems "
                        f"need about {format_bytes(needed)} of memory to generate and prepare, and {format_bytes(free)} is "
                        f"free; use at most about {free // BYTES_PER_PROBLEM:,} in all")


def answer(a: int, b: int, operation: str, answer_format: str, width: int = 0) -> str:
    """The result, its digits reversed in the reversed format, zero-padded to ``width`` digits."""
    value = OPERATIONS[operation](a, b)
    digits = str(abs(value)).zfill(width)
    return ("-" if value < 0 else "") + (digits[::-1] if answer_format == "reversed" else digits)


def problems(operation: str, digits: int, answer_format: str, train_examples: int, test_examples: int,
             seed: int, zero_pad: bool = True) -> tuple[list[dict], list[dict]]:
    """(training examples, test examples) as {"prompt", "answer"} dicts; no pair of numbers is in both.
    ``zero_pad``: every number written with ``digits`` digits and every result with as many as it can have
    (``007+012=`` -> ``0190``), so that each digit has its fixed place."""
    check_arithmetic(operation, digits, answer_format, train_examples, test_examples)
    rng = random.Random(seed)
    pairs = [divmod(i, 10 ** digits) for i in rng.sample(range(10 ** (2 * digits)), train_examples + test_examples)]
    width = digits if zero_pad else 0
    result_width = (2 * digits if operation == "*" else digits + 1) if zero_pad else 0
    examples = [{"prompt": f"{a:0{width}d}{operation}{b:0{width}d}=",
                 "answer": answer(a, b, operation, answer_format, result_width)} for a, b in pairs]
    return examples[test_examples:], examples[:test_examples]


def write_jsonl(examples: list[dict], path: Path) -> None:
    atomic_write_text(path, "".join(json.dumps(example) + "\n" for example in examples))
