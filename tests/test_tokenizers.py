import pytest

from gpt import UserError
from gpt.tokenizers import CharTokenizer, tokenizer_from_dict

from conftest import SHAKESPEARE


def test_char_round_trip_on_shakespeare():
    text = SHAKESPEARE.read_text()
    tok = CharTokenizer.fit([text])
    assert tok.vocab_size == 65
    assert tok.decode(tok.encode(text[:5000])) == text[:5000]
    assert tokenizer_from_dict(tok.to_dict()).encode("ROMEO:") == tok.encode("ROMEO:")


def test_unknown_characters_are_named():
    tok = CharTokenizer.fit(["abc "])
    with pytest.raises(UserError, match=r"'Zé'"):
        tok.encode("a Zé b")
