"""Prepare data where ``train.py`` finds it (``paths.data_dir``), with the same ``data`` keys as train.py: text
tokenized into token files and a tokenizer (90/10 train/val split by default), or any other format of ``conf/data``:

    python prepare.py data.text_path=my.txt [data.tokenizer=char|gpt2|bpe] [data.vocab_size=4096 (bpe)]
    python prepare.py data=examples data.text_path=my.txt [data.example=line|paragraph|document]
    python prepare.py data=jsonl data.text_path=qa.jsonl
    python prepare.py data=corpus data.text_path=fineweb/ [data.dedup=exact|minhash]   (parquet, JSONL, datasets)

``data.text_path`` may be a directory: every ``*.txt`` file in it and its subdirectories is one document.
"""

import hydra
from omegaconf import DictConfig

from gpt.cli.checks import PREPARE
from gpt.cli.command_line import check_command_line, check_config
from gpt.cli.errors import report_user_errors
from gpt.signals import stopped_by_signals, stops_deferred


@hydra.main(version_base="1.3", config_path="conf", config_name="prepare")
def main(cfg: DictConfig) -> None:
    with report_user_errors(), stopped_by_signals():
        check_config(cfg, "python prepare.py", PREPARE)
        from hydra.utils import instantiate  # the data format's own class prepares it (Lightning loads with it)

        with stops_deferred():  # the import of Lightning finishes before a stop (gpt.signals)
            datamodule = instantiate(cfg.data)
        datamodule.prepare_data()
        print(datamodule.prepared.describe())


if __name__ == "__main__":
    check_command_line("prepare", PREPARE, doc=__doc__)
    main()
