"""Benchmark BPE training and tiktoken encoding speed.

    python bench/bench_bpe.py [--text PATH] [--vocab-size 4096]
"""

import argparse
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # run as a script, the package is not on the path

from gpt.data.bpe import gpt2_encoding, train_bpe  # noqa: E402

CHUNK_CHARS = 1 << 20


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text", type=Path, default=REPO_ROOT / "data" / "tinyshakespeare.txt")
    parser.add_argument("--vocab-size", type=int, default=4096)
    return parser.parse_args()


def read_chunks(path: Path):
    with path.open(encoding="utf-8") as file:
        while chunk := file.read(CHUNK_CHARS):
            yield chunk


def best_of(runs: int, function) -> float:
    timings = []
    for _ in range(runs):
        start = time.perf_counter()
        function()
        timings.append(time.perf_counter() - start)
    return min(timings)


def main() -> None:
    args = parse_args()
    text = args.text.read_text(encoding="utf-8")
    megabytes = len(text.encode("utf-8")) / 1e6
    print(f"text: {args.text} ({megabytes:.2f} MB)")

    start = time.perf_counter()
    trained = train_bpe(read_chunks(args.text), args.vocab_size)
    print(f"train_bpe to vocab {args.vocab_size}: {time.perf_counter() - start:.2f} s")

    start = time.perf_counter()
    gpt2 = gpt2_encoding()
    print(f"gpt2_encoding() load: {time.perf_counter() - start:.2f} s")

    for name, encoding in [(f"trained bpe ({args.vocab_size})", trained), ("gpt2", gpt2)]:
        seconds = best_of(3, lambda: encoding.encode_ordinary(text))
        tokens = len(encoding.encode_ordinary(text))
        print(
            f"encode_ordinary {name}: {megabytes / seconds:.1f} MB/s, "
            f"{tokens} tokens ({len(text) / tokens:.2f} chars/token)"
        )


if __name__ == "__main__":
    main()
