"""Preference training: comparison pairs (data=pairs) and DPO (lm=dpo) from an SFT checkpoint, which is the frozen
reference. The losses against their papers' formulas on log-probabilities worked out by hand; a real SFT run, then
a real DPO run from it; bad pairs and a DPO without its reference refused in one line."""

import csv
import json
import math

import pytest
import torch

from gpt import UserError
from gpt.data.pairs import prepare_pairs
from gpt.data.problems import problems
from gpt.models.transformer import GPTConfig
from gpt.training.objectives import DPO, dpo_loss

from conftest import TINY_GPT, run_script
from serving import serving
from test_safety import one_error_line


def train(run_dir, *overrides: str):
    """A short run of the tiny model on examples of JSONL files (no windows to validate on)."""
    return run_script("train.py", *TINY_GPT, "trainer.max_steps=40", "trainer.val_every_n_steps=20",
                      "scheduler.warmup_steps=5", "trainer.enable_progress_bar=false", f"hydra.run.dir={run_dir}",
                      f"paths.data_dir={run_dir.parent / 'data'}", *overrides)


def test_dpo_and_ipo_losses_are_their_papers_formulas():
    # two pairs: log-probs of the chosen and rejected completions under the policy and the reference
    policy_chosen, policy_rejected = torch.tensor([-3.0, -5.0]), torch.tensor([-4.0, -2.0])
    reference_chosen, reference_rejected = torch.tensor([-3.5, -4.0]), torch.tensor([-3.0, -2.5])
    # the log-ratio margins h: (-3 + 3.5) - (-4 + 3) = 1.5 and (-5 + 4) - (-2 + 2.5) = -1.5
    loss, chosen, rejected = dpo_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta=0.5)
    expected = (math.log(1 + math.exp(-0.75)) + math.log(1 + math.exp(0.75))) / 2  # -log sigmoid(beta h)
    assert float(loss) == pytest.approx(expected)
    assert chosen.tolist() == pytest.approx([0.25, -0.5]) and rejected.tolist() == pytest.approx([-0.5, 0.25])
    loss, _, _ = dpo_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta=0.5, loss="ipo")
    assert float(loss) == pytest.approx(((1.5 - 1) ** 2 + (-1.5 - 1) ** 2) / 2)  # (h - 1 / (2 beta))^2
    with pytest.raises(UserError, match="lm.loss=kto is not a preference loss; choose one of sigmoid, ipo"):
        DPO(GPTConfig(vocab_size=8, block_size=8, n_layer=1, n_head=1, n_embd=8), optimizer=torch.optim.AdamW,
            loss="kto")


def addition_pairs(count: int, seed: int) -> list[dict]:
    """Pairs of 2-digit additions: the sum chosen, the sum that babbles on (``+1`` after it) rejected."""
    rng = torch.Generator().manual_seed(seed)
    return [{"prompt": f"{a}+{b}=", "chosen": str(a + b), "rejected": f"{a + b}+1"}
            for a, b in torch.randint(0, 100, (count, 2), generator=rng).tolist()]


@pytest.fixture(scope="module")
def sft_and_pairs(tmp_path_factory) -> tuple:
    """An SFT checkpoint of 2-digit additions (data=jsonl) and comparison pairs of other additions."""
    root = tmp_path_factory.mktemp("preferences")
    sft_data = root / "sft.jsonl"
    sft_data.write_text("".join(json.dumps({"prompt": p["prompt"], "answer": p["chosen"]}) + "\n"
                                for p in addition_pairs(600, seed=0)))
    sft = train(root / "sft", "data=jsonl", f"data.text_path={sft_data}", "data.batch_size=32", "trainer.max_steps=20")
    assert sft.returncode == 0, sft.stderr[-2000:]
    pairs = root / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(p) + "\n" for p in addition_pairs(600, seed=1)))
    return root / "sft" / "checkpoints" / "best.ckpt", sft_data, pairs


