"""Export a checkpoint to Hugging Face's GPT-2 format (``model.safetensors``, ``config.json`` and the tokenizer's
files):

    python export.py ckpt_path=<run dir>/checkpoints/best.ckpt out_dir=exported/

``transformers.GPT2LMHeadModel.from_pretrained("exported/")`` and ``AutoTokenizer.from_pretrained("exported/")``
then load it. Only GPT-2's architecture exports. An ``out_dir`` that holds files is refused unless
``overwrite=true``, which replaces it whole.
"""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from gpt import UserError
from gpt.cli.checks import EXPORT
from gpt.cli.command_line import check_command_line, check_config
from gpt.cli.errors import report_user_errors
from gpt.signals import stopped_by_signals


def check_out_dir(cfg: DictConfig, overrides: list[str]) -> None:
    """An ``out_dir`` that holds anything is replaced only with ``overwrite=true``."""
    out_dir = Path(cfg.out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"out_dir={out_dir} is a file; choose a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not cfg.overwrite:
        held = ", ".join(sorted(path.name for path in out_dir.iterdir())[:4])
        raise UserError(f"out_dir={out_dir} already holds files ({held}); choose another out_dir, or replace it whole "
                        "with overwrite=true")


@hydra.main(version_base="1.3", config_path="conf", config_name="export")
def main(cfg: DictConfig) -> None:
    with report_user_errors(), stopped_by_signals():
        check_config(cfg, "python export.py", EXPORT)
        from gpt.data.hf import save_hf
        from gpt.training.checkpoint import model_from_checkpoint  # torch loads once the arguments are checked

        model, tokenizer, _ = model_from_checkpoint(cfg.ckpt_path)
        print(f"wrote {save_hf(model, tokenizer, cfg.out_dir)}")


if __name__ == "__main__":
    check_command_line("export", EXPORT, also=check_out_dir, doc=__doc__)
    main()
