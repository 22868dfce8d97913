"""Exact match: the answers a model generates greedily (batched, with the KV cache) for held-out prompts, checked
against their references. ``ExactMatch`` logs ``val/exact_match`` (the share of answers equal to the reference)
and ``val/digit_acc`` (the share of the reference's characters generated at their place) at each validation of
data with checkable answers."""

from collections.abc import Sequence

import lightning as L

from gpt.metrics import DIGIT_ACC, EXACT_MATCH
from gpt.models.generate import GenerationSettings, generated_answer

GENERATION_LOGITS_BYTES = 2 ** 30


def score_answers(model, tokenizer, pairs: Sequence[tuple[str, str]], batch_size: int = 500) -> tuple[float, float]:
    """(exact match, per-character accuracy) of the answers ``model`` generates greedily for the prompts of ``pairs``
    against their answers: an answer counts when it equals the reference and then ends (the end token).

    At most ``batch_size`` prompts are generated at once, fewer where their logits would take more than
    ``GENERATION_LOGITS_BYTES`` (500 prompts of 30 GPT-2 tokens: 3 GB)."""
    prompts = [tokenizer.encode(prompt) for prompt, _ in pairs]
    longest_prompt = max(len(prompt) for prompt in prompts)
    batch_size = max(1, min(batch_size, GENERATION_LOGITS_BYTES // (4 * model.vocab_size * longest_prompt)))
    exact = right_characters = characters = 0
    for start in range(0, len(pairs), batch_size):
        chunk, chunk_prompts = pairs[start:start + batch_size], prompts[start:start + batch_size]
        longest = max(len(tokenizer.encode(answer)) for _, answer in chunk)
        rows = model.generate(chunk_prompts, GenerationSettings.for_tokenizer(tokenizer, max_new_tokens=longest + 1,
                                                                              temperature=0))
        for (_, reference), prompt, row in zip(chunk, chunk_prompts, rows):
            answer = generated_answer(row, len(prompt), tokenizer)
            text = answer if answer is not None else tokenizer.decode(row[len(prompt):])
            exact += answer == reference
            right_characters += sum(a == b for a, b in zip(text, reference))
            characters += len(reference)
    return exact / len(pairs), right_characters / characters


class ExactMatch(L.Callback):
    """At each validation of data with checkable answers, logs ``val/exact_match`` and ``val/digit_acc`` of the
    held-out answers (``score_answers``); they can be monitored by the checkpoints and optimised by sweeps."""

    def __init__(self, batch_size: int = 500):
        self.batch_size, self.pairs = batch_size, None

    def setup(self, trainer, pl_module, stage: str) -> None:
        self.pairs = trainer.datamodule.held_out_answers()

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not self.pairs or trainer.sanity_checking or not pl_module.generates:
            return
        exact, per_character = score_answers(pl_module.model, trainer.datamodule.tokenizer, self.pairs,
                                             self.batch_size)
        # every rank scores the same answers (greedy): the values agree, the sync only keeps Lightning content
        pl_module.log(EXACT_MATCH.name, exact, sync_dist=True)
        pl_module.log(DIGIT_ACC.name, per_character, sync_dist=True)
