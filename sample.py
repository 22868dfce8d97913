"""Generate text from a checkpoint: ``python sample.py ckpt_path=<run dir>/checkpoints/best.ckpt prompt=ROMEO:``.

Generation stops at the tokenizer's end token (a model trained on prompt -> answer examples ends its answer with
it; ``answer_only=true`` prints the answer alone). ``quantize=int8`` runs the model with int8 weights. A
masked-LM checkpoint fills the ``[MASK]`` tokens of the prompt instead: ``'prompt="To be, or not to [MASK]e"'``; a
reward model (``lm=reward``) scores a completion of each prompt: ``prompt=12+34= completion=46``.
"""

import re
import sys

import hydra
from omegaconf import DictConfig, ListConfig

from gpt import UserError
from gpt.cli.checks import SAMPLE
from gpt.cli.command_line import check_command_line, check_config
from gpt.cli.errors import report_user_errors
from gpt.data.tokenizers import TextStream
from gpt.signals import stopped_by_signals


def sample(cfg: DictConfig) -> None:
    """Print ``num_samples`` continuations of each prompt (``prompt`` is one string or a list), generated as one
    batch; a single sample is printed token by token as it is generated."""
    import torch  # loaded once the arguments are checked: a mistake is reported in well under a second

    from gpt.models.generate import GenerationSettings
    from gpt.training.checkpoint import model_from_checkpoint
    from gpt.training.reward_model import trained_as_reward_model

    prompts = list(cfg.prompt) if isinstance(cfg.prompt, ListConfig) else [cfg.prompt]
    if not all(prompts) or not all(isinstance(p, str) for p in prompts):
        raise UserError('prompt is empty; pass a starting text such as prompt="ROMEO:"')
    if cfg.completion is not None:
        return print_scores(cfg.ckpt_path, prompts, cfg.completion)
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(cfg.seed)
    model, tokenizer, record = model_from_checkpoint(cfg.ckpt_path)
    if trained_as_reward_model(record):
        raise UserError(f"{cfg.ckpt_path} is a reward model, which scores completions and writes none; give the "
                        "completion to score: completion=...")
    model.to(device)
    if cfg.quantize:
        from gpt.models.quantize import quantize_int8

        quantize_int8(model)
    if not getattr(model.config, "causal", True):  # a masked LM: fill in the blanks
        for i, prompt in enumerate(prompts):
            print(f"--- sample {i + 1}\n{describe_filled(model, tokenizer, prompt, cfg.candidates)}")
        return
    ids = [tokenizer.encode(p) for p in prompts for _ in range(cfg.num_samples)]
    settings = GenerationSettings.for_tokenizer(tokenizer, max_new_tokens=cfg.max_new_tokens,
                                                temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
                                                use_cache=cfg.use_cache)
    if len(ids) == 1:
        print_as_generated(model.stream(ids, settings), tokenizer,
                           "" if cfg.answer_only else f"--- sample 1\n{tokenizer.decode(ids[0])}")
        return
    for i, (prompt, row) in enumerate(zip(ids, model.generate(ids, settings))):
        text = tokenizer.decode(row[len(prompt) if cfg.answer_only else 0:ended(row, tokenizer.eot_id)])
        print(text if cfg.answer_only else f"--- sample {i + 1}\n{text}")  # answers: one a line, to read back


def print_scores(ckpt_path: str, prompts: list[str], completion: str) -> None:
    """The reward model's score of ``completion`` after each prompt, a line each."""
    from gpt.training.reward_model import reward_model_from_checkpoint

    scorer, tokenizer = reward_model_from_checkpoint(ckpt_path)
    for prompt, score in zip(prompts, scorer.score(tokenizer, prompts, [completion] * len(prompts))):
        print(f"{score:.4f}\t{prompt}{completion}")


def print_as_generated(steps, tokenizer, before: str) -> None:
    """``before``, then the text of each new token of a single row as soon as it is generated, up to the end
    token."""
    text = TextStream(tokenizer)
    sys.stdout.write(before)
    for (token,) in steps:
        if token == tokenizer.eot_id:
            break
        sys.stdout.write(text.push(token))
        sys.stdout.flush()
    print(text.flush())


def ended(row: list[int], eot_id: int | None) -> int:
    """Where the text of a generated row ends: before its end token, if it came."""
    return len(row) - 1 if row and row[-1] == eot_id else len(row)


def check_device(cfg: DictConfig, overrides: list[str]) -> None:
    """``device=cuda`` where there is no CUDA: one line before anything loads but torch."""
    if cfg.device and cfg.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise UserError(f"device={cfg.device} but CUDA is not available here; use device=cpu (or leave device out)")


def describe_filled(model, tokenizer, prompt: str, candidates: int) -> str:
    """The prompt with its masks filled, then the top candidates of each mask with their probabilities."""
    from gpt.models.generate import fill_masks

    ids = tokenizer.encode(prompt)
    if tokenizer.mask_id not in ids:
        raise UserError('the model is a masked LM and the prompt has no [MASK]; write [MASK] where it should fill '
                        'in, e.g. \'prompt="To be, or not to [MASK][MASK]"\'')
    if len(ids) > model.block_size:
        raise UserError(f"the prompt is {len(ids)} tokens, longer than the model's block_size={model.block_size}")
    filled, top = fill_masks(model, ids, tokenizer.mask_id, tokenizer.special_ids, candidates)
    lines = [tokenizer.decode(filled)]
    for i, options in enumerate(top, start=1):
        lines.append(f"[MASK] {i}: " + "  ".join(f"{tokenizer.decode([t])!r} {p:.3f}" for t, p in options))
    return "\n".join(lines)


def quote_prompt(args: list[str]) -> list[str]:
    """Hydra reads ``key=value`` with a grammar of its own, in which a value with spaces, commas or letters
    beyond ASCII (``prompt=Roméo``) must be quoted, and digits alone are a number. Quote a plain ``prompt=`` or
    ``completion=`` value, so that any text works; a quoted value or a list of prompts (``prompt=[ROMEO:,JULIET:]``)
    is left as it is."""
    quoted = []
    for arg in args:
        key, _, value = arg.partition("=")
        is_list = value.startswith("[") and value.endswith("]") and "," in value
        if key in ("prompt", "completion") and value and value[0] not in "'\"" and not is_list:
            # in Hydra's quoted values, backslashes escape only a quote or the backslashes before one
            escaped = re.sub(r"(\\*)('|$)", lambda m: 2 * m.group(1) + ("\\'" if m.group(2) else ""), value)
            arg = f"{key}='{escaped}'"
        quoted.append(arg)
    return quoted


@hydra.main(version_base="1.3", config_path="conf", config_name="sample")
def main(cfg: DictConfig) -> None:
    with report_user_errors(), stopped_by_signals():
        check_config(cfg, "python sample.py", SAMPLE)
        sample(cfg)


if __name__ == "__main__":
    sys.argv[1:] = quote_prompt(sys.argv[1:])
    check_command_line("sample", SAMPLE, also=check_device, doc=__doc__)
    main()
