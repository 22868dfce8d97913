"""μP (model.parametrization=mup): the coordinate check of Tensor Programs V on Tiny Shakespeare. After a few Adam
steps, the size of every layer's activations must not depend on the width; in the standard parametrization it grows."""

import torch

from gpt.data.tokenizers import CharTokenizer
from gpt.models.configs import GPTConfig
from gpt.models.interface import cross_entropy
from gpt.training.optim import build_optimizer

from conftest import SHAKESPEARE

WIDTHS = (64, 128, 256, 512)


def activation_sizes(parametrization: str, width: int, text_ids: torch.Tensor, steps: int = 5) -> dict[str, float]:
    """Mean |activation| of the embedding, each block and the logits, in the forward pass of step ``steps``."""
    torch.manual_seed(0)
    model = GPTConfig(vocab_size=68, block_size=32, n_layer=2, n_head=4, n_embd=width, parametrization=parametrization,
                      base_width=64).build()
    optimizer = build_optimizer(model, lambda groups: torch.optim.AdamW(groups, lr=1e-2, weight_decay=0.0))
    sizes = {}
    layers = {"embedding": model.wte, **{f"block {i}": block for i, block in enumerate(model.blocks)}, "logits": model}
    for name, layer in layers.items():
        layer.register_forward_hook(lambda module, args, out, name=name: sizes.__setitem__(name, out.abs().mean().item()))
    data = torch.Generator().manual_seed(1)
    for _ in range(steps + 1):
        starts = torch.randint(0, len(text_ids) - 33, (16,), generator=data)
        windows = torch.stack([text_ids[s:s + 33] for s in starts])
        loss = cross_entropy(model(windows[:, :-1]), windows[:, 1:])  # the logits pass through the hook
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return sizes  # of the last forward pass: after `steps` updates


def test_coordinate_check():
    text = SHAKESPEARE.read_text()[:200_000]
    text_ids = torch.tensor(CharTokenizer.fit([text]).encode(text))
    table = {p: {w: activation_sizes(p, w, text_ids) for w in WIDTHS} for p in ("standard", "mup")}
    spread = {}
    for parametrization, by_width in table.items():
        print(f"\n{parametrization}: mean |activation| at step 5, widths {WIDTHS}")
        for layer in by_width[WIDTHS[0]]:
            sizes = [by_width[w][layer] for w in WIDTHS]
            spread[parametrization, layer] = max(sizes) / min(sizes)
            print(f"  {layer:10s} " + " ".join(f"{s:8.4f}" for s in sizes) + f"   max/min {spread[parametrization, layer]:.2f}")
    assert all(spread["mup", layer] <= 2 for layer in table["mup"][WIDTHS[0]])
    assert spread["standard", "logits"] > 2  # what μP is for: without it, the output grows with the width
