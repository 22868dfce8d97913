"""Arithmetic problems with a checkable answer (``gpt.data.problems``), written once as JSONL into the data cache
and prepared as prompt -> answer examples: the format of ``data=arithmetic``. The test problems are held out for
validation and never in training."""

from pathlib import Path

from gpt.data.answers import AnswersDataModule
from gpt.data.problems import check_arithmetic, problems, write_jsonl


class ArithmeticDataModule(AnswersDataModule):
    """``train_examples`` problems for training, ``test_examples`` held out (never in training) for validation,
    where every one of them has its generated answer checked.

    - ``operation``: ``+``, ``-`` or ``*``; ``digits``: numbers of up to this many digits;
    - ``format``: ``plain``, or ``reversed`` (the answer's digits least significant first);
    - ``zero_pad``: every number written with ``digits`` digits (``007+012=``), every digit in a fixed place;
    - ``train_examples``, ``test_examples``: how many problems of each;
    - and the options of padded examples (``gpt.data.examples.ExamplesDataModule``)."""

    def __init__(self, *, operation: str = "+", digits: int = 3, format: str = "reversed", zero_pad: bool = True,
                 train_examples: int = 10_000, test_examples: int = 1000, cache_dir: str, seed: int = 1337,
                 **options):
        check_arithmetic(operation, digits, format, train_examples, test_examples)
        name = f"arithmetic-{'add' if operation == '+' else 'sub' if operation == '-' else 'mul'}-{digits}d-{format}-" \
               f"{'padded-' if zero_pad else ''}{train_examples}-{test_examples}-{seed}"
        self.problems_dir = Path(cache_dir) / name
        super().__init__(text_path=str(self.problems_dir / "train.jsonl"), val_path=str(self.problems_dir / "test.jsonl"),
                         eval_examples=test_examples, cache_dir=cache_dir, seed=seed, **options)
        self.options = (operation, digits, format, train_examples, test_examples, seed, zero_pad)

    def describe_source(self) -> str:
        return str(self.problems_dir)

    def prepare(self) -> dict:
        if not (self.problems_dir / "test.jsonl").is_file():
            train, test = problems(*self.options)
            self.problems_dir.mkdir(parents=True, exist_ok=True)
            write_jsonl(train, self.problems_dir / "train.jsonl")
            write_jsonl(test, self.problems_dir / "test.jsonl")
        return super().prepare()