def test_dpo_from_an_sft_checkpoint_learns_to_prefer_the_chosen_answers(sft_and_pairs, tmp_path):
    checkpoint, _, pairs = sft_and_pairs
    run = tmp_path / "dpo"
    dpo = train(run, "lm=dpo", f"data.text_path={pairs}", "data.batch_size=16", "optim.lr=1e-3",
                f"init_from={checkpoint}")
    assert dpo.returncode == 0, dpo.stderr[-2000:]
    with open(run / "metrics.csv") as f:
        rows = [row for row in csv.DictReader(f)]
    validations = [row for row in rows if row.get("val/reward_acc")]
    assert {"val/margin", "val/chosen_logp", "val/rejected_logp", "val/exact_match"} <= set(rows[0])
    # at the start the policy is the reference: every reward is 0 and the loss log 2; DPO moves them apart
    assert float(validations[-1]["val/loss"]) < math.log(2) and float(validations[-1]["val/margin"]) > 0
    assert float(validations[-1]["val/reward_acc"]) > 0.9
    assert (run / "checkpoints" / "best.ckpt").is_file()


def test_a_reward_model_learns_the_pairs_scores_completions_and_rewards_rl(sft_and_pairs, tmp_path):
    checkpoint, sft_data, pairs = sft_and_pairs
    run = tmp_path / "reward"
    result = train(run, "lm=reward", f"data.text_path={pairs}", "data.batch_size=16", "optim.lr=1e-3",
                   f"init_from={checkpoint}", "callbacks.checkpoints.monitor=val/pair_acc")
    assert result.returncode == 0, result.stderr[-2000:]
    with open(run / "metrics.csv") as f:
        validations = [row for row in csv.DictReader(f) if row.get("val/pair_acc")]
    assert float(validations[-1]["val/pair_acc"]) > 0.9 and float(validations[-1]["val/loss"]) < math.log(2)
    assert not any(row.get("val/exact_match") for row in validations)  # a reward model writes no answers
    reward_model = run / "checkpoints" / "best.ckpt"
    scores = []
    for completion in ("46", "46+1"):
        scored = run_script("sample.py", f"ckpt_path={reward_model}", 'prompt=["12+34=","50+7="]',
                            f"completion={completion}")
        assert scored.returncode == 0, scored.stderr[-2000:]
        lines = [line.split("\t") for line in scored.stdout.splitlines()]
        assert [text for _, text in lines] == [f"12+34={completion}", f"50+7={completion}"]
        scores.append([float(score) for score, _ in lines])
    assert all(right > babbling for right, babbling in zip(*scores))  # as the pairs taught it
    with serving(reward_model) as server:  # the score endpoint gives sample.py's scores
        for completion, expected in zip(("46", "46+1"), scores):
            served = server.post("/v1/score", {"prompt": ["12+34=", "50+7="], "completion": completion}).json()
            assert served["scores"] == pytest.approx(expected, abs=1e-4)
    refused = run_script("sample.py", f"ckpt_path={reward_model}", "prompt=12+34=")
    assert refused.returncode == 2 and "is a reward model, which scores completions" in one_error_line(refused)
    rl = train(tmp_path / "rl", "lm=grpo", "data=jsonl", f"data.text_path={sft_data}", f"init_from={checkpoint}",
               "lm.group_size=2", "data.batch_size=8", "trainer.max_steps=2", "trainer.log_every_n_steps=1",
               "lm.reward._target_=gpt.training.reward_model.RewardModelScore", f"+lm.reward.ckpt_path={reward_model}")
    assert rl.returncode == 0, rl.stderr[-2000:]


def test_the_server_answers_the_last_user_message_of_a_chat(sft_and_pairs):
    with serving(sft_and_pairs[0]) as server:
        assert server.get("/v1/models").json()["data"][0]["kind"] == "answers"
        completion = server.post("/v1/completions", {"prompt": "12+34=", "temperature": 0, "max_tokens": 6}).json()
        messages = [{"role": "system", "content": "You add numbers."}, {"role": "user", "content": "12+34="}]
        chat = server.post("/v1/chat/completions", {"messages": messages, "temperature": 0, "max_tokens": 6}).json()
        assert chat["choices"][0]["message"]["content"] == completion["choices"][0]["text"]


