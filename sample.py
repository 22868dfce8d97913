"""Generate text from a checkpoint: ``python sample.py ckpt_path=<run dir>/checkpoints/best.ckpt prompt=ROMEO:``."""

import hydra
import torch
from omegaconf import DictConfig

from gpt import UserError
from gpt.checkpoint import model_from_checkpoint
from gpt.cli import report_user_errors


def sample(cfg: DictConfig) -> list[str]:
    if cfg.max_new_tokens < 0 or cfg.num_samples < 1:
        raise UserError("max_new_tokens must be >= 0 and num_samples >= 1")
    if not cfg.prompt:
        raise UserError('prompt is empty; pass a starting text such as prompt="ROMEO:"')
    torch.manual_seed(cfg.seed)
    model, tokenizer, _ = model_from_checkpoint(cfg.ckpt_path)
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    prompt = torch.tensor([tokenizer.encode(cfg.prompt)] * cfg.num_samples, device=device)
    out = model.generate(prompt, cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k)
    return [tokenizer.decode(row.tolist()) for row in out]


@hydra.main(version_base="1.3", config_path="conf", config_name="sample")
def main(cfg: DictConfig) -> None:
    with report_user_errors():
        for i, text in enumerate(sample(cfg)):
            print(f"--- sample {i + 1}\n{text}")


if __name__ == "__main__":
    main()
