"""Generate text from a checkpoint: ``python sample.py ckpt_path=<run dir>/checkpoints/best.ckpt prompt=ROMEO:``."""

import hydra
import torch
from omegaconf import DictConfig, ListConfig

from gpt import UserError
from gpt.checkpoint import model_from_checkpoint
from gpt.cli import report_user_errors


def sample(cfg: DictConfig) -> list[str]:
    """``num_samples`` continuations of each prompt (``prompt`` is one string or a list), generated as one batch."""
    prompts = list(cfg.prompt) if isinstance(cfg.prompt, ListConfig) else [cfg.prompt]
    if cfg.max_new_tokens < 0 or cfg.num_samples < 1:
        raise UserError("max_new_tokens must be >= 0 and num_samples >= 1")
    if not all(prompts):
        raise UserError('prompt is empty; pass a starting text such as prompt="ROMEO:"')
    torch.manual_seed(cfg.seed)
    model, tokenizer, _ = model_from_checkpoint(cfg.ckpt_path)
    model.to(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    ids = [tokenizer.encode(p) for p in prompts for _ in range(cfg.num_samples)]
    out = model.generate(ids, cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
                         eot_id=tokenizer.eot_id, use_cache=cfg.use_cache)
    return [tokenizer.decode(row) for row in out]


@hydra.main(version_base="1.3", config_path="conf", config_name="sample")
def main(cfg: DictConfig) -> None:
    with report_user_errors():
        for i, text in enumerate(sample(cfg)):
            print(f"--- sample {i + 1}\n{text}")


if __name__ == "__main__":
    main()
