"""Reinforcement learning with a checkable reward (lm=grpo): the advantages and PPO's clipped objective against
values worked out by hand; real runs from a real SFT checkpoint of 1-digit additions: what they log, an exact
resume in the middle of a reused rollout, two DDP processes sampling their own prompts; bad input in one line."""

import csv
import json

import pytest
import torch

from gpt import IGNORE_INDEX, UserError
from gpt.metrics import read_result
from gpt.models.transformer import GPTConfig
from gpt.training.grpo import GRPO, checked_rollout, clipped_surrogate, group_advantages, rollout_rows
from gpt.training.rewards import checked_rewards
from gpt.training.run import train

from conftest import TINY_GPT, compose_train, run_script
from test_safety import one_error_line

ADDITIONS = ["data=arithmetic", "data.digits=1", "data.train_examples=80", "data.test_examples=20",
             "data.batch_size=16", "trainer.enable_progress_bar=false", "callbacks.text_samples=null"]


def test_group_advantages_by_hand():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    # group 1: mean 0.5, standard deviation sqrt(4 * 0.25 / 3); group 2: all equal, no signal
    std = (1 / 3) ** 0.5
    assert group_advantages(rewards, "grpo").tolist() == pytest.approx(
        [0.5 / std, -0.5 / std, -0.5 / std, 0.5 / std, 0, 0, 0, 0], abs=1e-3)
    # leave-one-out: each reward minus the mean of the group's other three
    assert group_advantages(rewards, "rloo").tolist() == pytest.approx([2 / 3, -2 / 3, -2 / 3, 2 / 3, 0, 0, 0, 0])


def test_clipped_surrogate_by_hand():
    old = torch.zeros(4, 1)
    logprobs = torch.log(torch.tensor([[1.5], [0.5], [1.5], [0.5]]))  # ratios 1.5, 0.5, 1.5, 0.5
    advantages = torch.tensor([1.0, 1.0, -1.0, -1.0])
    # min(r A, clip(r, 0.8, 1.2) A): the clip caps a gain, never hides a loss
    assert clipped_surrogate(logprobs, old, advantages, 0.2).flatten().tolist() == pytest.approx([1.2, 0.5, -1.5, -0.8])


def test_a_rollout_labels_only_the_completion():
    ids, labels = rollout_rows([[5, 6, 7, 1], [5, 6, 8, 9, 1]], [2, 2], width=8, pad_id=0)
    assert ids.tolist() == [[5, 6, 7, 1, 0, 0, 0, 0], [5, 6, 8, 9, 1, 0, 0, 0]]
    x = IGNORE_INDEX
    assert labels.tolist() == [[x, 7, 1, x, x, x, x, x], [x, 8, 9, 1, x, x, x, x]]


def test_rewards_and_groups_that_cannot_work_are_refused():
    with pytest.raises(UserError, match=r"returned 'right' for a completion, not a finite number"):
        checked_rewards(["right"], 1, print)
    with pytest.raises(UserError, match=r"not a list of 2 numbers"):
        checked_rewards([1.0], 2, print)
    assert checked_rewards([True, 0, 0.5], 3, print) == [1.0, 0.0, 0.5]
    config = GPTConfig(vocab_size=8, block_size=8, n_layer=1, n_head=1, n_embd=8)
    with pytest.raises(UserError, match=r"lm.group_size=1: the advantage compares a prompt's completions"):
        GRPO(config, optimizer=torch.optim.AdamW, group_size=1)


@pytest.fixture(scope="module")
def sft(tmp_path_factory) -> tuple:
    """An SFT checkpoint of 1-digit additions, and the data directory it prepared."""
    root = tmp_path_factory.mktemp("grpo")
    data = f"paths.data_dir={root / 'data'}"
    train(compose_train(*TINY_GPT, *ADDITIONS, data, "trainer.max_steps=150", "trainer.val_every_n_steps=150",
                        "optim.lr=3e-3", tmp_path=root / "sft"))
    return root / "sft" / "checkpoints" / "best.ckpt", data


def test_its_starting_point_trains_until_exact_match_passes_a_threshold(tmp_path):
    """experiment=addition_weak trains until its held-out exact match passes 0.70 (here -1, which the first
    validation passes), wherever a CPU's rounding puts a fixed number of steps: the run stops there, its best
    checkpoint written; addition_rl, which starts from it, trains its whole schedule."""
    common = [*TINY_GPT, *ADDITIONS[1:], f"paths.data_dir={tmp_path / 'data'}", "trainer.val_every_n_steps=2"]
    train(compose_train("experiment=addition_weak", *common, "trainer.max_steps=8",
                        "callbacks.early_stopping.stopping_threshold=-1", tmp_path=tmp_path / "weak"))
    result = read_result(tmp_path / "weak")
    assert (result["steps"], result["best_step"]) == (2, 2)
    rl = compose_train("experiment=addition_rl", *common, "trainer.max_steps=4", "lm.group_size=2",
                       f"init_from={result['best_checkpoint']}", tmp_path=tmp_path / "rl")
    assert rl.callbacks.get("early_stopping") is None
    train(rl)
    assert read_result(tmp_path / "rl")["steps"] == 4


