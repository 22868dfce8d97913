"""Comparison pairs from a checkpoint's own answers (``make_pairs.py``): ``samples`` answers sampled for each
training problem, each checked against the problem's answer as exact match checks it; every problem with both a
right and a wrong answer gives pairs of its answer (chosen) and each distinct wrong one (rejected)."""

from collections.abc import Sequence
from dataclasses import dataclass, field

from gpt.models.generate import GenerationSettings, generated_answer


@dataclass
class PairCounts:
    problems: int = 0
    samples: int = 0
    right: int = 0  # sampled answers equal to the reference
    all_right: int = 0  # problems whose every sample was right: no pair
    all_wrong: int = 0  # problems whose every sample was wrong: no pair
    pairs: list[dict] = field(default_factory=list)

    def summary(self) -> str:
        both = self.problems - self.all_right - self.all_wrong
        return (f"{self.problems:,} problems x {self.samples // max(self.problems, 1)} samples: "
                f"{self.right / max(self.samples, 1):.3f} of the answers right; {self.all_right:,} problems all "
                f"right, {self.all_wrong:,} all wrong, {both:,} with both: {len(self.pairs):,} pairs")


def sample_pairs(model, tokenizer, problems: Sequence[tuple[str, str]], samples: int, temperature: float,
                 batch_size: int = 64) -> PairCounts:
    """Pairs from ``samples`` answers per (prompt, answer) problem, sampled at ``temperature`` in batches of
    ``batch_size`` problems (all their samples together, with the KV cache)."""
    counts = PairCounts()
    longest = max(len(tokenizer.encode(answer)) for _, answer in problems)
    settings = GenerationSettings.for_tokenizer(tokenizer, max_new_tokens=longest + 1, temperature=temperature)
    for start in range(0, len(problems), batch_size):
        chunk = problems[start:start + batch_size]
        prompts = [tokenizer.encode(prompt) for prompt, _ in chunk for _ in range(samples)]
        rows = model.generate(prompts, settings)
        for i, (prompt, answer) in enumerate(chunk):
            answers = [generated_answer(row, len(prompts[i * samples]), tokenizer)
                       for row in rows[i * samples:(i + 1) * samples]]
            right = sum(a == answer for a in answers)
            wrong = list(dict.fromkeys(a for a in answers if a != answer and a))  # distinct, in order
            counts.problems, counts.samples, counts.right = counts.problems + 1, counts.samples + samples, \
                counts.right + right
            counts.all_right += right == samples
            counts.all_wrong += right == 0
            if right:
                counts.pairs += [{"prompt": prompt, "chosen": answer, "rejected": w} for w in wrong]
    return counts
