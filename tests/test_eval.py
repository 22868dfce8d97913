"""Evaluation beyond the validation loss: val/bpb in every causal run, and eval.py's tasks over the shipped local
files (bits per byte in rolling windows, multiple choice scored as lm-evaluation-harness scores HellaSwag, exact
match of answers), with one line for each bad input. Real checkpoints, real processes."""

import csv
import json
import math

import pytest
import torch
from torch.nn import functional as F

from gpt import IGNORE_INDEX, UserError
from gpt.data.tokenizers import CharTokenizer
from gpt.eval.tasks import MultipleChoice, Perplexity, continuation_logprobs, load_task, rolling_windows
from gpt.models.transformer import GPTConfig
from gpt.training.checkpoint import model_from_checkpoint
from gpt.training.objectives import CausalLM

from conftest import REPO, run_script, train_tiny
from test_safety import one_error_line
from test_untrusted_checkpoints import craft, record_field


def test_bits_per_byte_counts_the_bytes_of_the_text_and_leaves_out_special_tokens():
    tokenizer = CharTokenizer("aé")  # 'a' is one byte, 'é' two; then the special tokens, which stand for no text
    lm = CausalLM(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=8, n_layer=1, n_head=1, n_embd=8),
                  optimizer=torch.optim.AdamW, tokenizer=tokenizer)
    logits = torch.randn(1, 4, tokenizer.vocab_size)
    labels = torch.tensor([[0, 1, tokenizer.eot_id, IGNORE_INDEX]])
    logged = {}
    lm.log = lambda name, value, batch_size, **_: logged.update({name: (float(value), batch_size)})
    lm.log_bits_per_byte(logits, labels)
    nats = F.cross_entropy(logits[0, :2], labels[0, :2], reduction="sum")
    assert logged["val/bpb"] == pytest.approx((float(nats) / math.log(2) / 3, 3))


def test_a_run_logs_bits_per_byte_beside_its_loss(tiny_run):
    with open(tiny_run / "metrics.csv") as f:
        rows = [row for row in csv.DictReader(f) if row["val/loss"]]
    # a char of Tiny Shakespeare is one byte: bits per byte is the loss in bits, but for the end-of-text token
    assert all(float(r["val/bpb"]) == pytest.approx(float(r["val/loss"]) / math.log(2), rel=2e-3) for r in rows)
    assert "bpb" in json.loads((tiny_run / "result.json").read_text())


def test_rolling_windows_score_every_token_once_with_at_least_half_a_context():
    for n_tokens in (2, 17, 64, 65, 1000):
        windows = rolling_windows(n_tokens, block_size=32, stride=16)
        scored = [t for _, end, scored_from in windows for t in range(scored_from + 1, end + 1)]
        assert scored == list(range(1, n_tokens))
        assert all(end - begin <= 32 for begin, end, _ in windows)
        assert all(scored_from - begin >= 16 for begin, _, scored_from in windows[1:])


def test_choices_are_scored_in_batches_as_one_at_a_time(tiny_run):
    model, tokenizer, _ = model_from_checkpoint(tiny_run / "checkpoints" / "best.ckpt")
    requests = [(tokenizer.encode(context), tokenizer.encode(choice)) for context, choice in
                [("ROMEO:\n", "Good morrow."), ("To be, or not to be", " that is"), ("A" * 40, "B" * 3)]]
    batched = continuation_logprobs(model, requests, batch_size=3)
    for (context, choice), (logprob, _) in zip(requests, batched):
        row = (context + choice)[-(model.block_size + 1):]
        with torch.no_grad():
            logprobs = torch.log_softmax(model(torch.tensor([row[:-1]])), dim=-1)[0]
        alone = sum(float(logprobs[len(row) - 1 - len(choice) + k, token]) for k, token in enumerate(choice))
        assert logprob == pytest.approx(alone, abs=1e-4)


def test_eval_scores_the_shipped_tasks_that_fit_a_checkpoint_and_writes_them(tiny_run, tmp_path):
    out = tmp_path / "eval.json"
    result = run_script("eval.py", f"ckpt_path={tiny_run / 'checkpoints' / 'best.ckpt'}", f"out_path={out}")
    assert result.returncode == 0, result.stderr[-2000:]
    [row] = json.loads(out.read_text())
    assert set(row) == {"checkpoint", "comus/bpb", "comus/loss", "comus/ppl", "comus/tokens", "comus_cloze/acc",
                        "comus_cloze/acc_norm", "comus_cloze/items"}  # not addition: the char vocabulary lacks digits
    assert row["comus/tokens"] == len((REPO / "data" / "eval" / "comus.txt").read_bytes()) - 1
    assert row["comus/bpb"] == pytest.approx(row["comus/loss"] / math.log(2))  # an ASCII text, a char tokenizer
    assert row["comus_cloze/items"] == 200 and 0 <= row["comus_cloze/acc_norm"] <= 1
    header, values = result.stdout.splitlines()[:2]
    assert header.split()[:3] == ["checkpoint", "comus/bpb", "comus/loss"]
    assert values.split()[1] == f"{row['comus/bpb']:.4f}"


