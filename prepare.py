"""Tokenize a UTF-8 text file into train/val token files and a tokenizer (90/10 split by default).

    python prepare.py text_path=my.txt [tokenizer=char] [out_dir=data/my-char (the default, where train.py looks)] [val_fraction=0.1]
"""

import hydra
from omegaconf import DictConfig

from gpt.cli import report_user_errors
from gpt.data import prepare, prepared_dir


@hydra.main(version_base="1.3", config_path="conf", config_name="prepare")
def main(cfg: DictConfig) -> None:
    with report_user_errors():
        out_dir = cfg.out_dir or prepared_dir("data", cfg.text_path, cfg.tokenizer)
        meta = prepare(cfg.text_path, out_dir, cfg.tokenizer, cfg.val_fraction)
        print(f"{out_dir}: vocabulary {meta['vocab_size']}, "
              f"{meta['train_tokens']:,} train and {meta['val_tokens']:,} val tokens ({meta['dtype']})")


if __name__ == "__main__":
    main()
