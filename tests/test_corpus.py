"""data=corpus on real files of each format, made on the fly: documents in, shards out, the same bytes with one
process or two, an interrupted preparation resumed, duplicates found, and bad input refused by file and record."""

import gzip
import json
import os
import random
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import run_script, start_script
from test_safety import one_error_line

WORDS = Path(__file__).resolve().parents[1].joinpath("data", "tinyshakespeare.txt").read_text().split()


def documents(count: int, seed: int = 0, words: tuple[int, int] = (20, 120)) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randrange(*words))) for _ in range(count)]


def write_jsonl(path: Path, texts: list, key: str = "text") -> Path:
    opener = gzip.open if path.suffix == ".gz" else open
    if path.suffix == ".zst":
        import zstandard

        path.write_bytes(zstandard.ZstdCompressor().compress("".join(json.dumps({key: t}) + "\n" for t in texts)
                                                             .encode()))
        return path
    with opener(path, "wt") as f:
        f.writelines(json.dumps({key: t}) + "\n" for t in texts)
    return path


def write_parquet(path: Path, texts: list, column: str = "text", row_group_size: int = 50) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({column: texts, "id": list(range(len(texts)))}), path, row_group_size=row_group_size)
    return path


def prepared(text_path, tmp_path: Path, **options) -> tuple[dict, Path]:
    """(meta, directory) of ``text_path`` prepared in this process."""
    from gpt.data.corpus import CorpusDataModule

    module = CorpusDataModule(text_path=str(text_path), cache_dir=str(tmp_path / "prepared"), batch_size=1,
                              tokenizer=options.pop("tokenizer", "gpt2"), num_proc=options.pop("num_proc", 1),
                              **options)
    return module.prepare(), module.data_dir


def texts_of(directory: Path) -> list[str]:
    """The documents of a prepared corpus, train then validation, decoded."""
    from gpt.data.store import PreparedData

    data = PreparedData(directory)
    tokens = np.concatenate([data.split(split).windows(np.array([0]), len(data.split(split)))[0].numpy()
                             for split in ("train", "val")])
    ends = np.flatnonzero(tokens == data.tokenizer.eot_id)
    assert ends[-1] == len(tokens) - 1  # every document, the last included, ends with the end token
    return [data.tokenizer.decode(part[:-1].tolist()) for part in np.split(tokens, ends + 1)[:-1]]


@pytest.mark.parametrize("name", ["docs.parquet", "docs.jsonl", "docs.jsonl.gz", "docs.jsonl.zst", "saved"])
def test_each_format_gives_its_documents_each_ended_by_the_end_token(tmp_path, name):
    texts = documents(300) + ["<|endoftext|> stays text", "naïve café ✓"]
    path = tmp_path / name
    if name == "saved":
        import datasets

        datasets.Dataset.from_dict({"content": texts}).save_to_disk(str(path))
    elif name.endswith(".parquet"):
        write_parquet(path, texts, column="content")
    else:
        write_jsonl(path, texts, key="content")
    meta, directory = prepared(path, tmp_path, text_field="content", val_fraction=0.1)
    assert (meta["documents"], meta["kept_documents"]) == (302, 302)
    assert meta["characters"] == sum(map(len, texts))
    restored = texts_of(directory)
    val = [t for i, t in enumerate(texts) if i % 10 == 9]  # held out by document: every 10th
    assert restored == [t for i, t in enumerate(texts) if i % 10 != 9] + val


def test_text_files_and_directories_of_formats_mix(tmp_path):
    corpus = tmp_path / "corpus"
    (corpus / "sub").mkdir(parents=True)
    write_parquet(corpus / "a.parquet", documents(100, seed=1))
    write_jsonl(corpus / "sub" / "b.jsonl.gz", documents(100, seed=2))
    (corpus / "c.txt").write_text("a whole file is one document\n\nwith its paragraphs")
    meta, directory = prepared(corpus, tmp_path)
    assert meta["documents"] == 201
    assert "a whole file is one document\n\nwith its paragraphs" in texts_of(directory)


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    """About 1.5 MB of documents in parquet and JSONL files."""
    corpus = tmp_path_factory.mktemp("corpus") / "web"
    corpus.mkdir()
    write_parquet(corpus / "part-0.parquet", documents(2000, seed=3))
    write_jsonl(corpus / "part-1.jsonl", documents(2000, seed=4))
    return corpus


