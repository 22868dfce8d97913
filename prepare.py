"""Tokenize UTF-8 text into token files and a tokenizer, where ``train.py`` finds them (90/10 train/val split by
default), with the same ``data`` keys as train.py:

    python prepare.py data.text_path=my.txt [data.tokenizer=char|gpt2|bpe] [data.vocab_size=4096 (bpe)]
    python prepare.py data=examples data.text_path=my.txt [data.example=line|paragraph|document]

``data.text_path`` may be a directory: every ``*.txt`` file in it and its subdirectories is one document.
"""

import hydra
from omegaconf import DictConfig

from gpt.checks import PREPARE
from gpt.cli import check_command_line, check_config, report_user_errors, stopped_by_signals
from gpt.corpus import prepare_examples, prepare_windows, prepared_dir


@hydra.main(version_base="1.3", config_path="conf", config_name="prepare")
def main(cfg: DictConfig) -> None:
    with report_user_errors(), stopped_by_signals():
        check_config(cfg, "python prepare.py", PREPARE)
        data, example = cfg.data, cfg.data.get("example")
        out_dir = cfg.out_dir or prepared_dir(data.cache_dir, data.text_path, data.tokenizer, data.vocab_size, example)
        if example:
            meta = prepare_examples(data.text_path, out_dir, example, data.tokenizer, data.vocab_size,
                                    data.val_fraction, cfg.num_proc)
            counts = f"{meta['train_examples']:,} train and {meta['examples'] - meta['train_examples']:,} val {example}s"
        else:
            meta = prepare_windows(data.text_path, out_dir, data.tokenizer, data.val_fraction, data.vocab_size,
                                   cfg.num_proc)
            counts = f"{meta['train_tokens']:,} train and {meta['val_tokens']:,} val tokens"
        print(f"{out_dir}: vocabulary {meta['vocab_size']}, {counts} ({meta['dtype']})")


if __name__ == "__main__":
    check_command_line("prepare", PREPARE)
    main()
