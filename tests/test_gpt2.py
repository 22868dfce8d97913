"""GPT-2 family: BPE data, configs and parameter counts, Hugging Face weight interop, init_from."""

import logging

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from gpt import UserError
from gpt.data.hf import save_hf
from gpt.data.store import token_dtype
from gpt.data.tokenizers import CharTokenizer, fit_tokenizer, tokenizer_from_dict
from gpt.data.windows import prepare_windows
from gpt.models.configs import GPTConfig
from gpt.models.hf import gpt2_from_hf, read_hf_state_dict
from gpt.models.interface import cross_entropy
from gpt.training.checkpoint import load_initial_weights
from gpt.training.run import build_lm

from conftest import SHAKESPEARE, compose_train, run_script, train_tiny

transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("name, published", [("gpt2", 124_439_808), ("gpt2-medium", 354_823_168),
                                             ("gpt2-large", 774_030_080), ("gpt2-xl", 1_557_611_200)])
def test_gpt2_parameter_counts(name, published, tmp_path):
    cfg = compose_train(f"model={name}", tmp_path=tmp_path)
    assert cfg.data.tokenizer == "gpt2"  # a GPT-2 model means GPT-2's tokens
    config = instantiate(cfg.model, vocab_size=50257)
    assert config.padded_vocab_size == 50304
    with torch.device("meta"):
        assert config.build().count_parameters() == published


def test_tokenizer_kinds_share_one_interface():
    text = "Hello world, <|endoftext|> héllo 👋"
    gpt2 = fit_tokenizer("gpt2", [])
    assert gpt2.encode("Hello world") == [15496, 995] and gpt2.eot_id == 50256
    bpe = fit_tokenizer("bpe", [SHAKESPEARE.read_text()[:100_000]], vocab_size=300)
    for tok in (gpt2, bpe):
        again = tokenizer_from_dict(tok.to_dict())
        assert again.decode(again.encode(text)) == text and again.encode(text) == tok.encode(text)
    with pytest.raises(UserError, match="vocab_size must be at least 259"):
        fit_tokenizer("bpe", ["some text"], vocab_size=100)


def test_prepare_with_gpt2_appends_end_of_text(tmp_path):
    meta = prepare_windows(SHAKESPEARE, tmp_path, tokenizer="gpt2")
    assert (meta["train_tokens"], meta["val_tokens"]) == (301_966, 36_060)  # nanoGPT's split, plus <|endoftext|>
    val = np.memmap(tmp_path / "val.bin", dtype=meta["dtype"], mode="r")
    assert meta["dtype"] == "uint16" and val[-1] == 50256
    assert token_dtype(50257) == np.uint16 and token_dtype(100_277) == np.uint32


def test_prepare_a_directory_of_documents(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(3):
        (docs / f"{i}.txt").write_text(f"Document number {i}.\n" * 20)
    meta = prepare_windows(docs, tmp_path / "out", tokenizer="gpt2", num_proc=2)
    tokens = np.concatenate([np.fromfile(tmp_path / "out" / f"{s}.bin", dtype=np.uint16) for s in ("train", "val")])
    assert (tokens == 50256).sum() == 3 and tokens[-1] == 50256
    assert meta["train_tokens"] + meta["val_tokens"] == len(tokens)


def small_hf_model(vocab_size=100, n_positions=32):
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=vocab_size, n_positions=n_positions, n_embd=64, n_layer=2, n_head=4,
                                     resid_pdrop=0, embd_pdrop=0, attn_pdrop=0)
    return transformers.GPT2LMHeadModel(config).eval()


def our_config(**changes):
    return GPTConfig(**{"vocab_size": 100, "block_size": 32, "n_layer": 2, "n_head": 4, "n_embd": 64,
                        "pad_vocab_multiple": 64, "mlp": "gelu_tanh", **changes})


def test_hf_import_matches_hf_logits(tmp_path):
    hf = small_hf_model()
    hf.save_pretrained(tmp_path)
    model = gpt2_from_hf(read_hf_state_dict(tmp_path), our_config()).eval()
    idx = torch.randint(0, 100, (3, 32))
    with torch.no_grad():
        ours, theirs = model(idx)[..., :100], hf(idx).logits
    assert (ours - theirs).abs().max().item() <= 1e-5


def char_tokenizer(vocab_size: int = 100) -> CharTokenizer:
    """A character tokenizer of ``vocab_size`` tokens: printable characters, then its 3 special tokens."""
    return CharTokenizer("".join(chr(c) for c in range(32, 32 + vocab_size - 3)))


def test_export_loads_back_into_hf(tmp_path):
    torch.manual_seed(1)
    model = our_config().build().eval()
    save_hf(model, char_tokenizer(), tmp_path)
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    idx = torch.randint(0, 100, (2, 16))
    with torch.no_grad():
        assert (model(idx)[..., :100] - hf(idx).logits).abs().max().item() <= 1e-5


def test_hf_shape_mismatch_names_the_tensor(tmp_path):
    small_hf_model().save_pretrained(tmp_path)
    with pytest.raises(UserError, match="shape mismatch at wte.weight"):
        gpt2_from_hf(read_hf_state_dict(tmp_path), our_config(n_embd=32, n_head=4))


def test_init_from_crops_block_size(tmp_path):
    small_hf_model(vocab_size=50257, n_positions=64).save_pretrained(tmp_path)
    model = our_config(vocab_size=50257, block_size=16).build()
    load_initial_weights(model, str(tmp_path), fit_tokenizer("gpt2", []))
    hf_wpe = read_hf_state_dict(tmp_path)["wpe.weight"]
    assert torch.equal(model.wpe.weight, hf_wpe[:16])