def test_shards_are_the_same_bytes_with_one_process_or_two_and_train_across_shards(corpus_dir, tmp_path):
    runs = {}
    for num_proc in (1, 2):
        data_dir = tmp_path / f"data{num_proc}"
        result = run_script("prepare.py", "data=corpus", f"data.text_path={corpus_dir}", "data.shard_tokens=60000",
                            f"data.num_proc={num_proc}", f"paths.data_dir={data_dir}")
        assert result.returncode == 0, result.stderr
        (directory,) = data_dir.iterdir()
        runs[num_proc] = {p.name: p.read_bytes() for p in sorted(directory.glob("*.bin"))}
        meta = json.loads((directory / "meta.json").read_text())
    assert runs[1] == runs[2] and len(runs[1]) > 4
    assert len(meta["train_shards"]) > 2 and sum(meta["train_shards"]) == meta["train_tokens"]
    assert "4,000 documents read, 4,000 kept" in result.stdout

    from gpt.data.store import PreparedData

    train = PreparedData(directory).split("train")
    whole = np.concatenate([np.frombuffer(runs[1][f"train-{i:05d}.bin"], dtype=np.uint16)
                            for i in range(len(meta["train_shards"]))])
    starts = np.array([0, meta["train_shards"][0] - 3, len(whole) - 9])  # the second one crosses a boundary
    assert (train.windows(starts, 8).numpy() == np.stack([whole[s:s + 8] for s in starts])).all()

    trained = run_script("train.py", "data=corpus", f"data.text_path={corpus_dir}", "data.shard_tokens=60000",
                         f"paths.data_dir={tmp_path / 'data2'}", "model.n_layer=1", "model.n_head=2",
                         "model.n_embd=32", "model.block_size=32", "trainer.max_steps=4", "trainer.val_every_n_steps=2",
                         "data.val_windows=8", f"hydra.run.dir={tmp_path / 'run'}", "trainer.enable_progress_bar=false")
    assert trained.returncode == 0, trained.stderr[-2000:]


@pytest.mark.parametrize("dedup", ["exact", "none"])  # read here / row groups read by the encoding processes
def test_an_interrupted_preparation_resumes_from_its_last_finished_shard(corpus_dir, tmp_path, dedup):
    args = ["data=corpus", f"data.text_path={corpus_dir}", "data.shard_tokens=20000", "data.num_proc=2",
            f"data.dedup={dedup}"]
    whole = run_script("prepare.py", *args, f"paths.data_dir={tmp_path / 'whole'}")
    assert whole.returncode == 0, whole.stderr
    stopped = start_script("prepare.py", *args, f"paths.data_dir={tmp_path / 'data'}")
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob("data/*/progress.json")):
        assert stopped.poll() is None and time.monotonic() < deadline, "the preparation ended before a shard"
        time.sleep(0.005)
    stopped.send_signal(signal.SIGTERM)
    assert stopped.wait(timeout=60) == 128 + signal.SIGTERM
    (directory,) = (tmp_path / "data").iterdir()
    finished = json.loads((directory / "progress.json").read_text())["train_shards"]
    resumed = run_script("prepare.py", *args, f"paths.data_dir={tmp_path / 'data'}")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {directory} after its shard {len(finished) - 1}" in resumed.stdout
    (reference,) = (tmp_path / "whole").iterdir()
    assert {p.name: p.read_bytes() for p in directory.glob("*.bin")} == \
        {p.name: p.read_bytes() for p in reference.glob("*.bin")}
    assert not (directory / "progress.json").exists()


def test_exact_deduplication_removes_every_planted_copy(tmp_path):
    originals = documents(1000, seed=5)
    rng = random.Random(6)
    copies = [f"  {t.upper()} \n" if i % 2 else t.replace(" ", "  ") for i, t in  # case and spaces differ
              enumerate(rng.choice(originals) for _ in range(1000))]
    mixed = originals + copies
    random.Random(7).shuffle(mixed)
    meta, _ = prepared(write_jsonl(tmp_path / "docs.jsonl", mixed), tmp_path, dedup="exact")
    assert meta["removed"]["exact_duplicates"] == 1000 and meta["kept_documents"] == 1000


