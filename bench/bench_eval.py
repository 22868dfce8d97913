"""Log-likelihood requests per second in lm-evaluation-harness: our model (``gpt.eval.harness``) against lm-eval's
own ``hf`` backend on the same weights exported by ``export.py``, on the same requests (comus_cloze's contexts and
choices, as its task asks them), side by side, alternating, the median of ``--repeats`` rounds.

    python bench/bench_eval.py                                      # the default model's shape, char tokens
    python bench/bench_eval.py --model gpt2 --items 25              # GPT-2 124M's shape, GPT-2 tokens
    python bench/bench_eval.py --ckpt <run dir>/checkpoints/best.ckpt  # a trained checkpoint

Weights are random unless ``--ckpt`` gives them (the speed does not depend on them). Needs ``.[eval]``.
"""

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM

from gpt.data.hf import save_hf
from gpt.data.tokenizers import fit_tokenizer
from gpt.eval.harness import HarnessModel
from gpt.training.checkpoint import model_from_checkpoint

REPO = Path(__file__).resolve().parents[1]


def build(model_name: str, ckpt: str | None):
    """(model, tokenizer): a checkpoint's, or a random model of ``conf/model/<model_name>.yaml``'s shape."""
    if ckpt:
        model, tokenizer, _ = model_from_checkpoint(ckpt)
        return model, tokenizer
    kind = "gpt2" if model_name == "gpt2" else "char"
    tokenizer = fit_tokenizer(kind, [(REPO / "data" / "tinyshakespeare.txt").read_text(encoding="utf-8")])
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"model={model_name}", "paths.root_dir=.", "paths.output_dir=."])
    torch.manual_seed(0)
    return instantiate(cfg.model, vocab_size=tokenizer.vocab_size).build().eval(), tokenizer


def requests(items: int, tokenizer, block_size: int) -> list[Instance]:
    """The first ``items`` items whose choices fit the context (the hf backend refuses a longer continuation)."""
    lines = (REPO / "data" / "eval" / "comus_cloze.jsonl").read_text(encoding="utf-8").splitlines()
    docs = [doc for doc in map(json.loads, lines)
            if all(len(tokenizer.encode("\n" + choice)) <= block_size for choice in doc["choices"])][:items]
    return [Instance(request_type="loglikelihood", doc=doc, arguments=(doc["context"], choice), idx=i)
            for doc in docs for i, choice in enumerate(doc["choices"])]


def timed(lm, batch: list[Instance]) -> tuple[float, list[float]]:
    start = time.perf_counter()
    results = lm.loglikelihood(batch, disable_tqdm=True)
    return time.perf_counter() - start, [logprob for logprob, _ in results]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gpt", help="a config of conf/model/ (gpt: the default model)")
    parser.add_argument("--ckpt", help="a checkpoint to time instead of a random model")
    parser.add_argument("--items", type=int, default=200, help="comus_cloze items (four requests each)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    model, tokenizer = build(args.model, args.ckpt)
    batch = requests(args.items, tokenizer, model.block_size)
    with tempfile.TemporaryDirectory() as exported:
        save_hf(model, tokenizer, exported)
        backends = {"ours (gpt.eval.harness)": HarnessModel.from_model(model, tokenizer, args.batch_size),
                    "lm-eval hf backend": HFLM(pretrained=exported, batch_size=args.batch_size, device="cpu")}
        for lm in backends.values():
            timed(lm, batch[:8])  # warm-up
        seconds: dict[str, list[float]] = {name: [] for name in backends}
        logprobs = {}
        for _ in range(args.repeats):
            for name, lm in backends.items():
                elapsed, logprobs[name] = timed(lm, batch)
                seconds[name].append(elapsed)
    c = model.config
    print(f"{args.model} ({c.n_layer} layers, {c.n_embd} wide, context {c.block_size}, {tokenizer.kind} tokens), "
          f"{len(batch)} log-likelihood requests, batch {args.batch_size}, {torch.get_num_threads()} threads, "
          f"median of {args.repeats}")
    rates = {name: len(batch) / statistics.median(times) for name, times in seconds.items()}
    for name, rate in rates.items():
        print(f"{name:26s} {rate:8.1f} requests/s")
    ours, theirs = rates.values()
    largest = max(abs(a - b) for a, b in zip(*logprobs.values()))
    print(f"ours / hf: {ours / theirs:.2f}x; largest log-likelihood difference {largest:.1e}")


if __name__ == "__main__":
    main()
