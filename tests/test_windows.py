import json

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from gpt import UserError
from gpt.data.store import PreparedData, TokenFile, prepared_name
from gpt.data.windows import FixedWindows, RandomWindows, WindowsDataModule, prepare_windows

from conftest import SHAKESPEARE


@pytest.fixture(scope="module")
def shakespeare_tokens(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "shakespeare-char"
    return out, prepare_windows(SHAKESPEARE, out)


def test_prepare_splits_90_10(shakespeare_tokens):
    out, meta = shakespeare_tokens
    # the canonical split (1003854, 111540) plus the end-of-text token after the document
    assert (meta["train_tokens"], meta["val_tokens"]) == (1003854, 111541)
    assert meta["dtype"] == "uint16" and meta["vocab_size"] == 65 + 3  # characters, then 3 special tokens
    train = np.memmap(out / "train.bin", dtype=np.uint16, mode="r")
    assert len(train) == meta["train_tokens"]
    assert json.loads((out / "tokenizer.json").read_text())["kind"] == "char"
    stamp = (out / "train.bin").stat().st_mtime_ns
    prepare_windows(SHAKESPEARE, out)
    assert (out / "train.bin").stat().st_mtime_ns == stamp  # up to date: not rewritten


@pytest.fixture
def counting_file(tmp_path):
    """Token i has id i, so a window's first id is where it starts."""
    path = tmp_path / "tokens.bin"
    np.arange(100, dtype=np.uint16).tofile(path)
    return path


def test_random_windows_are_shifted_and_inside_the_file(counting_file):
    windows = RandomWindows(TokenFile(counting_file, "uint16"), block_size=8, batch_size=64, seed=0)
    for b in range(20):
        x, y = windows.batch(b)["input_ids"], windows.batch(b)["labels"]
        assert x.shape == y.shape == (64, 8) and x.dtype == torch.int64
        assert torch.equal(x[:, 1:], y[:, :-1])
        assert torch.equal(y[:, -1] - x[:, 0], torch.full((64,), 8))  # contiguous windows
        assert y.max() <= 99  # no window runs past the end


def test_ranks_split_one_global_batch(counting_file):
    def batch(b, **kw):
        return RandomWindows(TokenFile(counting_file, "uint16"), block_size=8, seed=3, **kw).batch(b)["input_ids"]

    whole = batch(0, batch_size=8)
    rank0, rank1 = batch(0, batch_size=4, rank=0, world_size=2), batch(0, batch_size=4, rank=1, world_size=2)
    assert not torch.equal(rank0, rank1)
    assert torch.equal(torch.cat([rank0, rank1]), whole)
    micro0, micro1 = batch(0, batch_size=4, accumulate=2), batch(1, batch_size=4, accumulate=2)
    assert torch.equal(torch.cat([micro0, micro1]), whole)


def test_workers_give_the_same_stream_as_one_process(counting_file):
    windows = RandomWindows(TokenFile(counting_file, "uint16"), block_size=8, batch_size=4, seed=1)
    expected = [windows.batch(b)["input_ids"] for b in range(6)]
    loader = DataLoader(windows, batch_size=None, num_workers=2)
    got = [x for x, _ in zip(loader, range(6))]
    assert all(torch.equal(g["input_ids"], e) for g, e in zip(got, expected))


def test_validation_windows_are_fixed(counting_file):
    a, b = FixedWindows(TokenFile(counting_file, "uint16"), 8), FixedWindows(TokenFile(counting_file, "uint16"), 8)
    assert len(a) == 12
    assert all(torch.equal(a[i]["input_ids"], b[i]["input_ids"]) for i in range(len(a)))
    assert a[len(a) - 1]["labels"][-1] == 99


def test_missing_empty_and_non_utf8_files(tmp_path):
    with pytest.raises(UserError, match="data file not found"):
        prepare_windows(tmp_path / "nope.txt", tmp_path / "out")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(UserError, match="empty"):
        prepare_windows(tmp_path / "empty.txt", tmp_path / "out")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(UserError, match="not UTF-8"):
        prepare_windows(tmp_path / "latin1.txt", tmp_path / "out")


def test_text_shorter_than_a_block(tmp_path):
    (tmp_path / "short.txt").write_text("To be, or not to be: that is the question.\n")
    dm = WindowsDataModule(text_path=str(tmp_path / "short.txt"), cache_dir=str(tmp_path), block_size=64, batch_size=2)
    dm.prepare_data()
    with pytest.raises(UserError, match="too short"):
        dm.setup("fit")


def test_texts_of_the_same_name_get_their_own_directories(tmp_path):
    first, second = tmp_path / "a" / "texts", tmp_path / "b" / "texts"
    for folder, line in ((first, "first corpus\n"), (second, "second corpus\n")):
        (folder / "sub").mkdir(parents=True)
        (folder / "sub" / "part.txt").write_text(line * 50)  # found in a subdirectory too
    dirs = [tmp_path / "data" / prepared_name(folder, "char") for folder in (first, second)]
    assert dirs[0] != dirs[1] and dirs[0].name.startswith("texts-") and dirs[0].name.endswith("-char")
    for folder, out in zip((first, second), dirs):
        prepare_windows(folder, out)
    assert PreparedData(dirs[0]).tokenizer.decode(np.fromfile(dirs[0] / "train.bin", dtype=np.uint16)[:5]) == "first"


def test_a_bpe_learns_from_the_training_split_only(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text(SHAKESPEARE.read_text()[:18_000] + "zqzq " * 400)  # the last 10%: a word training never sees
    prepare_windows(text, tmp_path / "out", tokenizer="bpe", vocab_size=300)
    tok = PreparedData(tmp_path / "out").tokenizer
    assert len(tok.encode(" the")) == 1 and len(tok.encode(" zqzq")) == 5  # merged / left as its 5 bytes
