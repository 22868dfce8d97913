"""int8 weights against fp32 on the CPU (``sample.py quantize=int8``): weight memory, generation tokens/s, and what
the model still does: exact match on the 1,000 held-out problems of ``experiment=addition``, val/loss on Tiny
Shakespeare's validation windows for a model trained on its characters.

    python bench/bench_int8.py --addition runs/addition/checkpoints/best.ckpt --text runs/first/checkpoints/best.ckpt
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: the package is beside it

from gpt.data.arithmetic import ArithmeticDataModule
from gpt.data.windows import WindowsDataModule  # noqa: E402
from gpt.eval.exact_match import score_answers  # noqa: E402
from gpt.models.generate import GenerationSettings
from gpt.models.quantize import quantize_int8, weight_bytes  # noqa: E402
from gpt.training.checkpoint import check_tokenizer, model_from_checkpoint  # noqa: E402

ARITHMETIC_KEYS = ("operation", "digits", "format", "zero_pad", "train_examples", "test_examples", "seed")


def generation_speed(model, batch: int, repeats: int = 3) -> float:
    """Tokens/s of greedy generation with the KV cache, each prompt one token, filling the context."""
    new_tokens = model.block_size - 1
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        model.generate([[1]] * batch, GenerationSettings(max_new_tokens=new_tokens, temperature=0))
        best = max(best, batch * new_tokens / (time.perf_counter() - start))
    return best


@torch.no_grad()
def val_loss(model, data: WindowsDataModule) -> float:
    losses, counts = [], []
    for batch in data.val_dataloader():
        losses.append(model(batch["input_ids"], labels=batch["labels"]) * batch["labels"].numel())
        counts.append(batch["labels"].numel())
    return float(sum(losses) / sum(counts))


def measure(path: Path, quality) -> dict:
    """Weights, speed at batch 1 and 64, and ``quality(model, tokenizer)``, in fp32 and with int8 weights."""
    rows = {}
    for precision in ("fp32", "int8"):
        model, tokenizer, _ = model_from_checkpoint(path)
        if precision == "int8":
            quantize_int8(model)
        rows[precision] = {"bytes": weight_bytes(model), "batch 1": generation_speed(model, 1),
                           "batch 64": generation_speed(model, 64), "quality": quality(model, tokenizer)}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--addition", type=Path, help="a checkpoint of python train.py experiment=addition")
    parser.add_argument("--text", type=Path, help="a checkpoint of a char model of Tiny Shakespeare (python train.py)")
    args = parser.parse_args()
    torch.manual_seed(0)
    results = {}
    with tempfile.TemporaryDirectory() as cache:
        if args.addition:  # the held-out problems of the run that trained the checkpoint
            model, _, record = model_from_checkpoint(args.addition)
            data = ArithmeticDataModule(cache_dir=cache, block_size=model.block_size, batch_size=256,
                                        **{key: record.config["data"][key] for key in ARITHMETIC_KEYS})
            data.prepare_data()
            pairs = data.held_out_answers()

            def exact_match(model, tokenizer):
                check_tokenizer(tokenizer.to_dict(), data.tokenizer, f"--addition {args.addition}")
                return f"exact match {score_answers(model, tokenizer, pairs)[0]:.3f}"
            results["addition (experiment=addition)"] = measure(args.addition, exact_match)
        if args.text:
            def shakespeare_loss(model, tokenizer):
                text = WindowsDataModule(text_path=str(REPO / "data" / "tinyshakespeare.txt"), cache_dir=cache,
                                         block_size=model.block_size, batch_size=64)
                text.prepare_data()
                check_tokenizer(tokenizer.to_dict(), text.tokenizer, f"--text {args.text}")
                return f"val/loss {val_loss(model, text):.4f}"
            results["Tiny Shakespeare chars (python train.py)"] = measure(args.text, shakespeare_loss)
    print(f"\nCPU ({torch.get_num_threads()} threads), torch {torch.__version__}; generation: greedy, KV cache, "
          "one-token prompts filling the context, best of 3\n")
    print("| model | weights | MB | tokens/s, batch 1 | tokens/s, batch 64 | quality |\n|---|---|---|---|---|---|")
    for name, rows in results.items():
        for precision, row in rows.items():
            print(f"| {name} | {precision} | {row['bytes'] / 1e6:.2f} | {row['batch 1']:,.0f} | "
                  f"{row['batch 64']:,.0f} | {row['quality']} |")


if __name__ == "__main__":
    main()
