import pytest
import torch

from gpt import UserError
from gpt.model import BigramConfig, GPTConfig, count_parameters


def tiny_gpt(**options) -> GPTConfig:
    return GPTConfig(**{"vocab_size": 50, "block_size": 16, "n_layer": 2, "n_head": 2, "n_embd": 32, **options})


@pytest.mark.parametrize("options", [{}, {"pos": "rope"}, {"mlp": "swiglu", "norm": "rmsnorm", "bias": False}])
def test_logits_shape_and_causality(options):
    torch.manual_seed(0)
    model = tiny_gpt(**options).build().eval()
    idx = torch.randint(0, 50, (3, 16))
    logits = model(idx)
    assert logits.shape == (3, 16, 50)
    changed = idx.clone()
    changed[:, 10] = (changed[:, 10] + 1) % 50
    new_logits = model(changed)
    assert torch.equal(logits[:, :10], new_logits[:, :10])  # the past never sees the future
    assert not torch.allclose(logits[:, 10:], new_logits[:, 10:])


def test_weight_tying_and_gpt2_init():
    model = tiny_gpt().build()
    assert model.lm_head.weight is model.wte.weight
    untied = tiny_gpt(tie_weights=False).build()
    assert count_parameters(untied) == count_parameters(model) + 50 * 32
    std = model.blocks[0].attn.proj.weight.std().item()
    assert std == pytest.approx(0.02 / (2 * 2) ** 0.5, rel=0.2)  # residual projections scaled by 1/sqrt(2 n_layer)


def test_vocab_padding():
    model = tiny_gpt(pad_vocab_multiple=64).build()
    assert model.wte.weight.shape[0] == 64
    assert model(torch.zeros(1, 4, dtype=torch.long)).shape[-1] == 64


def test_generate_crops_long_context():
    torch.manual_seed(0)
    for model in (tiny_gpt().build(), BigramConfig(vocab_size=50, block_size=8).build()):
        prompt = torch.randint(0, 50, (2, 40))  # longer than block_size
        out = model.generate(prompt, max_new_tokens=5, temperature=0.8, top_k=10)
        assert out.shape == (2, 45) and torch.equal(out[:, :40], prompt)
        assert out.max() < 50


@pytest.mark.parametrize("options, message", [
    ({"n_embd": 30, "n_head": 4}, "divisible"),
    ({"pos": "alibi"}, "learned, rope"),
    ({"block_size": 0}, "block_size"),
    ({"n_embd": 20, "n_head": 4, "pos": "rope"}, "even head dimension"),
])
def test_bad_model_config(options, message):
    with pytest.raises(UserError, match=message):
        tiny_gpt(**options)