def rows(run_dir) -> list[dict]:
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_grpo_logs_its_signals_and_resumes_exactly_inside_a_reused_rollout(sft, tmp_path):
    """8 steps straight, against 4 steps and a resume to 8 (the schedule of 8 steps in both): each rollout is
    trained on for 3 steps (sampled at steps 1, 4 and 7), so the resume starts on the second step of the rollout
    that the checkpoint holds."""
    checkpoint, data = sft
    common = [*TINY_GPT, *ADDITIONS, data, "lm=grpo", f"init_from={checkpoint}", "lm.group_size=4",
              "lm.updates_per_rollout=3", "lm.beta=0.1", "lm.temperature=1.5", "scheduler.max_steps=8",
              "scheduler.warmup_steps=2", "trainer.val_every_n_steps=4", "trainer.log_every_n_steps=1"]
    for name, stops in (("straight", [8]), ("resumed", [4, 8])):
        for i, steps in enumerate(stops):
            train(compose_train(*common, f"trainer.max_steps={steps}", *(["ckpt_path=last"] if i else []),
                                tmp_path=tmp_path / name))
    runs = [torch.load(tmp_path / name / "checkpoints" / "last.ckpt", weights_only=True)
            for name in ("straight", "resumed")]
    assert runs[0]["global_step"] == runs[1]["global_step"] == 8
    assert all(torch.equal(runs[0]["state_dict"][key], runs[1]["state_dict"][key]) for key in runs[0]["state_dict"])
    logged = rows(tmp_path / "straight")
    steps = [row for row in logged if row.get("train/reward")]
    assert [row["step"] for row in steps] == ["1", "4", "7"]  # the steps that sampled a rollout
    for row in steps:
        assert 0 <= float(row["train/pass@1"]) <= float(row["train/pass@G"]) <= 1
        assert 0 <= float(row["train/no_signal"]) <= 1 and float(row["train/sampled_tok_per_s"]) > 0
    assert all(float(row["train/kl"]) >= 0 for row in logged if row.get("train/kl"))
    assert all(0 < float(row["train/generation_share"]) < 1 for row in steps)
    assert [row["step"] for row in logged if row.get("val/exact_match")] == ["4", "8"]


def test_two_ddp_processes_sample_their_own_prompts_and_log_the_mean_reward(sft, tmp_path):
    checkpoint, data = sft
    record = tmp_path / "rewards.jsonl"
    result = run_script("train.py", *TINY_GPT, *ADDITIONS, data, "lm=grpo", f"init_from={checkpoint}",
                        "lm.group_size=4", "data.batch_size=8", "trainer.max_steps=2", "trainer.log_every_n_steps=1",
                        "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp",
                        "lm.reward._target_=tests.recording_reward.RecordingReward", f"+lm.reward.path={record}",
                        f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 0, result.stderr[-3000:]
    calls = [json.loads(line) for line in record.read_text().splitlines()]
    first = {}  # each process's rollout of the first step
    for call in calls:
        if call["rank"] >= 0:
            assert len(call["prompts"]) == 8 * 4
            first.setdefault(call["rank"], call)
    assert sorted(first) == [0, 1] and not set(first[0]["prompts"]) & set(first[1]["prompts"])
    assert [call["rank"] for call in calls].count(-1) == 2  # each process checked the reward before it began
    mean = sum(sum(call["rewards"]) for call in first.values()) / (2 * 8 * 4)
    assert float(rows(tmp_path / "run")[0]["train/reward"]) == pytest.approx(mean)


@pytest.mark.parametrize("overrides, message", [
    (["lm.group_size=1"], "lm.group_size=1: the advantage compares"),
    (["data=text", "data.text_path=data/tinyshakespeare.txt"], "lm=grpo samples answers to prompts"),
    (["lm.reward._target_=tests.recording_reward.not_a_number", "+lm.reward._partial_=true"],
     "returned 'right' for a completion, not a finite number"),
])
def test_grpo_on_input_it_cannot_use_is_one_line(sft, tmp_path, overrides, message):
    checkpoint, data = sft
    additions = [] if "data=text" in overrides else ADDITIONS
    result = run_script("train.py", *TINY_GPT, *additions, data, "lm=grpo", f"init_from={checkpoint}", *overrides,
                        f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2 and message in one_error_line(result)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_grpo_without_the_checkpoint_it_starts_from_is_one_line(tmp_path):
    result = run_script("train.py", "lm=grpo", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2 and "lm=grpo needs init_from=" in one_error_line(result)
    assert not (tmp_path / "run").exists()


def test_a_crafted_rollout_in_a_checkpoint_is_refused_before_it_is_used():
    ids, labels = rollout_rows([[5, 6, 7, 1]], [2], width=8, pad_id=0)
    good = {"ids": ids, "labels": labels, "advantages": torch.zeros(1), "old_logprobs": None, "steps": 1}
    assert checked_rollout(good, vocab_size=8, block_size=8).steps == 1
    for change, problem in [({"ids": ids + 100}, "token ids outside the vocabulary"),
                            ({"advantages": torch.tensor([float("nan")])}, "not finite"),
                            ({"advantages": torch.zeros(2)}, "wrong shapes"),
                            ({"ids": ids.to_sparse()}, "wrong kind"),
                            ({"labels": "not a tensor"}, "wrong kind")]:
        with pytest.raises(UserError, match=f"the checkpoint's GRPO rollout .*{problem}"):
            checked_rollout({**good, **change}, vocab_size=8, block_size=8)
