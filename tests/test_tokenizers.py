import pytest

from gpt import UserError
from gpt.data.tokenizers import CharTokenizer, fit_tokenizer, tokenizer_from_dict

from conftest import SHAKESPEARE


def test_char_round_trip_on_shakespeare():
    text = SHAKESPEARE.read_text()
    tok = CharTokenizer.fit([text])
    assert tok.vocab_size == 65 + 3  # the characters, then <|endoftext|>, [PAD], [MASK]
    assert tok.decode(tok.encode(text[:5000])) == text[:5000]
    assert tokenizer_from_dict(tok.to_dict()).encode("ROMEO:") == tok.encode("ROMEO:")


def test_unknown_characters_are_named():
    tok = CharTokenizer.fit(["abc "])
    with pytest.raises(UserError, match=r"'Zé'"):
        tok.encode("a Zé b")


def test_char_special_tokens_come_after_the_characters():
    tok = CharTokenizer.fit(["To be, or not to be [sic] <b>"])  # '[' and '<' are characters here too
    n_chars = len(tok.chars)
    assert {tok.eot_id, tok.pad_id, tok.mask_id} == tok.special_ids == {n_chars, n_chars + 1, n_chars + 2}
    ids = tok.encode("to [MASK] [MASK]<|endoftext|>[sic]")
    assert ids.count(tok.mask_id) == 2 and ids[-6] == tok.eot_id
    assert tok.decode(ids) == "to [MASK] [MASK]<|endoftext|>[sic]"
    assert tok.encode("[sic]") == [tok.stoi[c] for c in "[sic]"]  # brackets alone stay characters
    assert tokenizer_from_dict(tok.to_dict()).encode("[PAD]b") == [tok.pad_id, tok.stoi["b"]]


def test_char_tokenizer_saved_without_specials_still_loads():
    old = tokenizer_from_dict({"kind": "char", "chars": "ab"})
    assert old.vocab_size == 2 and old.mask_id is None and old.encode("ba") == [1, 0]


def test_bpe_special_ids_and_gpt2_has_no_mask():
    bpe = fit_tokenizer("bpe", ["To be, or not to be, that is the question. " * 20], vocab_size=270)
    assert bpe.encode("be [MASK]")[-1] == bpe.mask_id and bpe.pad_id in bpe.special_ids
    gpt2 = fit_tokenizer("gpt2", [])
    assert gpt2.special_ids == {gpt2.eot_id} and gpt2.mask_id is None and gpt2.pad_id is None
