"""The rewards of reinforcement learning (``lm=grpo``): a callable ``reward(completions, answers, prompts)`` that
returns one number per completion. ``completions`` are the sampled answers as text, None where one never ended
(no end token in the room it had); ``answers`` the data's reference answers; ``prompts`` the prompts. A reward is
named in the config by its ``_target_`` (``lm.reward``), and is checked on one held-out answer before the run
writes anything."""

import math
from collections.abc import Sequence
from numbers import Real

from gpt import UserError


class ExactMatch:
    """1 for a completion equal to its reference answer (and ended), else 0: exact match, as validation measures
    it (``gpt.eval.exact_match``)."""

    def __call__(self, completions: Sequence[str | None], answers: Sequence[str], prompts: Sequence[str]
                 ) -> list[float]:
        return [float(completion == answer) for completion, answer in zip(completions, answers)]


def checked_rewards(rewards, count: int, reward) -> list[float]:
    """``rewards``, refused in one line unless they are ``count`` finite numbers."""
    name = getattr(reward, "__qualname__", None) or type(reward).__qualname__
    if isinstance(rewards, (str, bytes)) or not isinstance(rewards, Sequence) or len(rewards) != count:
        raise UserError(f"lm.reward {name} returned {rewards!r:.60}, not a list of {count} numbers (one per "
                        "completion); make it return one number per completion")
    bad = next((value for value in rewards if not isinstance(value, Real) or not math.isfinite(value)), None)
    if bad is not None:
        raise UserError(f"lm.reward {name} returned {bad!r:.60} for a completion, not a finite number; make it return "
                        "a float for each completion")
    return [float(value) for value in rewards]
