"""Rewards for the tests of lm=grpo. ``RecordingReward``: exact match, and a line per call in a JSONL file naming
the process (its rank; -1 before the processes have met) and the prompts it rewarded, so that a test sees which
process sampled which prompts. ``not_a_number``: a reward that returns text."""

import json

import torch

from gpt.training.rewards import ExactMatch


class RecordingReward(ExactMatch):
    def __init__(self, path: str):
        self.path = path

    def __call__(self, completions, answers, prompts):
        rewards = super().__call__(completions, answers, prompts)
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else -1
        with open(self.path, "a") as f:
            f.write(json.dumps({"rank": rank, "prompts": list(prompts), "rewards": rewards}) + "\n")
        return rewards


def not_a_number(completions, answers, prompts):
    return ["right" for _ in completions]
