"""Export to Hugging Face's format: config.json's special token ids, the tokenizer's files, file permissions."""

import dataclasses
import json
import logging
import os

import pytest
import torch

from gpt import UserError
from gpt.data.hf import save_hf
from gpt.data.tokenizers import fit_tokenizer
from gpt.models.configs import GPTConfig

from conftest import SHAKESPEARE, run_script

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here loads from local directories
transformers = pytest.importorskip("transformers")

TEXT = SHAKESPEARE.read_text()[:40_000]
# newlines, runs of spaces, punctuation, contractions and special tokens; all of them characters of TEXT
TEXTS = ["First Citizen:\nBefore we proceed any further, hear me speak.\n\n", "  three   spaces \n\n\n",
         "What?! 'Tis so; O, me! We'll see't", "one<|endoftext|>two[PAD][MASK]", TEXT[1000:3000]]
UNICODE_TEXTS = ["naïve café — 日本語 🙂 ÆØÅ", "\ttab\r\nand a trailing space "]


def tiny_model(tokenizer):
    config = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=32,
                       mlp="gelu_tanh")
    return config.build().eval()


@pytest.fixture(scope="module", params=["char", "gpt2", "bpe"])
def exported(request, tmp_path_factory):
    """(tokenizer, export directory) for each kind of tokenizer."""
    kind = request.param
    tokenizer = fit_tokenizer(kind, [TEXT] if kind != "gpt2" else [], vocab_size=300 if kind == "bpe" else None)
    out_dir = tmp_path_factory.mktemp(f"export-{kind}")
    save_hf(tiny_model(tokenizer), tokenizer, out_dir)
    return tokenizer, out_dir


def test_config_names_the_tokenizers_special_ids(exported):
    tokenizer, out_dir = exported
    config = json.loads((out_dir / "config.json").read_text())
    assert config["bos_token_id"] == config["eos_token_id"] == tokenizer.eot_id
    assert config["vocab_size"] == tokenizer.vocab_size
    assert config.get("pad_token_id") == tokenizer.pad_id  # None for GPT-2's encoding, which has no [PAD]


def test_hf_model_loads_without_token_id_warnings(exported, caplog):
    tokenizer, out_dir = exported
    transformers.logging.enable_propagation()  # transformers' logger does not reach caplog otherwise
    try:
        with caplog.at_level(logging.WARNING):
            model = transformers.GPT2LMHeadModel.from_pretrained(out_dir)
    finally:
        transformers.logging.disable_propagation()
    assert "token_id" not in caplog.text
    assert model.config.eos_token_id == tokenizer.eot_id and model.config.pad_token_id == tokenizer.pad_id


def test_auto_tokenizer_gives_our_ids(exported):
    tokenizer, out_dir = exported
    hf = transformers.AutoTokenizer.from_pretrained(out_dir)
    texts = TEXTS if tokenizer.kind == "char" else TEXTS + UNICODE_TEXTS
    for text in texts:
        ids = hf(text)["input_ids"]
        assert ids == tokenizer.encode(text), text
        assert hf.decode(ids) == text
    assert hf.eos_token_id == tokenizer.eot_id and hf.pad_token_id == tokenizer.pad_id
    if tokenizer.kind == "gpt2":  # GPT-2's own files, read by transformers' GPT-2 tokenizer
        assert type(hf).__name__.startswith("GPT2Tokenizer") and (out_dir / "merges.txt").is_file()


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_files_follow_the_umask(tmp_path, umask, mode):
    tokenizer = fit_tokenizer("char", [TEXT])
    previous = os.umask(umask)
    try:
        save_hf(tiny_model(tokenizer), tokenizer, tmp_path / "export")
    finally:
        os.umask(previous)
    modes = {path.name: path.stat().st_mode & 0o777 for path in (tmp_path / "export").iterdir()}
    assert "model.safetensors" in modes and set(modes.values()) == {mode}, modes


def test_refuses_a_tokenizer_of_another_size(tmp_path):
    model = tiny_model(fit_tokenizer("char", [TEXT]))
    with pytest.raises(UserError, match="the bpe tokenizer has 300 tokens but the model "):
        save_hf(model, fit_tokenizer("bpe", [TEXT], vocab_size=300), tmp_path)
    assert not any(tmp_path.iterdir())


def test_export_script_writes_the_tokenizer(tmp_path):
    """export.py hands the checkpoint's tokenizer to the export."""
    tokenizer = fit_tokenizer("char", [TEXT])
    model = tiny_model(tokenizer)
    model_config = {"_target_": "gpt.model.GPTConfig", **dataclasses.asdict(model.config)}
    torch.save({"gpt": {"config": {"model": model_config}, "tokenizer": tokenizer.to_dict()},
                "state_dict": {f"model.{name}": tensor for name, tensor in model.state_dict().items()}},
               tmp_path / "tiny.ckpt")
    result = run_script("export.py", f"ckpt_path={tmp_path / 'tiny.ckpt'}", f"out_dir={tmp_path / 'export'}")
    assert result.returncode == 0, result.stderr
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path / "export")
    assert hf(TEXTS[0])["input_ids"] == tokenizer.encode(TEXTS[0])
    assert json.loads((tmp_path / "export" / "config.json").read_text())["eos_token_id"] == tokenizer.eot_id
