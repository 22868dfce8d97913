"""Tokenize UTF-8 text into token files and a tokenizer, where ``train.py data=text`` (or ``data=examples``)
finds them (90/10 train/val split by default).

    python prepare.py text_path=my.txt [tokenizer=char|gpt2|bpe] [vocab_size=4096 (bpe)] [example=paragraph]

``text_path`` may be a directory: every ``*.txt`` file in it and its subdirectories is one document.
"""

import hydra
from omegaconf import DictConfig

from gpt.cli import check_required, report_user_errors
from gpt.corpus import prepare_examples, prepare_windows, prepared_dir


@hydra.main(version_base="1.3", config_path="conf", config_name="prepare")
def main(cfg: DictConfig) -> None:
    with report_user_errors(renamed_keys={f"data.{key}": key for key in cfg}):
        check_required(cfg, "python prepare.py")
        out_dir = cfg.out_dir or prepared_dir(cfg.cache_dir, cfg.text_path, cfg.tokenizer, cfg.vocab_size, cfg.example)
        if cfg.example:
            meta = prepare_examples(cfg.text_path, out_dir, cfg.example, cfg.tokenizer, cfg.vocab_size,
                                    cfg.val_fraction, cfg.num_proc)
            counts = f"{meta['train_examples']:,} train and {meta['examples'] - meta['train_examples']:,} val {cfg.example}s"
        else:
            meta = prepare_windows(cfg.text_path, out_dir, cfg.tokenizer, cfg.val_fraction, cfg.vocab_size,
                                   cfg.num_proc)
            counts = f"{meta['train_tokens']:,} train and {meta['val_tokens']:,} val tokens"
        print(f"{out_dir}: vocabulary {meta['vocab_size']}, {counts} ({meta['dtype']})")


if __name__ == "__main__":
    main()
