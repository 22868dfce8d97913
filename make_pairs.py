"""Comparison pairs for ``lm=dpo`` from a checkpoint's own answers:

    python make_pairs.py ckpt_path=runs/addition/checkpoints/best.ckpt experiment=addition out_path=pairs.jsonl
    python make_pairs.py ckpt_path=<run>/checkpoints/best.ckpt data=jsonl data.text_path=qa.jsonl samples=16

The problems are the training split of the data the checkpoint was trained on (give the same data keys, or the
same ``experiment=``); its held-out problems are used only with ``held_out=true``, which writes pairs of them to
measure a reward model or DPO on (their ``data.val_path``), never to train on. ``samples`` answers are sampled per
problem at ``temperature``, in batches with the KV cache, and checked; each problem with both a right and a wrong
answer gives a pair of its answer (chosen) and each distinct wrong answer that ended (rejected). Prints the counts.
"""

import json
from pathlib import Path

import hydra
from omegaconf import DictConfig

from gpt import UserError
from gpt.cli.checks import MAKE_PAIRS
from gpt.cli.command_line import check_command_line, check_config
from gpt.cli.errors import report_user_errors
from gpt.files import atomic_write_text
from gpt.signals import stopped_by_signals, stops_deferred


@hydra.main(version_base="1.3", config_path="conf", config_name="make_pairs")
def main(cfg: DictConfig) -> None:
    with report_user_errors(), stopped_by_signals():
        check_config(cfg, "python make_pairs.py", MAKE_PAIRS)
        with stops_deferred():  # the imports of torch and Lightning finish before a stop (gpt.signals)
            import torch
            from hydra.utils import instantiate

            from gpt.eval.sampled_pairs import sample_pairs
            from gpt.training.checkpoint import check_tokenizer, model_from_checkpoint

        model, tokenizer, record = model_from_checkpoint(cfg.ckpt_path)
        datamodule = instantiate(cfg.data)
        datamodule.prepare_data()
        check_tokenizer(record.tokenizer, datamodule.tokenizer, f"ckpt_path={cfg.ckpt_path}")
        prompts_and_answers = getattr(datamodule, "prompts_and_answers", None)
        if prompts_and_answers is None:
            raise UserError("make_pairs.py needs data with answers to check (data=arithmetic, data=jsonl); give the "
                            "data keys the checkpoint was trained with")
        data = datamodule.prepared
        first, end = (data.n_train_examples, data.n_examples) if cfg.held_out else (0, data.n_train_examples)
        problems = prompts_and_answers(range(first, min(end, first + (cfg.problems or end))))
        torch.manual_seed(cfg.seed)
        model.to(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        counts = sample_pairs(model, tokenizer, problems, cfg.samples, cfg.temperature, cfg.batch_size)
        if not counts.pairs:
            raise UserError(f"{counts.summary()}; no problem had both a right and a wrong answer, so there is nothing "
                            "to prefer: raise samples or temperature (or use a checkpoint trained less)")
        atomic_write_text(Path(cfg.out_path), "".join(json.dumps(pair) + "\n" for pair in counts.pairs))
        print(f"{counts.summary()}; wrote {cfg.out_path}")


if __name__ == "__main__":
    check_command_line("make_pairs", MAKE_PAIRS, doc=__doc__)
    main()
