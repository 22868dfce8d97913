"""Padding with and without length bucketing, and the accuracy a masked LM must beat.

    python bench/bench_padded.py [--text PATH] [--example paragraph] [--batch-size 64] [--block-size 256]

Prints the padding fraction (padded tokens / all tokens) of one epoch of training and validation batches,
bucketed or not, padded to the longest example or to a multiple of 64 tokens (``data.pad_multiple``, so that a
compiled model sees a handful of lengths), the distinct lengths of the training batches, and the validation
accuracy of always predicting the most frequent training token at the masked positions (masking chooses uniformly
among the real, non-special tokens).
"""

import argparse
import sys
import tempfile
from collections import Counter
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # run as a script, the package is not on the path

from gpt.data.examples import ExamplesDataModule, padding_fraction  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text", type=Path, default=REPO_ROOT / "data" / "tinyshakespeare.txt")
    parser.add_argument("--example", default="paragraph", choices=("line", "paragraph", "document"))
    parser.add_argument("--tokenizer", default="char")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--block-size", type=int, default=256)
    return parser.parse_args()


def token_counts(dataset, special_ids) -> Counter:
    counts = Counter()
    for i in range(len(dataset)):
        counts.update(t for t in dataset[i][1].tolist() if t not in special_ids)
    return counts


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory() as cache_dir:
        dm = ExamplesDataModule(text_path=str(args.text), cache_dir=cache_dir, block_size=args.block_size,
                                batch_size=args.batch_size, example=args.example, tokenizer=args.tokenizer)
        dm.prepare_data()
        dm.setup()
        data = dm.prepared
        print(f"{args.text.name}: {data.n_train_examples} train and {data.n_examples - data.n_train_examples}"
              f" val {args.example}s, batch {args.batch_size}, block_size {args.block_size}")
        print("| bucketing | padded to | train pad fraction | val pad fraction | train batch lengths |\n|---|---|---|---|---|")
        for bucketing in (False, True):
            for pad_multiple in (1, 64):
                dm.bucketing, dm.pad_multiple = bucketing, pad_multiple
                lengths = {batch["input_ids"].shape[1] for batch in dm.train_dataloader()}
                print(f"| {'on' if bucketing else 'off'} | {'the longest' if pad_multiple == 1 else 'a multiple of 64'} "
                      f"| {padding_fraction(dm.train_dataloader()):.1%} | {padding_fraction(dm.val_dataloader()):.1%} "
                      f"| {len(lengths)} |")
        tok = dm.tokenizer
        train = token_counts(dm.train_dataset(), tok.special_ids)
        val = token_counts(dm.val_dataset(), tok.special_ids)
        top = train.most_common(1)[0][0]
        print(f"always predicting {tok.decode([top])!r}, the most frequent training token: "
              f"{val[top] / sum(val.values()):.3f} accuracy on masked val tokens")


if __name__ == "__main__":
    main()
