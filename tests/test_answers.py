"""Tasks with a checkable answer: prompt -> answer examples whose loss is on the answer only, synthetic arithmetic
whose test problems never occur in training, exact match checked by generating each answer, int8 weights."""

import csv
import json
import re
import shutil

import pytest
import torch
from torch import nn

from gpt import IGNORE_INDEX, UserError
from gpt.data.answers import AnswersDataModule
from gpt.data.arithmetic import ArithmeticDataModule
from gpt.data.problems import problems
from gpt.data.tokenizers import CharTokenizer
from gpt.eval.exact_match import score_answers
from gpt.metrics import read_result
from gpt.models.configs import GPTConfig
from gpt.models.generate import GenerationSettings
from gpt.models.interface import TokenModel
from gpt.models.quantize import quantize_int8, weight_bytes

from conftest import run_script

QA = [{"prompt": "2+2=", "answer": "4"}, {"prompt": "10+10=", "answer": "20"}, {"prompt": "7+5=", "answer": "12"},
      {"prompt": "1+1=", "answer": "2"}]


def jsonl(tmp_path, examples, name="qa.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(e) + "\n" if isinstance(e, dict) else e + "\n" for e in examples))
    return path


def test_the_loss_is_on_the_answer_and_its_end_token_only(tmp_path):
    data = AnswersDataModule(text_path=str(jsonl(tmp_path, QA * 5)), cache_dir=str(tmp_path / "cache"), block_size=16, batch_size=4,
                             val_fraction=0.2, bucketing=False)
    data.prepare_data()
    data.setup()
    tok = data.tokenizer
    batch = next(iter(data.val_dataloader()))
    for row in range(len(batch["input_ids"])):
        ids, labels = batch["input_ids"][row].tolist(), batch["labels"][row].tolist()
        text = tok.decode(ids[:int(batch["attention_mask"][row].sum())])
        prompt, answer = text.split("=")[0] + "=", text.split("=")[1].removesuffix("<|endoftext|>")
        predicted = [label for label in labels if label != IGNORE_INDEX]
        assert predicted == tok.encode(answer) + [tok.eot_id]  # the answer's tokens, then the end token
        assert labels[:len(prompt) - 1] == [IGNORE_INDEX] * (len(prompt) - 1)
    assert data.held_out_answers() == [(e["prompt"], e["answer"]) for e in (QA * 5)[16:]]


@pytest.mark.parametrize("line, message", [
    ('{"answer": "4"}', "qa.jsonl:2 has no text under 'prompt'"),
    ('{"prompt": "2+2="}', "qa.jsonl:2 has no text under 'answer'"),
    ('{"prompt": "2+2=", "answer": ""}', "qa.jsonl:2 has an empty answer"),
    ("2+2=4", "qa.jsonl:2 is not a JSON object"),
])
def test_a_bad_jsonl_line_is_named_before_anything_is_written(tmp_path, line, message):
    path = jsonl(tmp_path, [QA[0], line, QA[1]])
    data = AnswersDataModule(text_path=str(path), cache_dir=str(tmp_path / "cache"), block_size=16, batch_size=4)
    with pytest.raises(UserError, match=re.escape(message)):
        data.prepare_data()
    assert not (tmp_path / "cache").exists()


def test_a_prompt_longer_than_the_context_is_refused_and_leaves_no_run(tmp_path):
    path = jsonl(tmp_path, QA * 5)
    result = run_script("train.py", "data=jsonl", f"data.text_path={path}", "model.block_size=6",
                        f"hydra.run.dir={tmp_path / 'run'}", f"paths.data_dir={tmp_path / 'data'}")
    assert result.returncode == 2 and result.stderr.strip() == (
        f"error: 10 example(s) are longer than model.block_size=6 tokens with their end token, the first example 2 "
        f"of {path} (9 tokens); raise model.block_size or shorten them")
    assert not (tmp_path / "run").exists()
    (tmp_path / "mine").mkdir()  # a directory that was there before the command is left alone
    run_script("train.py", "data=jsonl", f"data.text_path={path}", "model.block_size=6",
               f"hydra.run.dir={tmp_path / 'mine'}", f"paths.data_dir={tmp_path / 'data'}")
    assert (tmp_path / "mine" / "train.log").is_file()


def test_test_problems_never_occur_in_training(tmp_path):
    train, test = problems("+", 2, "reversed", 5000, 1000, seed=3)
    assert not {e["prompt"] for e in train} & {e["prompt"] for e in test}
    assert len({e["prompt"] for e in train}) == 5000
    for example in train[:100]:  # "07+12=" -> "910": zero-padded, the sum's digits least significant first
        a, b = map(int, example["prompt"][:-1].split("+"))
        assert len(example["prompt"]) == 6 and example["answer"] == str(a + b).zfill(3)[::-1]
    plain, _ = problems("+", 2, "plain", 10, 10, seed=3, zero_pad=False)
    assert all(e["answer"] == str(sum(map(int, e["prompt"][:-1].split("+")))) for e in plain)
    data = ArithmeticDataModule(cache_dir=str(tmp_path), block_size=16, batch_size=8, digits=2, train_examples=5000, seed=3)
    data.prepare_data()
    tokens, offsets, prepared = data.prepared.example_tokens().tokens, data.prepared.example_offsets, data.prepared
    trained = {data.tokenizer.decode(tokens[offsets[i]:offsets[i] + prepared.prompt_lengths[i]].tolist())
               for i in range(prepared.n_train_examples)}
    assert not trained & {prompt for prompt, _ in data.held_out_answers()} and len(data.held_out_answers()) == 1000


def test_arithmetic_that_cannot_make_enough_problems_is_one_line(tmp_path):
    result = run_script("train.py", "data=arithmetic", "data.digits=1", "data.train_examples=20000",
                        f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2 and result.stderr.strip() == (
        "error: data.digits=1 makes only 100 distinct problems, fewer than data.train_examples=20,000 + "
        "data.test_examples=1,000; use more digits or fewer examples")
    assert not (tmp_path / "run").exists()
    with pytest.raises(UserError, match="data.digits=10 is more than this generator draws; use at most 9 digits"):
        problems("+", 10, "plain", 10, 10, seed=1)


class Oracle(TokenModel):
    """Knows the answer: the next token of ``prompt + answer + end`` for each pair, and ``wrong`` in the answer's
    last place where asked, to check that one wrong digit is not an exact match."""

    def __init__(self, tok, pairs, wrong_last_digit=False):
        super().__init__(GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=1, n_embd=8))
        self.tok, self.weight = tok, nn.Parameter(torch.zeros(1))
        self.texts = {prompt: answer[:-1] + ("9" if wrong_last_digit and answer[-1] != "9" else answer[-1])
                      for prompt, answer in pairs}

    def logits(self, idx, attention_mask=None, positions=None, cache=None):
        logits = torch.full((*idx.shape, self.vocab_size), -1e9)
        for row in range(idx.size(0)):
            real = idx[row][attention_mask[row]] if attention_mask is not None else idx[row]
            text = self.tok.decode(real.tolist())
            prompt = text[:text.index("=") + 1]
            target = self.tok.encode(self.texts[prompt]) + [self.tok.eot_id]
            logits[row, -1, target[min(len(text) - len(prompt), len(target) - 1)]] = 0
        return logits


def test_an_answer_counts_when_it_equals_the_reference_and_ends():
    pairs = [("12+34=", "64"), ("5+5=", "01"), ("999+1=", "0001")]  # reversed sums
    tok = CharTokenizer.fit(["0123456789+="])
    assert score_answers(Oracle(tok, pairs), tok, pairs, batch_size=2) == (1.0, 1.0)
    exact, per_digit = score_answers(Oracle(tok, pairs, wrong_last_digit=True), tok, pairs)
    assert exact == 0.0 and per_digit == pytest.approx(5 / 8)  # every answer has one wrong digit of 2, 2 and 4


def test_int8_weights_take_a_quarter_and_generate_the_same_tokens():
    torch.manual_seed(0)
    model = GPTConfig(vocab_size=68, block_size=64, n_layer=2, n_head=4, n_embd=128).build().eval()
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8]]
    greedy = GenerationSettings(max_new_tokens=20, temperature=0)
    before, fp32_bytes = model.generate(prompts, greedy), weight_bytes(model)
    quantize_int8(model)
    assert model.lm_head.weight is model.wte.weight  # the tied head stays tied, and in float
    blocks = sum(p.numel() * 4 for p in model.blocks.parameters() if p.dim() == 2)
    assert fp32_bytes - weight_bytes(model) > 0.7 * blocks  # the blocks' matrices in int8: a quarter and the scales
    assert model.generate(prompts, greedy) == before


