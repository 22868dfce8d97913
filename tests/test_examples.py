import json
import logging

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from gpt import UserError
from gpt.data.examples import (Examples, ExamplesDataModule, LengthGroupedSampler, MaskingCollate, PadCollate,
                               padding_fraction, prepare_examples)
from gpt.data.store import PreparedData
from gpt.data.tokenizers import tokenizer_from_dict
from gpt.models.configs import GPTConfig
from gpt.training.objectives import CausalLM, MaskedLM

from conftest import SHAKESPEARE


@pytest.fixture(scope="module")
def paragraphs(tmp_path_factory):
    """Tiny Shakespeare's paragraphs, prepared once: (data module, tokenizer)."""
    dm = ExamplesDataModule(text_path=str(SHAKESPEARE), cache_dir=str(tmp_path_factory.mktemp("data")), block_size=256, batch_size=64)
    dm.prepare_data()
    dm.setup()
    return dm, dm.tokenizer


def test_shakespeare_paragraphs_are_prepared(paragraphs):
    dm, tok = paragraphs
    assert (dm.prepared.meta["examples"], dm.prepared.meta["train_examples"], dm.prepared.meta["skipped_empty"]) == (7222, 6499, 0)
    first = dm.dataset(0, 1)[0][1].tolist()
    assert tok.decode(first) == "First Citizen:\nBefore we proceed any further, hear me speak.<|endoftext|>"


def read_examples(tmp_path, text, example):
    """(the examples of ``text`` as prepared, without their end token; the prepared meta)."""
    (tmp_path / f"{example}.txt").write_text(text)
    meta = prepare_examples(tmp_path / f"{example}.txt", tmp_path / example, example, val_fraction=0.3)
    tok = tokenizer_from_dict(json.loads((tmp_path / example / "tokenizer.json").read_text()))
    data = Examples(PreparedData(tmp_path / example), 0, meta["examples"], block_size=100)
    return [tok.decode(data[i][1].tolist()).removesuffix("<|endoftext|>") for i in range(len(data))], meta


def test_lines_paragraphs_and_documents(tmp_path):
    text = "a b\n\n  \nc\nd\n\n\ne\n"
    lines, meta = read_examples(tmp_path, text, "line")
    assert lines == ["a b", "c", "d", "e"] and meta["skipped_empty"] == 4
    assert read_examples(tmp_path, text, "paragraph")[0] == ["a b", "c\nd", "e"]
    documents, meta = read_examples(tmp_path, "one\n<|endoftext|>\n\n<|endoftext|>two\nlines\n<|endoftext|>",
                                    "document")
    assert documents == ["one", "two\nlines"] and meta["skipped_empty"] == 2


def test_empty_examples_are_counted_in_the_log(tmp_path, caplog):
    (tmp_path / "t.txt").write_text("one\n\ntwo\n\n\nthree\nfour\n")
    dm = ExamplesDataModule(text_path=str(tmp_path / "t.txt"), cache_dir=str(tmp_path), block_size=3, batch_size=2, example="line")
    dm.prepare_data()
    with caplog.at_level(logging.INFO, logger="gpt.data.examples"):
        dm.setup()
    assert "3 train and 1 val lines (3 empty skipped); 4 cut to block_size=3 tokens" in caplog.text


@pytest.mark.parametrize("text, example, message", [
    ("\n\n  \n", "line", "has no lines: all 3 were empty"),
    ("one paragraph\nonly\n", "paragraph", r"has only 1 paragraph\(s\), too few"),
    ("a\n", "sentence", "data.example='sentence' is not a valid option"),
])
def test_texts_without_enough_examples(tmp_path, text, example, message):
    (tmp_path / "t.txt").write_text(text)
    with pytest.raises(UserError, match=message):
        prepare_examples(tmp_path / "t.txt", tmp_path / "out", example)


@pytest.mark.parametrize("options, message", [
    ({"block_size": 1}, "model.block_size must be at least 2 tokens"),
    ({"mlm_probability": 0.0}, "data.mlm_probability must be between 0 and 1"),
    ({"mlm_probability": 1.5}, "data.mlm_probability must be between 0 and 1"),
    ({"mlm_probability": 0.15, "mlm_mask_fraction": 0.9, "mlm_random_fraction": 0.2}, "a sum of at most 1"),
])
def test_bad_options(tmp_path, options, message):
    with pytest.raises(UserError, match=message):
        ExamplesDataModule(text_path=str(SHAKESPEARE), cache_dir=str(tmp_path), **{"block_size": 64, "batch_size": 8, **options})


