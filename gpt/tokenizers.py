"""Tokenizers behind one small interface: encode, decode, vocab_size, to_dict / tokenizer_from_dict."""

from collections.abc import Iterable

from gpt import UserError


class CharTokenizer:
    """One token per character; the vocabulary is the sorted set of characters in the training text."""

    kind = "char"

    def __init__(self, chars: str):
        self.chars = chars
        self.stoi = {ch: i for i, ch in enumerate(chars)}

    @classmethod
    def fit(cls, texts: Iterable[str]) -> "CharTokenizer":
        seen: set[str] = set()
        for text in texts:
            seen.update(text)
        return cls("".join(sorted(seen)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[ch] for ch in text]
        except KeyError:
            unknown = sorted(set(text) - self.stoi.keys())
            raise UserError(f"characters not in the tokenizer's vocabulary: {''.join(unknown)!r}; "
                            "use only characters that occur in the training text") from None

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.chars[i] for i in ids)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "chars": self.chars}


TOKENIZERS = {"char": CharTokenizer}


def fit_tokenizer(kind: str, texts: Iterable[str]) -> CharTokenizer:
    if kind not in TOKENIZERS:
        raise UserError(f"data.tokenizer={kind!r} is not a known tokenizer; choose one of {', '.join(TOKENIZERS)}")
    return TOKENIZERS[kind].fit(texts)


def tokenizer_from_dict(d: dict) -> CharTokenizer:
    if d.get("kind") == "char":
        return CharTokenizer(d["chars"])
    raise UserError(f"unknown tokenizer kind {d.get('kind')!r} in the saved tokenizer")
