"""Parity with lm-eval's own ``hf`` backend: the same tasks on a checkpoint through our model (``gpt.eval.harness``)
and through ``hf`` on its Hugging Face export (``export.py``'s files), with every response compared.

    python bench/harness_parity.py --ckpt runs/first/checkpoints/best.ckpt --tasks comus_cloze,comus
    python bench/harness_parity.py --ckpt runs/addition/checkpoints/best.ckpt --tasks addition

Multiple-choice items with a choice longer than the model's context are left out of both: the ``hf`` backend
refuses them (ours crops the context, as it does a long context). Needs ``.[eval]``.
"""

import argparse
import json
import tempfile
import time

import lm_eval
from lm_eval.tasks import TaskManager

from gpt.data.hf import save_hf
from gpt.eval.harness import HARNESS_TASKS, HarnessModel
from gpt.training.checkpoint import model_from_checkpoint


def fitting_items(task: str, tokenizer, block_size: int) -> list[int] | None:
    """The items of a multiple-choice task of ours whose every choice (after the context's newline) fits."""
    path = HARNESS_TASKS.parent / f"{task}.jsonl"
    if task not in ("comus_cloze",) or not path.exists():
        return None
    docs = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [i for i, doc in enumerate(docs)
            if all(len(tokenizer.encode("\n" + choice)) <= block_size for choice in doc["choices"])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--tasks", default="comus_cloze,comus")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    tasks = args.tasks.split(",")
    model, tokenizer, _ = model_from_checkpoint(args.ckpt)
    samples = {task: items for task in tasks if (items := fitting_items(task, tokenizer, model.block_size))}
    results, seconds = {}, {}
    with tempfile.TemporaryDirectory() as exported:
        save_hf(model, tokenizer, exported)
        for name, backend, model_args in [("ours", HarnessModel.from_model(model, tokenizer, args.batch_size), None),
                                          ("hf", "hf", {"pretrained": exported})]:
            start = time.perf_counter()
            results[name] = lm_eval.simple_evaluate(
                model=backend, model_args=model_args, tasks=tasks, batch_size=args.batch_size, device="cpu",
                samples=samples or None, log_samples=True,
                task_manager=TaskManager(include_path=str(HARNESS_TASKS), include_defaults=False))
            seconds[name] = time.perf_counter() - start
    print(f"{args.ckpt}: ours {seconds['ours']:.1f} s, hf {seconds['hf']:.1f} s")
    print("| task | items | metric | ours | hf backend | largest log-likelihood difference | same greedy / texts |")
    print("|---|---|---|---|---|---|---|")
    for task in tasks:
        ours, theirs = (results[name]["samples"][task] for name in ("ours", "hf"))
        mine = [r for sample in ours for r in sample["filtered_resps"]]
        hf = [r for sample in theirs for r in sample["filtered_resps"]]
        numbers = [(a[0], b[0]) if isinstance(a, tuple) else (a, b) for a, b in zip(mine, hf)
                   if not isinstance(a, str)]
        largest = f"{max(abs(a - b) for a, b in numbers):.1e}" if numbers else "-"
        same = all((a[1] == b[1]) if isinstance(a, tuple) else a == b if isinstance(a, str) else True
                   for a, b in zip(mine, hf))
        for metric, value in results["ours"]["results"][task].items():
            if metric.endswith(",none") and "stderr" not in metric:
                print(f"| {task} | {len(ours)} | {metric.removesuffix(',none')} | {value:.4f} | "
                      f"{results['hf']['results'][task][metric]:.4f} | {largest} | {'yes' if same else 'NO'} |")


if __name__ == "__main__":
    main()
