"""Reinforcement learning with a checkable reward (``lm=grpo``): GRPO (Shao et al. 2024, DeepSeekMath) on the prompts
of data whose answers can be checked (``data=arithmetic``, ``data=jsonl``), from an SFT checkpoint (``init_from``).

A training step samples ``group_size`` completions of each prompt of its batch with the policy (batched, with the
KV cache), rewards each (``lm.reward``, exact match by default: ``gpt.training.rewards``) and turns the rewards
into advantages within each prompt's group: ``grpo`` subtracts the group's mean and divides by its standard
deviation, ``rloo`` subtracts the mean of the group's other rewards (REINFORCE leave-one-out). The loss is PPO's
clipped surrogate on every completion token, averaged over the tokens of the batch, plus ``beta`` times the KL
divergence to the frozen initial weights (the k3 estimate, per token; ``beta=0``: no reference is kept).

A rollout (the sampled completions and their advantages) is trained on for ``updates_per_rollout`` consecutive
steps, the later batches' prompts unused: at its first step the policy is the one that sampled it (the ratio is 1,
the clip idle); the clip keeps the later steps near it. A checkpoint holds the rollout in use, so that a resumed
run continues exactly (the sampler's random numbers are restored with the others: ``LanguageModel``)."""

import time
from dataclasses import dataclass, replace

import torch
from lightning.pytorch.strategies import FSDPStrategy

from gpt import IGNORE_INDEX, UserError
from gpt.data.answers import AnswersDataModule
from gpt.data.pairs import PairsDataModule
from gpt.metrics import GENERATION_SHARE, NO_SIGNAL, PASS_AT_1, PASS_AT_G, POLICY_KL, REWARD, SAMPLED_TOKENS_PER_S
from gpt.models.generate import GenerationSettings, generated_answer
from gpt.training.objectives import HeldToReference, token_logprobs
from gpt.training.rewards import ExactMatch, checked_rewards

ADVANTAGES = ("grpo", "rloo")
ROW_MULTIPLE = 8  # rollouts are padded to a multiple of this many tokens: few shapes for a compiled step


@dataclass
class Rollout:
    """Completions sampled for a batch of prompts, as rows to train on: ``ids`` (N, T) prompt and completion, padded
    on the right; ``labels`` (N, T) the completion token each position predicts, ``IGNORE_INDEX`` elsewhere;
    ``advantages`` (N,); ``old_logprobs`` (N, T) of the policy that sampled them, taken at the first step."""

    ids: torch.Tensor
    labels: torch.Tensor
    advantages: torch.Tensor
    old_logprobs: torch.Tensor | None = None
    steps: int = 0  # optimizer steps trained on it so far

    def to(self, device) -> "Rollout":
        return replace(self, **{name: value.to(device) for name, value in vars(self).items()
                                if isinstance(value, torch.Tensor)})

    def state(self) -> dict:
        return dict(vars(self))


def group_advantages(rewards: torch.Tensor, kind: str) -> torch.Tensor:
    """Advantages (P * G,) of the rewards (P prompts, G completions each) within each prompt's group."""
    if kind == "rloo":
        others_mean = (rewards.sum(dim=1, keepdim=True) - rewards) / (rewards.size(1) - 1)
        return (rewards - others_mean).flatten()
    return ((rewards - rewards.mean(dim=1, keepdim=True)) / (rewards.std(dim=1, keepdim=True) + 1e-4)).flatten()


def clipped_surrogate(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                      clip: float) -> torch.Tensor:
    """PPO's per-token objective to maximise: min(r A, clip(r, 1 - clip, 1 + clip) A), r the probability ratio."""
    ratio = torch.exp(logprobs - old_logprobs)
    advantages = advantages[:, None]
    return torch.minimum(ratio * advantages, ratio.clamp(1 - clip, 1 + clip) * advantages)


def prompts_and_answers(batch: dict[str, torch.Tensor]) -> tuple[list[list[int]], list[list[int]]]:
    """The prompts of a batch of prompt -> answer examples and their answer tokens (with the end token), read from
    the labels: the first labelled position is the prompt's last token."""
    labelled = batch["labels"] != IGNORE_INDEX
    prompts, answers = [], []
    for row, last_prompt_token, count in zip(batch["input_ids"].tolist(), labelled.int().argmax(dim=1).tolist(),
                                             labelled.sum(dim=1).tolist()):
        prompts.append(row[:last_prompt_token + 1])
        answers.append(row[last_prompt_token + 1:last_prompt_token + 1 + count])
    return prompts, answers