@pytest.fixture(scope="module")
def arithmetic_sweep(tmp_path_factory):
    """The sweep of sweep=arithmetic, two jobs of a tiny model: plain and reversed answers."""
    sweep_dir = tmp_path_factory.mktemp("arithmetic") / "sweep"
    result = run_script("train.py", "-m", "sweep=arithmetic", "data.digits=2", "data.train_examples=2000",
                        "data.test_examples=200", "model.n_layer=1", "model.n_embd=32", "trainer.max_steps=30",
                        "trainer.val_every_n_steps=15", "trainer.enable_progress_bar=false", "data.batch_size=64",
                        "scheduler.warmup_steps=5", f"hydra.sweep.dir={sweep_dir}",
                        f"paths.data_dir={sweep_dir.parent / 'data'}", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return sweep_dir, result


@pytest.mark.smoke
def test_exact_match_is_logged_kept_summarised_and_drawn(arithmetic_sweep):
    sweep_dir, result = arithmetic_sweep
    job = read_result(sweep_dir / "0")
    assert job["monitor"] == "val/exact_match" and 0 <= job["best"] == job["exact_match"] <= 1
    with open(sweep_dir / "0" / "metrics.csv", newline="") as f:
        validations = {int(row["step"]): row for row in csv.DictReader(f) if row["val/exact_match"]}
    at_best = validations[job["best_step"]]  # result.json: the metrics of the best checkpoint's step
    assert job["exact_match"] == pytest.approx(float(at_best["val/exact_match"]))
    assert job["val_loss"] == pytest.approx(float(at_best["val/loss"]))
    assert job["digit_acc"] == pytest.approx(float(at_best["val/digit_acc"]))
    assert "best exact match first" in result.stdout and " exact " in result.stdout
    assert (sweep_dir / "best_exact_match.png").is_file() and (sweep_dir / "exact_match_curves.png").is_file()


def test_sample_prints_the_answer_alone_and_runs_int8(arithmetic_sweep):
    ckpt = arithmetic_sweep[0] / "1" / "checkpoints" / "best.ckpt"
    for extra in ([], ["quantize=int8"]):
        result = run_script("sample.py", f"ckpt_path={ckpt}", "prompt=12+34=", "answer_only=true", "temperature=0",
                            "max_new_tokens=4", *extra)
        assert result.returncode == 0, result.stderr
        answer = result.stdout.rstrip("\n")  # the answer alone
        assert len(answer) <= 4 and "=" not in answer and "<|endoftext|>" not in answer and "sample" not in answer


def test_a_resume_keeps_the_monitor_of_the_best_checkpoint(arithmetic_sweep, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(arithmetic_sweep[0] / "1", run, symlinks=True)
    before = sorted(p.name for p in run.rglob("*"))
    result = run_script("train.py", "data=arithmetic", "model.n_layer=1", "model.n_embd=32", "model.n_head=4",
                        "model.block_size=16", "ckpt_path=last", f"hydra.run.dir={run}")
    assert result.returncode == 2 and result.stderr.strip().endswith(
        "kept its best checkpoint by callbacks.checkpoints.monitor=val/exact_match, not val/loss; resume with the "
        "options it was trained with (its experiment=, if any)")
    assert sorted(p.name for p in run.rglob("*")) == before


def test_the_default_sample_prompt_of_answers_is_a_held_out_prompt(tmp_path):
    result = run_script("train.py", "data=arithmetic", "data.digits=2", "data.train_examples=500",
                        "data.test_examples=20", "model.n_layer=1", "model.n_head=2", "model.n_embd=32",
                        "model.block_size=16", "trainer.max_steps=2", "trainer.enable_progress_bar=false",
                        f"hydra.run.dir={tmp_path / 'run'}", f"paths.data_dir={tmp_path / 'data'}")
    assert result.returncode == 0, result.stderr
    assert re.search(r"sample at step 2: '\d\d\+\d\d=", (tmp_path / "run" / "train.log").read_text())