def test_gpt2_has_no_mask_token_for_a_masked_lm(tmp_path):
    (tmp_path / "t.txt").write_text("To be, or not to be.\n\nThat is the question.\n")
    dm = ExamplesDataModule(text_path=str(tmp_path / "t.txt"), cache_dir=str(tmp_path), block_size=8, batch_size=2,
                          tokenizer="gpt2", mlm_probability=0.15, val_fraction=0.5)
    dm.prepare_data()
    with pytest.raises(UserError, match="the gpt2 tokenizer has no \\[MASK\\] token"):
        dm.setup()


def test_masked_lm_needs_bidirectional_attention():
    config = GPTConfig(vocab_size=68, block_size=8, n_layer=1, n_head=1, n_embd=8)
    with pytest.raises(UserError, match="model.causal=false"):
        MaskedLM(config, optimizer=torch.optim.AdamW)


def test_pad_collate_pads_to_the_longest_and_truncates(paragraphs):
    dm, tok = paragraphs
    data = Examples(dm.prepared, 0, 20, block_size=30)
    examples = [data[i] for i in range(8)]
    batch = PadCollate(tok.pad_id, block_size=30, pad_multiple=1)(examples)
    lengths = [len(tokens) for _, tokens in examples]
    assert batch["input_ids"].shape == (8, max(lengths)) and max(lengths) == 30  # long paragraphs are cut
    assert batch["attention_mask"].sum(1).tolist() == lengths
    for row, (_, tokens) in enumerate(examples):
        n = len(tokens)  # each position's label is the next token; the last token has none
        assert torch.equal(batch["input_ids"][row, :n], tokens) and torch.equal(batch["labels"][row, :n - 1], tokens[1:])
        assert (batch["input_ids"][row, n:] == tok.pad_id).all() and (batch["labels"][row, n - 1:] == -100).all()


def test_batches_are_padded_to_a_few_lengths(paragraphs):
    """Multiples of 64, at most the context: a compiled model sees a handful of shapes, not one per batch."""
    dm, tok = paragraphs
    data = dm.train_dataset()
    widths = {PadCollate(tok.pad_id, block_size=256)([data[i] for i in range(start, start + 8)])["input_ids"].shape[1]
              for start in range(0, 800, 8)}
    assert widths <= {64, 128, 192, 256} and len(widths) > 1


def test_bucketing_cuts_padding_at_batch_64(paragraphs):
    dm, tok = paragraphs
    train = dm.train_dataset()

    def pad_frac(bucketing):
        sampler = LengthGroupedSampler(train.lengths, 64, bucketing=bucketing, seed=0)
        return padding_fraction(DataLoader(train, batch_size=64, sampler=sampler, collate_fn=PadCollate(tok.pad_id, 256, pad_multiple=1)))

    with_buckets, without = pad_frac(True), pad_frac(False)
    assert with_buckets < 0.10 < 0.40 < without


def test_sampler_gives_each_rank_distinct_examples_in_aligned_batches():
    lengths = np.random.default_rng(0).integers(1, 200, size=1001)
    ranks = [LengthGroupedSampler(lengths, 16, seed=5, rank=r, num_replicas=3) for r in range(3)]
    batches = [sampler.batches() for sampler in ranks]
    assert len({len(b) for b in batches}) == 1  # every rank takes as many steps
    seen = [np.concatenate(b) for b in batches]
    assert sum(len(s) for s in seen) == 1002 and set(np.concatenate(seen)) == set(range(1001))  # one repeat
    assert all(len(b) == 16 for b in batches[0][:-1])
    loader = DataLoader(list(range(1001)), batch_size=16, sampler=ranks[1])
    assert [b.tolist() for b in loader] == [b.tolist() for b in batches[1]]  # runs of batch_size are the batches


def test_sampler_reshuffles_per_epoch_and_repeats_with_the_seed():
    lengths = np.arange(500)
    sampler, same = LengthGroupedSampler(lengths, 10, seed=1), LengthGroupedSampler(lengths, 10, seed=1)
    first = list(sampler)
    assert first == list(same) and sorted(first) == list(range(500))
    sampler.set_epoch(1)
    assert list(sampler) != first
    spread = [lengths[b].max() - lengths[b].min() for b in sampler.batches()]
    assert max(spread) < 30  # pools of 50 batches sorted by length: neighbours in a batch
    unsorted = LengthGroupedSampler(lengths, 10, seed=1, bucketing=False).batches()
    assert np.mean([lengths[b].max() - lengths[b].min() for b in unsorted]) > 300