@pytest.mark.slow  # init_from HF weights is also run by test_fine_tune_gpt2_weights_on_prompt_answer_examples
def test_fine_tune_from_hf_weights_on_bpe_data(tmp_path):
    small_hf_model(vocab_size=50257, n_positions=64).save_pretrained(tmp_path / "hf")
    model = ["model=gpt2", "model.n_layer=2", "model.n_head=4", "model.n_embd=64", "model.block_size=32"]
    result = train_tiny(tmp_path / "run", "data=shakespeare_bpe", f"init_from={tmp_path / 'hf'}",
                        "trainer.max_steps=10", "trainer.val_every_n_steps=10", "data.batch_size=4",
                        "data.val_windows=8", model=model)
    assert result.returncode == 0, result.stderr
    assert "initialised the weights from" in (tmp_path / "run" / "train.log").read_text()
    export = run_script("export.py", f"ckpt_path={tmp_path / 'run' / 'checkpoints' / 'last.ckpt'}",
                        f"out_dir={tmp_path / 'export'}")
    assert export.returncode == 0, export.stderr
    assert transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "export").config.n_layer == 2


def test_checkpoint_of_another_tokenizer_is_refused(tiny_run, tmp_path):
    ckpt = tiny_run / "checkpoints" / "best.ckpt"  # trained on characters
    result = train_tiny(tmp_path / "run", "data=shakespeare_bpe", f"init_from={ckpt}")
    assert result.returncode == 2
    assert "was trained with the char tokenizer (68 tokens) but the data uses the gpt2 tokenizer" in result.stderr


def test_padded_vocabulary_gets_no_probability_hf_loss_matches(tmp_path):
    """Real GPT-2 logits sit far below zero; the rows that pad 100 tokens to 128 must not take probability."""
    hf = small_hf_model()
    with torch.no_grad():  # every logit shifted by -5 * 4 = -20: softmax, and so HF's loss, do not change
        hf.transformer.wte.weight[:, 0] = 5.0
        hf.transformer.ln_f.weight[0] = 0.0
        hf.transformer.ln_f.bias[0] = -4.0
    hf.save_pretrained(tmp_path)
    model = gpt2_from_hf(read_hf_state_dict(tmp_path), our_config()).eval()
    assert model.wte.weight.shape[0] == 128
    idx = torch.randint(0, 100, (3, 32))
    with torch.no_grad():
        theirs = hf(idx, labels=idx)
        assert theirs.logits.mean() < -15
        ours = cross_entropy(model(idx)[:, :-1], idx[:, 1:])
    assert abs(ours.item() - theirs.loss.item()) <= 1e-4


def test_model_gpt2_means_gpt2_on_gpt2_tokens(tmp_path, caplog):
    """`python train.py model=gpt2` as users type it: the 124M GPT-2 over GPT-2's BPE, and the log says so."""
    cfg = compose_train("model=gpt2", f"paths.data_dir={tmp_path}", tmp_path=tmp_path)
    data = instantiate(cfg.data, block_size=cfg.model.block_size)
    data.prepare_data()
    assert data.tokenizer.kind == "gpt2" and data.tokenizer.vocab_size == 50257
    with caplog.at_level(logging.INFO, logger="gpt.training"):
        lm = build_lm(cfg, instantiate(cfg.model, vocab_size=data.tokenizer.vocab_size), data.tokenizer, None)
    assert lm.model.count_parameters() == 124_439_808
    assert "124.44M parameters over the 50257 tokens of the gpt2 tokenizer (embedding padded to 50304 rows)" \
        in caplog.text
    other = compose_train("model=gpt2", "data=text", "data.text_path=my.txt", tmp_path=tmp_path)
    assert other.data.tokenizer == "gpt2"  # another corpus is one override, still in GPT-2's tokens


@pytest.mark.parametrize("change, message", [({"tie_weights": False}, "model.tie_weights=true"),
                                             ({"causal": False}, "model.causal=true"),
                                             ({"pos": "rope", "norm": "rmsnorm"}, "model.pos=learned, model.norm")])
def test_export_refuses_what_gpt2_cannot_hold(tmp_path, change, message):
    model = our_config(**change).build()
    with pytest.raises(UserError, match="only GPT-2-shaped models export") as error:
        save_hf(model, char_tokenizer(), tmp_path)
    assert message in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "model.safetensors").exists()


def test_fine_tune_gpt2_weights_on_prompt_answer_examples(tmp_path):
    small_hf_model(vocab_size=50257, n_positions=64).save_pretrained(tmp_path / "hf")
    examples = [f'{{"prompt": "Q: {a} plus {b}?\\nA:", "answer": " {a + b}"}}' for a in range(12) for b in range(12)]
    (tmp_path / "qa.jsonl").write_text("\n".join(examples) + "\n")
    model = ["model=gpt2", "model.n_layer=2", "model.n_head=4", "model.n_embd=64", "model.block_size=32"]
    result = run_script("train.py", *model, "data=jsonl", f"data.text_path={tmp_path / 'qa.jsonl'}",
                        "data.tokenizer=gpt2", "data.eval_examples=8", f"init_from={tmp_path / 'hf'}",
                        "trainer.max_steps=4", "trainer.val_every_n_steps=4", "data.batch_size=8",
                        f"hydra.run.dir={tmp_path / 'run'}", f"paths.data_dir={tmp_path / 'data'}")
    assert result.returncode == 0, result.stderr
    assert "initialised the weights from" in (tmp_path / "run" / "train.log").read_text()
    assert "val/exact_match" in (tmp_path / "run" / "metrics.csv").read_text()
