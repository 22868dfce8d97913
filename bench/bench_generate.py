"""Generation speed with and without the KV cache (same model, same greedy tokens).

    python bench/bench_generate.py                       # the baby-GPT char model (6x384, context 256), CPU or GPU
    python bench/bench_generate.py --model gpt2 --batch 16   # GPT-2 124M (a GPU)

By default the prompt and the new tokens fill the context: past it, each token is computed afresh with or
without the cache (see ``gpt.generate.GenerationMixin``), so only the tokens within the context show the cache's gain.
"""

import argparse
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from gpt.models.generate import GenerationSettings

REPO = Path(__file__).resolve().parents[1]
BABY_GPT = {"block_size": 256, "n_layer": 6, "n_head": 6, "n_embd": 384}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gpt", help="a config in conf/model/ (gpt: the baby-GPT char shape)")
    parser.add_argument("--new-tokens", type=int, help="default: as many as fill the context")
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    shape = BABY_GPT if args.model == "gpt" else {}
    vocab = 65 if args.model == "gpt" else 50257
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"model={args.model}", "paths.root_dir=.", "paths.output_dir=."])
    config = instantiate(cfg.model, vocab_size=vocab, **shape)
    args.new_tokens = args.new_tokens or config.block_size - 3
    torch.manual_seed(0)
    model = config.build().to(device).eval()
    prompts = [[1, 2, 3]] * args.batch
    model.generate(prompts, GenerationSettings(max_new_tokens=20, temperature=0))  # warm-up
    rates = {}
    for use_cache in (False, True):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        settings = GenerationSettings(max_new_tokens=args.new_tokens, temperature=0, use_cache=use_cache)
        out = model.generate(prompts, settings)
        if device == "cuda":
            torch.cuda.synchronize()
        rates[use_cache] = args.batch * args.new_tokens / (time.perf_counter() - start)
        assert len(out[0]) == 3 + args.new_tokens
    print(f"{args.model} ({config.n_layer} layers, {config.n_embd} wide, context {config.block_size}) on {device}, "
          f"{args.new_tokens} new tokens, batch {args.batch}")
    print(f"without cache: {rates[False]:,.0f} tokens/s\nwith KV cache: {rates[True]:,.0f} tokens/s\n"
          f"speed-up: {rates[True] / rates[False]:.1f}x")


if __name__ == "__main__":
    main()