def test_pairs_whose_completions_are_the_same_are_refused_by_line(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"prompt": "1+1=", "chosen": "2", "rejected": "3"}\n'
                     '{"prompt": "2+2=", "chosen": "4", "rejected": "4"}\n')
    with pytest.raises(UserError, match=r"pairs.jsonl:2: its chosen and rejected completions are the same"):
        prepare_pairs(pairs, tmp_path / "out")
    pairs.write_text('{"prompt": "1+1=", "chosen": "2"}\n')
    with pytest.raises(UserError, match=r"pairs.jsonl:1 is not a comparison"):
        prepare_pairs(pairs, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_dpo_without_the_checkpoint_it_starts_from_is_one_line(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"prompt": "1+1=", "chosen": "2", "rejected": "3"}\n')
    result = train(tmp_path / "run", "lm=dpo", f"data.text_path={pairs}")
    assert result.returncode == 2 and "lm=dpo needs init_from=" in one_error_line(result)
    assert not (tmp_path / "run").exists()


def test_make_pairs_samples_training_problems_only_and_its_pairs_train_dpo(tmp_path):
    arithmetic = ["data=arithmetic", "data.digits=1", "data.train_examples=80", "data.test_examples=20",
                  f"paths.data_dir={tmp_path / 'data'}"]
    sft = train(tmp_path / "sft", *arithmetic, "data.batch_size=16")
    assert sft.returncode == 0, sft.stderr[-2000:]
    out = tmp_path / "pairs.jsonl"
    made = run_script("make_pairs.py", f"ckpt_path={tmp_path / 'sft' / 'checkpoints' / 'best.ckpt'}", *arithmetic,
                      f"out_path={out}")
    assert made.returncode == 0, made.stderr[-2000:]
    assert made.stdout.startswith("80 problems x 8 samples: ") and f"pairs; wrote {out}" in made.stdout
    train_problems, test_problems = problems("+", 1, "reversed", 80, 20, seed=1337)
    answers = {p["prompt"]: p["answer"] for p in train_problems}
    pairs = [json.loads(line) for line in out.read_text().splitlines()]
    assert pairs and all(p["prompt"] in answers and p["chosen"] == answers[p["prompt"]] != p["rejected"]
                         for p in pairs)
    assert not {p["prompt"] for p in pairs} & {p["prompt"] for p in test_problems}
    assert prepare_pairs(out, tmp_path / "prepared")["examples"] == 2 * len(pairs)
    held_out = tmp_path / "val_pairs.jsonl"
    made = run_script("make_pairs.py", f"ckpt_path={tmp_path / 'sft' / 'checkpoints' / 'best.ckpt'}", *arithmetic,
                      f"out_path={held_out}", "held_out=true", "problems=10")
    assert made.returncode == 0 and made.stdout.startswith("10 problems x 8 samples: "), made.stderr[-2000:]
    test_answers = {p["prompt"]: p["answer"] for p in test_problems[:10]}
    assert all(test_answers[p["prompt"]] == p["chosen"] for p in map(json.loads, held_out.read_text().splitlines()))


@pytest.mark.parametrize("args, message", [
    (["samples=1"], "samples must be an integer of at least 2, got 1"),
    (["data=text", "data.text_path=data/tinyshakespeare.txt"], "make_pairs.py needs data with answers to check"),
])
def test_make_pairs_mistakes_are_one_line(tiny_run, tmp_path, args, message):
    result = run_script("make_pairs.py", f"ckpt_path={tiny_run / 'checkpoints' / 'best.ckpt'}",
                        f"out_path={tmp_path / 'pairs.jsonl'}", f"paths.data_dir={tiny_run.parent / 'data'}", *args)
    assert result.returncode == 2 and message in one_error_line(result)
    assert not (tmp_path / "pairs.jsonl").exists()
