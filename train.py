"""Train a model: ``python train.py [group=option ...] [key=value ...]``, composed by Hydra from conf/train.yaml.

    python train.py                                     # a char GPT on Tiny Shakespeare, 2000 steps
    python train.py model=gpt2 data=text data.text_path=my.txt
    python train.py hydra.run.dir=runs/a ckpt_path=last # resume the run of runs/a
    python train.py -m optim.lr=1e-3,3e-4               # a sweep: one job per value

docs/training.md says more.
"""

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from gpt.cli.checks import TRAIN
from gpt.cli.command_line import check_command_line, check_config, check_train
from gpt.cli.errors import remove_if_unstarted, report_user_errors
from gpt.signals import stopped_by_signals, stops_deferred


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    run_dir = HydraConfig.get().runtime.output_dir
    with report_user_errors(run_dir), stopped_by_signals():
        check_config(cfg, "python train.py", TRAIN)
        # imported once the config is checked: a mistake is found without waiting seconds for torch and Lightning,
        # and Lightning's warnings go to the run's log
        with stops_deferred():
            from gpt.training.run import train

        best = train(cfg)
        if cfg.trainer.get("fast_dev_run"):
            remove_if_unstarted(run_dir)  # it wrote nothing: no directory of its own is left either
        return best


if __name__ == "__main__":
    check_command_line("train", TRAIN, also=check_train, doc=__doc__)
    main()