def rollout_rows(rows: list[list[int]], prompt_lengths: list[int], width: int, pad_id: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, labels) of generated rows padded on the right to ``width``; only completion tokens are labels."""
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for i, (row, prompt_length) in enumerate(zip(rows, prompt_lengths)):
        ids[i, :len(row)] = torch.tensor(row)
        labels[i, prompt_length - 1:len(row) - 1] = torch.tensor(row[prompt_length:])
    return ids, labels


class GRPO(HeldToReference):
    """Group-relative policy optimisation with a checkable reward (the module's docstring says how).

    - ``group_size``: completions sampled per prompt (G, at least 2: the advantage compares them);
    - ``temperature``: of the sampling; ``max_new_tokens``: at most this many per completion (null: the room left in
      the context after the batch's longest prompt);
    - ``reward``: a callable (``gpt.training.rewards``), exact match by default;
    - ``advantage``: ``grpo`` or ``rloo``; ``clip``: PPO's clip range; ``beta``: the weight of the KL term;
    - ``updates_per_rollout``: optimizer steps trained on each rollout.

    Every ``trainer.log_every_n_steps`` steps, training logs the means since the last log of: the reward, pass@1
    and pass@G of the sampled answers (exact match against the data's answers, whatever the reward), the KL to the
    reference (with ``beta`` > 0), the share of groups whose rewards are all equal (no signal), the share of step
    time spent sampling and the sampled tokens per second. Validation logs the held-out loss and exact match, as
    SFT does."""

    wrong_attention = "lm=grpo needs a model with causal attention, model.causal=true, as its SFT checkpoint has"

    def __init__(self, *args, group_size: int = 8, temperature: float = 1.0, max_new_tokens: int | None = None,
                 reward=None, advantage: str = "grpo", clip: float = 0.2, beta: float = 0.0,
                 updates_per_rollout: int = 1, **kwargs):
        super().__init__(*args, **kwargs)
        if group_size < 2:
            raise UserError(f"lm.group_size={group_size}: the advantage compares a prompt's completions with each "
                            "other, so each needs at least 2 (GRPO uses 8 to 64)")
        if advantage not in ADVANTAGES:
            raise UserError(f"lm.advantage={advantage} is not one of {', '.join(ADVANTAGES)}")
        if not temperature > 0:
            raise UserError(f"lm.temperature={temperature}: sampling needs a positive temperature (1.0 samples the "
                            "policy as it is)")
        if beta < 0 or clip <= 0 or updates_per_rollout < 1:
            raise UserError(f"lm.beta={beta}, lm.clip={clip}, lm.updates_per_rollout={updates_per_rollout}: beta is "
                            "at least 0, clip more than 0 and updates_per_rollout at least 1")
        self.group_size, self.temperature, self.max_new_tokens = group_size, temperature, max_new_tokens
        self.reward = reward if reward is not None else ExactMatch()
        self.advantage, self.clip, self.beta, self.updates_per_rollout = advantage, clip, beta, updates_per_rollout
        self.uses_reference = beta > 0
        self.tokenizer = kwargs.get("tokenizer")
        self.rollout: Rollout | None = None
        self.since_log, self.step_started, self.logged_at = MetricSums(), 0.0, 0

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if isinstance(self.trainer.strategy, FSDPStrategy):
            # each process stops sampling when its own rows have ended: sharded layers would wait for the others
            raise UserError("lm=grpo samples on each process independently, which FSDP's sharded layers cannot do; "
                            "use trainer=ddp")
        if self.updates_per_rollout > 1 and self.trainer.accumulate_grad_batches > 1:
            raise UserError(f"lm.updates_per_rollout={self.updates_per_rollout} reuses a rollout over optimizer steps, "
                            "which gradient accumulation splits into micro-batches; use one of them")

    def check_data(self, datamodule) -> None:
        """Prompts with answers to check, and a reward that gives a number for one of them."""
        super().check_data(datamodule)
        if not isinstance(datamodule, AnswersDataModule) or isinstance(datamodule, PairsDataModule):
            raise UserError("lm=grpo samples answers to prompts and rewards them against the data's answers: use "
                            "prompt -> answer data (data=arithmetic, or data=jsonl data.text_path=<prompts and "
                            "answers>.jsonl)")
        if hasattr(self.reward, "check_tokenizer"):  # a reward model: it reads the data's token ids
            self.reward.check_tokenizer(datamodule.tokenizer)
        prompt, answer = datamodule.held_out_answers()[0]
        checked_rewards(self.reward([answer], [answer], [prompt]), 1, self.reward)

    # --------------------------------------------------------------------------- sampling

    def sample_rollout(self, batch: dict[str, torch.Tensor]) -> Rollout:
        """Sample, check and reward ``group_size`` completions of each prompt of ``batch``; log what they show."""
        tok, group = self.tokenizer, self.group_size
        prompts, answer_tokens = prompts_and_answers(batch)
        longest = max(len(prompt) for prompt in prompts)
        room = self.model.block_size - longest
        settings = GenerationSettings.for_tokenizer(tok, max_new_tokens=min(self.max_new_tokens or room, room),
                                                    temperature=self.temperature)
        repeated = [prompt for prompt in prompts for _ in range(group)]
        started = time.perf_counter()
        self.model.eval()
        rows = self.model.generate(repeated, settings)
        self.model.train()
        seconds = time.perf_counter() - started
        self.since_log.generation_seconds += seconds
        completions = [generated_answer(row, len(prompt), tok) for row, prompt in zip(rows, repeated)]
        answers = [tok.decode(tokens[:-1]) for tokens in answer_tokens for _ in range(group)]
        prompt_texts = [tok.decode(prompt) for prompt in repeated]
        rewards = torch.tensor(checked_rewards(self.reward(completions, answers, prompt_texts), len(rows),
                                               self.reward)).view(-1, group)
        right = torch.tensor([c == a for c, a in zip(completions, answers)], dtype=torch.float).view(-1, group)
        sampled = sum(len(row) - len(prompt) for row, prompt in zip(rows, repeated))
        for metric, value in [(REWARD, rewards.mean()), (PASS_AT_1, right.mean()), (PASS_AT_G, right.amax(1).mean()),
                              (NO_SIGNAL, (rewards.amax(1) == rewards.amin(1)).float().mean()),
                              (SAMPLED_TOKENS_PER_S, sampled / max(seconds, 1e-9))]:
            self.since_log.add(metric.name, float(value))
        width = min(self.model.block_size, -(-max(map(len, rows)) // ROW_MULTIPLE) * ROW_MULTIPLE)
        ids, labels = rollout_rows(rows, [len(prompt) for prompt in repeated], width, tok.pad_id or 0)
        return Rollout(ids.to(self.device), labels.to(self.device),
                       group_advantages(rewards, self.advantage).to(self.device))

    # --------------------------------------------------------------------------- training

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        if self.rollout is None or self.rollout.steps >= self.updates_per_rollout:
            self.rollout = self.sample_rollout(batch)
        rollout = self.rollout
        logprobs = token_logprobs(self.model(rollout.ids), rollout.labels)
        if rollout.old_logprobs is None:
            rollout.old_logprobs = logprobs.detach()  # the policy has not moved since it sampled them
        rollout.steps += 1
        completion = rollout.labels != IGNORE_INDEX
        per_token = -clipped_surrogate(logprobs, rollout.old_logprobs, rollout.advantages, self.clip)
        if self.beta > 0:
            with torch.no_grad():
                reference = token_logprobs(self.reference(rollout.ids), rollout.labels)
            log_ratio = reference - logprobs
            kl = torch.exp(log_ratio) - log_ratio - 1  # k3: unbiased, never negative
            per_token = per_token + self.beta * kl
            self.since_log.add(POLICY_KL.name, kl[completion].mean().detach())
        loss = per_token[completion].sum() / completion.sum().clamp(min=1)
        return {"loss": loss, "train_loss": loss.detach()}

    def on_train_start(self) -> None:
        super().on_train_start()
        self.logged_at = self.global_step  # a resumed run logged this step before it stopped
        if self.rollout is not None:  # restored from a checkpoint, which is read onto the CPU
            self.rollout = self.rollout.to(self.device)

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        super().on_train_batch_start(batch, batch_idx)
        self.step_started = time.perf_counter()

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        """At logging steps, the means since the last one go to the loggers (as ``TrainingMetrics`` logs the loss,
        and at the same step), reduced over the processes; the reward also to the progress line."""
        super().on_train_batch_end(outputs, batch, batch_idx)
        self.since_log.step_seconds += time.perf_counter() - self.step_started
        step = self.global_step
        if step % self.trainer.log_every_n_steps or step == self.logged_at:
            return
        self.logged_at = step
        names, values = zip(*self.since_log.means().items())
        means = self.trainer.strategy.reduce(torch.tensor(values, device=self.device), reduce_op="mean").tolist()
        metrics = dict(zip(names, means))
        for logger in self.trainer.loggers:
            logger.log_metrics(metrics, step=step)
            logger.save()
        if REWARD.name in metrics:
            self.trainer.callback_metrics[REWARD.name] = torch.tensor(metrics[REWARD.name])
        self.since_log = MetricSums()

    # --------------------------------------------------------------------------- the rollout in checkpoints

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.rollout is not None:
            checkpoint["rollout"] = self.rollout.state()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        saved = checkpoint.get("rollout")
        self.rollout = None if saved is None else checked_rollout(saved, self.model.vocab_size,
                                                                  self.model.block_size)


class MetricSums:
    """What a run's steps measured since its last logging step: sums and counts of each metric, and the seconds spent
    sampling and in whole steps."""

    def __init__(self):
        self.sums, self.counts = {}, {}
        self.generation_seconds = self.step_seconds = 0.0

    def add(self, name: str, value: float | torch.Tensor) -> None:
        self.sums[name] = self.sums.get(name, 0.0) + value
        self.counts[name] = self.counts.get(name, 0) + 1

    def means(self) -> dict[str, float]:
        means = {name: float(total) / self.counts[name] for name, total in self.sums.items()}
        return {**means, GENERATION_SHARE.name: self.generation_seconds / max(self.step_seconds, 1e-9)}


def checked_rollout(saved, vocab_size: int, block_size: int) -> Rollout:
    """A checkpoint's rollout, refused in one line unless its tensors are what ``sample_rollout`` makes: ids in the
    vocabulary, rows no longer than the context, one advantage per row."""
    problem = "is not a dict of the rollout's tensors"
    if isinstance(saved, dict) and {"ids", "labels", "advantages", "old_logprobs", "steps"} <= saved.keys():
        ids, labels, advantages, old = (saved[key] for key in ("ids", "labels", "advantages", "old_logprobs"))
        present = [t for t in (ids, labels, advantages, old) if t is not None]
        tensors = all(isinstance(t, torch.Tensor) and t.layout == torch.strided for t in (ids, labels, advantages)) \
            and (old is None or isinstance(old, torch.Tensor) and old.layout == torch.strided)
        if not tensors or ids.dtype != torch.long or labels.dtype != torch.long or ids.dim() != 2 or \
                not all(t.is_floating_point() for t in present[2:]):
            problem = "has tensors of the wrong kind"
        elif labels.shape != ids.shape or advantages.shape != ids.shape[:1] or ids.size(1) > block_size or \
                (old is not None and old.shape != ids.shape) or type(saved["steps"]) is not int:
            problem = "has tensors of the wrong shapes"
        elif ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size or
                              bool(((labels != IGNORE_INDEX) & ((labels < 0) | (labels >= vocab_size))).any())):
            problem = "has token ids outside the vocabulary"
        elif not all(bool(torch.isfinite(t).all()) for t in present[2:]):
            problem = "has advantages or log-probabilities that are not finite"
        else:
            return Rollout(ids, labels, advantages.float(), None if old is None else old.float(), saved["steps"])
    raise UserError(f"the checkpoint's GRPO rollout {problem}; it was not written by train.py lm=grpo: resume from "
                    "another checkpoint")
