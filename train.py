"""Train a model: ``python train.py [overrides]`` (see README.md)."""

import hydra
from omegaconf import DictConfig

from gpt.cli import report_user_errors
from gpt.training import train


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    with report_user_errors():
        return train(cfg)


if __name__ == "__main__":
    main()
