"""Train a model: ``python train.py [overrides]`` (see README.md)."""

import hydra
from omegaconf import DictConfig

from gpt.cli import check_required, report_user_errors


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    with report_user_errors():
        check_required(cfg, "python train.py")
        # imported once Hydra has composed the config and set up logging: a bad override fails without waiting
        # seconds for Lightning, and Lightning's warnings go to the run's log
        from gpt.training import train


        return train(cfg)


if __name__ == "__main__":
    main()
