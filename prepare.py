"""Tokenize a UTF-8 text file into train/val token files and a tokenizer (90/10 split by default).

    python prepare.py text_path=my.txt [tokenizer=char|gpt2|bpe] [vocab_size=4096 (bpe)] [val_fraction=0.1]

``text_path`` may be a directory: each ``*.txt`` file under it is one document. The output goes to
``data/<name>-<tokenizer>`` (where ``train.py data=text`` looks) unless ``out_dir`` says otherwise.
"""

import hydra
from omegaconf import DictConfig

from gpt.cli import report_user_errors
from gpt.data import prepare, prepared_dir


@hydra.main(version_base="1.3", config_path="conf", config_name="prepare")
def main(cfg: DictConfig) -> None:
    with report_user_errors():
        out_dir = cfg.out_dir or prepared_dir("data", cfg.text_path, cfg.tokenizer, cfg.vocab_size)
        meta = prepare(cfg.text_path, out_dir, cfg.tokenizer, cfg.val_fraction, cfg.vocab_size, cfg.num_proc)
        print(f"{out_dir}: vocabulary {meta['vocab_size']}, "
              f"{meta['train_tokens']:,} train and {meta['val_tokens']:,} val tokens ({meta['dtype']})")


if __name__ == "__main__":
    main()