def test_masking_follows_bert_and_is_fresh_each_epoch(paragraphs):
    dm, tok = paragraphs
    data = dm.dataset(0, 512)
    examples = [data[i] for i in range(512)]
    plain = PadCollate(tok.pad_id, 256)(examples)
    epoch = [0]
    collate = MaskingCollate(tok.pad_id, 256, tok.mask_id, tok.special_ids, tok.vocab_size, epoch=lambda: epoch[0])
    batch = collate(examples)
    original, real = plain["input_ids"], plain["attention_mask"]
    chosen = batch["labels"] != -100
    maskable = real & (original != tok.eot_id)
    assert not (chosen & ~maskable).any()  # never padding or special tokens
    assert torch.equal(batch["labels"][chosen], original[chosen])
    assert chosen.sum() / maskable.sum() == pytest.approx(0.15, abs=0.01)
    inputs = batch["input_ids"]
    assert torch.equal(inputs[~chosen], original[~chosen])
    became_mask = (inputs[chosen] == tok.mask_id).float().mean()
    stayed = (inputs[chosen] == original[chosen]).float().mean()
    assert became_mask == pytest.approx(0.8, abs=0.02) and stayed == pytest.approx(0.1 + 0.1 / 65, abs=0.02)
    assert not torch.isin(inputs[chosen & (inputs != tok.mask_id)], torch.tensor(sorted(tok.special_ids))).any()
    assert torch.equal(collate(examples)["labels"], batch["labels"])  # within an epoch: a function of the example
    epoch[0] = 1
    assert not torch.equal(collate(examples)["labels"], batch["labels"])  # dynamic: new masks every epoch


def test_seeded_masking_is_the_same_for_an_example_in_any_batch(paragraphs):
    dm, tok = paragraphs
    data = dm.dataset(0, 64)
    collate = MaskingCollate(tok.pad_id, 256, tok.mask_id, tok.special_ids, tok.vocab_size, seed=3)
    alone = collate([data[5]])
    together = collate([data[i] for i in (9, 5, 40)])
    n = len(data[5][1])
    assert torch.equal(together["input_ids"][1, :n], alone["input_ids"][0, :n])
    assert torch.equal(together["labels"][1, :n], alone["labels"][0, :n])


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_outputs_do_not_depend_on_padding(paragraphs, causal, pos):
    """A paragraph's logits at its real positions are the same alone or padded next to longer ones."""
    dm, tok = paragraphs
    torch.manual_seed(0)
    model = GPTConfig(vocab_size=tok.vocab_size, block_size=256, n_layer=1, n_head=2, n_embd=32, causal=causal,
                      pos=pos).build().eval()
    data = dm.dataset(0, 40)
    examples = sorted((data[i] for i in range(40)), key=lambda e: len(e[1]))[::8]  # short to long
    batch = PadCollate(tok.pad_id, 256)(examples)
    with torch.no_grad():
        padded = model(batch["input_ids"], attention_mask=batch["attention_mask"])
        for row, (_, tokens) in enumerate(examples):
            alone = model(tokens[None])[0]
            assert torch.allclose(padded[row, :len(tokens)], alone, atol=1e-5)


def test_objective_and_batches_must_match(tmp_path):
    def lm(cls, causal=True, block_size=64):
        config = GPTConfig(vocab_size=68, block_size=block_size, n_layer=1, n_head=1, n_embd=8, causal=causal)
        return cls(config, optimizer=torch.optim.AdamW)

    def data(**options):
        return ExamplesDataModule(text_path=str(SHAKESPEARE), cache_dir=str(tmp_path), **{"block_size": 64, "batch_size": 8, **options})

    with pytest.raises(UserError, match="makes masked-LM batches, but the LM is causal"):
        lm(CausalLM).check_data(data(mlm_probability=0.15))
    with pytest.raises(UserError, match="lm=masked needs masked batches"):
        lm(MaskedLM, causal=False).check_data(data())
    with pytest.raises(UserError, match="lm=causal needs a model with causal attention"):
        lm(CausalLM, causal=False)
    lm(MaskedLM, causal=False).check_data(data(mlm_probability=0.15))
