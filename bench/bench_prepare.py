"""Preparation speed of ``data=corpus`` against tiktoken's own, and its peak memory.

    python bench/bench_prepare.py              # a synthetic corpus of about 300 MB in parquet shards
    python bench/bench_prepare.py --mb 50      # a smaller one

The corpus is made by this script with a fixed seed: documents of sentences of made-up words (Zipf-distributed,
as words are), written as FineWeb-style parquet files with a ``text`` column. Measured in the same run: tiktoken's
GPT-2 encoding of its first documents in one thread (the faster of ``encode_ordinary_batch(num_threads=1)`` and
``encode_to_numpy``), then ``python prepare.py data=corpus``'s preparation of the whole corpus with one process
and with one per core (reading, encoding, writing the shards: everything but the imports of the process), their
outputs compared byte for byte, and the peak memory of the preparing processes (the proportional set size of the
process and its workers, summed, sampled every 50 ms).
"""

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def make_corpus(directory: Path, megabytes: int, seed: int = 0) -> int:
    """Parquet files of about ``megabytes`` MB of text; the bytes of text written."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    letters = np.array(list("etaoinshrdlucmfwypvbgkjqxz"))
    vocabulary = ["".join(rng.choice(letters, size=rng.integers(1, 11), p=None)) for _ in range(30_000)]
    weights = 1 / np.arange(1, len(vocabulary) + 1)
    weights /= weights.sum()
    sentences = []
    for _ in range(50_000):
        words = [vocabulary[i] for i in rng.choice(len(vocabulary), size=rng.integers(4, 30), p=weights)]
        sentences.append(" ".join(words).capitalize() + rng.choice([".", ".", ".", "?", "!", ","]))
    written, part = 0, 0
    while written < megabytes * 1_000_000:
        documents = [" ".join(sentences[i] for i in rng.integers(0, len(sentences), size=rng.integers(5, 60)))
                     for _ in range(5_000)]
        pq.write_table(pa.table({"text": documents}), directory / f"part-{part:03d}.parquet", row_group_size=1_000)
        written += sum(len(d.encode()) for d in documents)
        part += 1
    return written


def tiktoken_single_thread(directory: Path, megabytes: int = 30) -> float:
    """MB/s of tiktoken's GPT-2 encoding in one thread, over the corpus's first ``megabytes`` MB: the faster of its
    ``encode_ordinary_batch(num_threads=1)`` and ``encode_to_numpy`` (which the preparation uses)."""
    import pyarrow.parquet as pq
    import tiktoken  # noqa: F401

    from gpt.data.tokenizers import fit_tokenizer

    encoding = fit_tokenizer("gpt2", []).encoding
    texts, size = [], 0
    for path in sorted(directory.glob("*.parquet")):
        for text in pq.read_table(path).column("text").to_pylist():
            texts.append(text)
            size += len(text.encode())
            if size >= megabytes * 1_000_000:
                break
        if size >= megabytes * 1_000_000:
            break
    seconds = []
    for encode in (lambda: encoding.encode_ordinary_batch(texts, num_threads=1),
                   lambda: [encoding.encode_to_numpy(text, disallowed_special=()) for text in texts]):
        started = time.perf_counter()
        encode()
        seconds.append(time.perf_counter() - started)
    return size / 1e6 / min(seconds)


def process_tree_memory(pid: int) -> int:
    """The memory of a process and all of its descendants: their proportional set sizes (a page that forked
    processes share counts once in all, not once in each), in bytes."""
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        try:
            rollup = Path(f"/proc/{current}/smaps_rollup").read_text()
            total += int(next(line.split()[1] for line in rollup.splitlines() if line.startswith("Pss:"))) * 1024
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(child) for child in (task / "children").read_text().split()]
        except (OSError, StopIteration):
            continue
    return total


# a process that prepares the corpus and prints the seconds its preparation took (its imports left out)
PREPARE = """
import sys, time
from gpt.data.corpus import CorpusDataModule
module = CorpusDataModule(text_path=sys.argv[1], cache_dir=sys.argv[2], batch_size=1, tokenizer="gpt2",
                          num_proc=int(sys.argv[3]))
started = time.perf_counter()
module.prepare()
print(time.perf_counter() - started)
"""


def prepare(corpus: Path, data_dir: Path, num_proc: int) -> tuple[float, int, str]:
    """(seconds, peak memory in bytes, digest of the token files) of a ``data=corpus`` preparation, in a process of
    its own as ``prepare.py`` runs it."""
    process = subprocess.Popen([sys.executable, "-c", PREPARE, str(corpus), str(data_dir), str(num_proc)], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    peak = 0
    while process.poll() is None:
        peak = max(peak, process_tree_memory(process.pid))
        time.sleep(0.05)
    if process.returncode:
        raise RuntimeError(f"the preparation failed: {process.stdout.read()}")
    seconds = float(process.stdout.read().split()[-1])
    digest = hashlib.sha256()
    for path in sorted(next(data_dir.iterdir()).glob("*.bin")):
        digest.update(path.read_bytes())
    return seconds, peak, digest.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=300, help="the corpus's size in MB of text")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus"
        corpus.mkdir()
        size = make_corpus(corpus, args.mb)
        single = tiktoken_single_thread(corpus)
        rows = [f"| tiktoken alone, 1 thread (first 30 MB) | 1 | {single:.2f} | | |"]
        digests = []
        for num_proc in sorted({1, cores}):
            seconds, peak, digest = prepare(corpus, Path(tmp) / f"data{num_proc}", num_proc)
            digests.append(digest)
            rows.append(f"| `data=corpus` preparation, {size / 1e6:.0f} MB | {num_proc} | {size / 1e6 / seconds:.2f} | "
                        f"{seconds:.1f} s | {peak / 2**20:.0f} MiB |")
    print(f"{cores} cores; a synthetic corpus of {size / 1e6:.0f} MB of text in parquet files\n")
    print("| what | processes | MB/s | time | peak memory |\n|---|---|---|---|---|")
    print("\n".join(rows))
    best = size / 1e6 / seconds
    print(f"\nwith {cores} processes: {best / single:.2f} x tiktoken's single thread, {best / (cores * single):.2f} x "
          f"({cores} cores x its single thread); the token files with 1 and {cores} processes are "
          f"{'byte-identical' if len(set(digests)) == 1 else 'DIFFERENT'}")


if __name__ == "__main__":
    main()