def near_copy(text: str, target: float, rng: random.Random) -> tuple[str, float]:
    """``text`` with words replaced one at a time until the Jaccard similarity of the two texts' word 5-gram sets
    is about ``target`` (the last one at or above it)."""
    from gpt.data.corpus import shingles

    words, original = text.split(), shingles(text)
    previous = (text, 1.0)
    for position in rng.sample(range(len(words)), len(words)):
        words[position] = f"new{rng.randrange(10**9)}"
        copy = " ".join(words)
        similarity = len(original & shingles(copy)) / len(original | shingles(copy))
        if similarity < target:
            return previous
        previous = (copy, similarity)
    return previous


def test_minhash_finds_near_copies_and_rarely_flags_half_similar_pairs():
    from gpt.data.corpus import Filters

    rng = random.Random(8)
    for target, flagged_share in ((0.8, lambda share: share >= 0.9), (0.5, lambda share: share <= 0.05)):
        filters, flagged, pairs = Filters(dedup="minhash"), 0, 300
        for text in documents(pairs, seed=9 + int(target * 10), words=(150, 300)):
            copy, similarity = near_copy(text, target, rng)
            assert target <= similarity < target + 0.07
            assert filters.keep(text)
            flagged += not filters.keep(copy)
        assert flagged_share(flagged / pairs), (target, flagged / pairs)
        assert filters.removed["near_duplicates"] == flagged


def test_minhash_and_filters_in_a_preparation_count_what_they_remove(tmp_path):
    texts = documents(200, seed=10, words=(100, 200))
    rng = random.Random(11)
    texts += [near_copy(t, 0.9, rng)[0] for t in texts[:50]] + ["too short"] * 3 + ["#### 1234 $$$$ %%%% " * 5]
    meta, _ = prepared(write_jsonl(tmp_path / "docs.jsonl", texts), tmp_path, dedup="minhash", min_chars=20,
                       max_non_alpha=0.5)
    removed = meta["removed"]
    assert removed["short"] == 3 and removed["non_alphabetic"] == 1 and removed["near_duplicates"] >= 45
    assert meta["kept_documents"] == len(texts) - sum(removed.values())


@pytest.mark.parametrize("make, args, message", [
    (lambda d: write_parquet(d / "a.parquet", ["x"] * 10, column="body"), [],
     "a.parquet has no column 'text' (its columns: body, id); set data.text_field"),
    (lambda d: (d / "a.jsonl").write_text('{"text": "fine"}\n{"text": 7}\n'), [],
     "a.jsonl, line 2: its 'text' is int, not a text"),
    (lambda d: (d / "a.jsonl.gz").write_bytes(gzip.compress("".join(json.dumps({"text": t}) + "\n" for t in
                                                                     documents(200)).encode())[:5000]), [],
     "a.jsonl.gz is cut short or not what its name says"),
    (lambda d: (d / "a.jsonl.zst").write_bytes(write_jsonl(d / "full.jsonl.zst", documents(200)).read_bytes()[:5000])
     and (d / "full.jsonl.zst").unlink(), [], "a.jsonl.zst is cut short or not what its name says"),
    (lambda d: write_jsonl(d / "a.jsonl", ["short"] * 5), ["data.min_chars=100"],
     "no documents left in"),
    (lambda d: None, ["data.dataset=nobody/no-such-dataset"],
     "cannot load dataset nobody/no-such-dataset"),
], ids=["parquet without the column", "a text that is not a string", "truncated gz", "truncated zst",
        "empty after filtering", "a dataset offline"])
def test_bad_corpora_are_one_line_and_leave_nothing_behind(tmp_path, make, args, message):
    source = tmp_path / "source"
    source.mkdir()
    make(source)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}  # the tests never reach the network
    where = [] if any(arg.startswith("data.dataset=") for arg in args) else [f"data.text_path={source}"]
    result = run_script("prepare.py", "data=corpus", *where, *args, f"paths.data_dir={tmp_path / 'data'}", env=env)
    assert result.returncode == 2 and message in one_error_line(result), result.stderr
    assert not (tmp_path / "data").exists() or not any((tmp_path / "data").iterdir())
