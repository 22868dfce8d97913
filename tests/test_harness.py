"""lm-evaluation-harness on our checkpoints (``gpt.eval.harness``): the same tasks through lm-eval's own ``hf``
backend on the checkpoint's Hugging Face export give the same log-likelihoods, accuracies and greedy generations;
its command line runs our tasks offline; bad input is one line. Real checkpoints, real lm-eval runs, local data."""

import json
import subprocess
import sys

import pytest

from gpt import UserError

from conftest import REPO

lm_eval = pytest.importorskip("lm_eval", reason='lm-evaluation-harness is the extra ".[eval]"')


def our_tasks():
    """The tasks of data/eval/harness/ alone: indexing lm-eval's own thousands of tasks takes 15 s."""
    from lm_eval.tasks import TaskManager

    from gpt.eval.harness import HARNESS_TASKS

    return TaskManager(include_path=str(HARNESS_TASKS), include_defaults=False)


def comus_continuations(**_):
    """A generation task over comus_cloze's contexts: the greedy next line, up to its newline."""
    import datasets

    lines = (REPO / "data" / "eval" / "comus_cloze.jsonl").read_text().splitlines()
    return {"test": datasets.Dataset.from_list([json.loads(line) for line in lines])}


GENERATION_TASK = {"task": "comus_next_line", "custom_dataset": comus_continuations, "output_type": "generate_until",
                   "test_split": "test", "doc_to_text": "{{context}}", "doc_to_target": "{{choices[label]}}",
                   "generation_kwargs": {"until": ["\n"], "do_sample": False, "max_gen_toks": 24},
                   "metric_list": [{"metric": "exact_match"}]}


def responses(result: dict, task: str) -> list:
    """Every response of every sample of ``task``: (log-likelihood, is greedy) pairs, sums or generated texts."""
    return [response for sample in result["samples"][task] for response in sample["filtered_resps"]]


def test_our_model_scores_as_the_hf_backend_scores_its_export(tiny_run, tmp_path):
    """The tiny run's model with its context made long enough for every item (lm-eval's hf backend refuses a
    continuation longer than the context, which ours crops): its 32 learned positions repeated to 256."""
    from dataclasses import replace

    from gpt.data.hf import save_hf
    from gpt.eval.harness import HarnessModel
    from gpt.training.checkpoint import model_from_checkpoint

    trained, tokenizer, _ = model_from_checkpoint(tiny_run / "checkpoints" / "best.ckpt")
    model = replace(trained.config, block_size=256).build()
    state = trained.state_dict()
    model.load_state_dict({**state, "wpe.weight": state["wpe.weight"].repeat(256 // trained.block_size, 1)})
    save_hf(model, tokenizer, tmp_path / "hf")
    tasks = ["comus_cloze", "comus", GENERATION_TASK]
    results = {name: lm_eval.simple_evaluate(model=model, model_args=args, tasks=tasks, limit=30, batch_size=8,
                                             device="cpu", log_samples=True,
                                             task_manager=our_tasks())
               for name, model, args in [("gpt", HarnessModel.from_model(model, tokenizer, batch_size=8), None),
                                         ("hf", "hf", {"pretrained": str(tmp_path / "hf")})]}
    ours, theirs = results["gpt"], results["hf"]
    for task in ("comus_cloze", "comus"):
        for mine, hf in zip(responses(ours, task), responses(theirs, task), strict=True):
            mine, hf = (mine, hf) if isinstance(mine, tuple) else ((mine, None), (hf, None))
            assert mine[0] == pytest.approx(hf[0], abs=1e-4) and mine[1] == hf[1]
    assert len(responses(ours, "comus_cloze")) == 4 * 30  # four choices of each item
    texts = responses(ours, "comus_next_line")
    assert texts == responses(theirs, "comus_next_line") and any(texts)
    for task, metrics in ours["results"].items():
        for metric in ("acc,none", "acc_norm,none", "bits_per_byte,none", "exact_match,none"):
            assert metrics.get(metric) == pytest.approx(theirs["results"][task].get(metric), abs=1e-6)


def test_the_command_line_runs_our_checkpoint_on_our_tasks_from_any_directory(tiny_run, tmp_path):
    """lm-eval's own command line (its options, its table, its results file), run from outside the repository."""
    checkpoint = tiny_run / "checkpoints" / "best.ckpt"
    result = subprocess.run([sys.executable, "-m", "gpt.eval.harness", "--model", "gpt", "--model_args",
                             f"ckpt_path={checkpoint}", "--tasks", "comus_cloze", "--limit", "8", "--output_path",
                             str(tmp_path)], check=False, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "comus_cloze" in result.stdout and "acc_norm" in result.stdout
    [written] = tmp_path.rglob("results_*.json")
    assert 0 <= json.loads(written.read_text())["results"]["comus_cloze"]["acc_norm,none"] <= 1


def test_gpt2_weights_load_with_their_shape_and_gpt2_tokens(tmp_path):
    """Hugging Face GPT-2 weights (here a small GPT-2 of heads of 64, as export.py writes it) load as our GPT with
    GPT-2's tokenizer, and score as the model they came from."""
    import torch

    from gpt.data.hf import save_hf
    from gpt.data.tokenizers import fit_tokenizer
    from gpt.eval.harness import HarnessModel
    from gpt.models.transformer import GPTConfig

    tokenizer = fit_tokenizer("gpt2", [])
    torch.manual_seed(0)
    model = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=48, n_layer=2, n_head=2, n_embd=128,
                      pad_vocab_multiple=64, mlp="gelu_tanh").build().eval()
    save_hf(model, tokenizer, tmp_path)
    loaded = HarnessModel(gpt2_weights=str(tmp_path))
    assert (loaded.model.block_size, loaded.model.config.n_layer, loaded.model.config.n_head) == (48, 2, 2)
    requests = [(tokenizer.encode("To be, or not"), tokenizer.encode(" to be"))]
    assert loaded._loglikelihood_tokens([(None, *r) for r in requests]) == \
        HarnessModel.from_model(model, tokenizer)._loglikelihood_tokens([(None, *r) for r in requests])


@pytest.mark.parametrize("args, message", [
    ({}, "needs one of --model_args ckpt_path="),
    ({"ckpt_path": "a.ckpt", "gpt2_weights": "hf"}, "needs one of --model_args ckpt_path="),
    ({"gpt2_weights": "no/such/dir"}, "Hugging Face weights not found"),
    ({"ckpt_path": "no/such.ckpt"}, "no/such.ckpt"),
])
def test_model_arguments_that_cannot_work_are_one_line(args, message):
    from gpt.eval.harness import HarnessModel

    with pytest.raises(UserError, match=message):
        HarnessModel(**args)


@pytest.mark.slow  # GPT-2 124M on HellaSwag's 40,168 requests: hours on two CPU cores
@pytest.mark.skipif(not (REPO / "data" / "eval" / "hellaswag" / "hellaswag_val.jsonl").exists()
                    or not (REPO / "data" / "hf-gpt2").exists(),
                    reason="needs data/eval/hellaswag/hellaswag_val.jsonl and GPT-2's weights in data/hf-gpt2")
def test_gpt2_124m_scores_hellaswag_as_published():
    result = lm_eval.simple_evaluate(model="gpt", model_args={"gpt2_weights": str(REPO / "data" / "hf-gpt2")},
                                     tasks=["hellaswag_local"], batch_size=32, task_manager=our_tasks())
    assert result["results"]["hellaswag_local"]["acc_norm,none"] == pytest.approx(0.311, abs=0.005)