@pytest.mark.parametrize("line, message", [
    ('{"context": "a", "choices": ["b", "c"]}', '"label" must be the index of the right choice, 0 to 1, got None'),
    ('{"context": "a", "choices": ["b", "c"], "label": 2}', '"label" must be the index of the right choice, 0 to 1'),
    ('{"context": "a", "label": 0}', 'needs "context" and "choices" (two or more), non-empty texts'),
    ('{"context": "a", "choices": ["b"], "label": 0}', 'needs "context" and "choices" (two or more)'),
    ("not json", "is not JSON"),
])
def test_a_bad_multiple_choice_line_is_refused_by_its_line(tmp_path, line, message):
    path = tmp_path / "items.jsonl"
    path.write_text('{"context": "x", "choices": ["y", "z"], "label": 1}\n' + line + "\n")
    with pytest.raises(UserError, match="task choices: .*items.jsonl line 2") as error:
        MultipleChoice(str(path), "choices").items  # noqa: B018 (reading it parses the file)
    assert message in str(error.value)


def test_a_task_fits_the_tokenizers_that_can_write_its_prompts_and_answers():
    addition, comus = (load_task(name) for name in ("addition", "comus"))
    digits = CharTokenizer("+0123456789=")  # the vocabulary of experiment=addition, and its end token
    assert addition.fits(digits) and not comus.fits(digits)
    assert not addition.fits(CharTokenizer("+0123456789=", specials=()))  # no end token: an answer never ends


def test_a_text_outside_the_char_vocabulary_is_one_line(tiny_run, tmp_path):
    model, tokenizer, _ = model_from_checkpoint(tiny_run / "checkpoints" / "best.ckpt")
    (tmp_path / "accents.txt").write_text("Où est la gare? Ça va.")
    with pytest.raises(UserError, match="task text: .*accents.txt: characters not in the tokenizer's vocabulary: "
                                        "'Çù'"):
        Perplexity(str(tmp_path / "accents.txt"), "text").score(model, tokenizer, batch_size=4)


@pytest.mark.parametrize("args, message", [
    (["tasks=[hellaswag]"], "error: task hellaswag does not exist; choose from addition, comus, comus_cloze"),
    (["tasks=[addition]"], "error: task addition: "),  # the char vocabulary of Shakespeare has no digits but 3
    (["text_file=/nonexistent.txt"], "error: task text: its data file /nonexistent.txt does not exist; give "
                                     "text_file=<an existing file>"),
    (["masked"], "is a masked LM: these tasks score a causal LM's next-token predictions"),
])
def test_bad_tasks_and_checkpoints_are_one_line(tiny_run, tmp_path, args, message):
    checkpoint = tiny_run / "checkpoints" / "best.ckpt"
    if args == ["masked"]:
        checkpoint, args = craft(checkpoint, tmp_path / "masked.ckpt", record_field("causal", False)), []
    result = run_script("eval.py", f"ckpt_path={checkpoint}", f"out_path={tmp_path / 'eval.json'}", *args)
    assert message in one_error_line(result)
    assert not (tmp_path / "eval.json").exists()


def test_tasks_scored_at_each_validation_keep_the_best_checkpoint_and_rank_it(tmp_path):
    refused = train_tiny(tmp_path / "refused", "callbacks.eval_tasks.tasks=[hellaswag]")
    assert one_error_line(refused, only_line=True) == (
        "error: callbacks.eval_tasks.tasks must be a list of tasks of conf/eval/, got ['hellaswag']; the tasks are "
        "addition, comus, comus_cloze")
    run = tmp_path / "run"
    result = train_tiny(run, "callbacks.eval_tasks.tasks=[comus_cloze]",
                        "callbacks.checkpoints.monitor=eval/comus_cloze/acc_norm")
    assert result.returncode == 0, result.stderr[-2000:]
    with open(run / "metrics.csv") as f:
        scores = [float(row["eval/comus_cloze/acc_norm"]) for row in csv.DictReader(f) if row["eval/comus_cloze/acc"]]
    assert len(scores) == 2  # steps 30 and 60
    kept = json.loads((run / "result.json").read_text())
    assert kept["monitor"] == "eval/comus_cloze/acc_norm" and kept["mode"] == "max" and kept["best"] == max(scores)


def test_an_optuna_sweep_knows_which_way_a_task_metric_is_better_before_any_library_loads():
    from gpt.cli.checks import TRAIN
    from gpt.cli.command_line import check_command_line, check_train
    from gpt.metrics import direction

    check_command_line("train", TRAIN, ["-m", "sweep=optuna", "callbacks.eval_tasks.tasks=[comus,comus_cloze]",
                                        "callbacks.checkpoints.monitor=eval/comus_cloze/acc_norm"], also=check_train)
    assert direction("eval/comus_cloze/acc_norm") == "maximize" and direction("eval/comus/bpb") == "minimize"
