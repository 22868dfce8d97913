"""Export a checkpoint to Hugging Face's GPT-2 format (``model.safetensors``, ``config.json`` and the tokenizer's
files):

    python export.py ckpt_path=<run dir>/checkpoints/best.ckpt out_dir=exported/

``transformers.GPT2LMHeadModel.from_pretrained("exported/")`` and ``AutoTokenizer.from_pretrained("exported/")``
then load it. Only GPT-2's architecture exports.
"""

import hydra
from omegaconf import DictConfig

from gpt.checkpoint import model_from_checkpoint
from gpt.cli import check_command_line, check_config, report_user_errors
from gpt.hf import save_hf


@hydra.main(version_base="1.3", config_path="conf", config_name="export")
def main(cfg: DictConfig) -> None:
    with report_user_errors():
        check_config(cfg, "python export.py", {})
        model, tokenizer, _ = model_from_checkpoint(cfg.ckpt_path)
        print(f"wrote {save_hf(model, tokenizer, cfg.out_dir)}")


if __name__ == "__main__":
    check_command_line("export", {})
    main()
