import pytest
import torch

from gpt import UserError
from gpt.models.configs import BigramConfig, GPTConfig
from gpt.models.generate import GenerationSettings, sample_next


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
    assert untied.count_parameters() == model.count_parameters() + 50 * 32
    std = model.blocks[0].attn.proj.weight.std().item()
    assert std == pytest.approx(0.02 / (2 * 2) ** 0.5, rel=0.2)  # residual projections scaled by 1/sqrt(2 n_layer)


def test_vocab_padding_rows_are_no_tokens():
    model = tiny_gpt(pad_vocab_multiple=64).build()
    assert model.wte.weight.shape[0] == 64  # the matrix is padded for speed ...
    assert model(torch.zeros(1, 4, dtype=torch.long)).shape[-1] == 50  # ... but only real tokens get logits


def test_generate_crops_long_context():
    torch.manual_seed(0)
    for model in (tiny_gpt().build(), tiny_gpt(pos="rope").build(), BigramConfig(vocab_size=50, block_size=8).build()):
        prompt = torch.randint(0, 50, (2, 40))  # longer than block_size
        for use_cache in (True, False):
            settings = GenerationSettings(max_new_tokens=30, temperature=0.8, top_k=10, top_p=0.9, use_cache=use_cache)
            out = model.generate(prompt, settings)
            assert [len(row) for row in out] == [70, 70] and out[0][:40] == prompt[0].tolist()
            assert max(max(row) for row in out) < 50


@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_kv_cache_gives_the_same_greedy_tokens(pos):
    torch.manual_seed(0)
    model = tiny_gpt(pos=pos, block_size=32).build().eval()
    prompts = [[1, 2, 3, 4, 5], [7, 8], [9]]  # different lengths share one left-padded batch
    cached = model.generate(prompts, GenerationSettings(max_new_tokens=20, temperature=0, use_cache=True))
    recomputed = model.generate(prompts, GenerationSettings(max_new_tokens=20, temperature=0, use_cache=False))
    assert cached == recomputed
    alone = [model.generate([p], GenerationSettings(max_new_tokens=20, temperature=0))[0] for p in prompts]
    assert cached == alone  # padding next to longer prompts changes nothing


def sharp_gpt(pos: str) -> torch.nn.Module:
    """A random GPT whose attention is sharp, so that its next token depends on the whole context (at GPT-2's
    init it mostly follows the last token, and would hide a context that is cut short)."""
    torch.manual_seed(0)
    model = tiny_gpt(pos=pos).build().eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
    return model


@pytest.mark.parametrize("pos", ["learned", "rope"])
@pytest.mark.parametrize("use_cache", [True, False])
def test_each_prompt_of_a_batch_gets_what_it_gets_alone(pos, use_cache):
    model = sharp_gpt(pos)  # block_size 16
    prompts = [[3, 4], list(range(5, 19)), [7, 8, 9, 10, 11, 12, 13, 14, 15]]  # 2, 14 and 9 tokens
    batched = model.generate(prompts, GenerationSettings(max_new_tokens=14, temperature=0, use_cache=use_cache))
    settings = GenerationSettings(max_new_tokens=14, temperature=0, use_cache=use_cache)
    alone = [model.generate([p], settings)[0] for p in prompts]
    assert batched == alone


@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_past_the_context_the_cache_gives_the_tokens_of_recomputation(pos):
    model = sharp_gpt(pos)
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]]
    cached = model.generate(prompts, GenerationSettings(max_new_tokens=40, temperature=0, use_cache=True))
    assert cached == model.generate(prompts, GenerationSettings(max_new_tokens=40, temperature=0, use_cache=False))
    assert [len(row) for row in cached] == [43, 51]  # far past block_size=16


def test_generation_stops_at_end_token():
    model = tiny_gpt().build().eval()
    first = model.generate([[1, 2]], GenerationSettings(max_new_tokens=10, temperature=0))[0]
    eot = first[4]  # pretend the third new token is the end token
    out = model.generate([[1, 2]], GenerationSettings(max_new_tokens=10, temperature=0, stop_ids={eot}))[0]
    assert out[-1] == eot and len(out) <= 5 and out == first[: len(out)]


def test_top_p_keeps_the_nucleus():
    logits = torch.tensor([[5.0, 4.0, 0.0, -1.0]])
    assert all(sample_next(logits, 1.0, top_p=0.01).item() == 0 for _ in range(20))
    assert {sample_next(logits, 1.0, top_p=0.9).item() for _ in range(200)} == {0, 1}


@pytest.mark.parametrize("causal", [True, False])
def test_padding_does_not_change_real_positions(causal):
    torch.manual_seed(0)
    model = tiny_gpt(causal=causal).build().eval()
    short, long = torch.randint(0, 50, (1, 6)), torch.randint(0, 50, (1, 12))
    batch = torch.cat([torch.cat([short, torch.zeros(1, 6, dtype=torch.long)], dim=1), long])
    mask = torch.tensor([[True] * 6 + [False] * 6, [True] * 12])  # right padding, as in training batches
    padded = model(batch, attention_mask=mask)
    assert torch.allclose(padded[0, :6], model(short)[0], atol=1e-5)
    assert torch.allclose(padded[1], model(long)[0], atol=1e-5)


def test_bidirectional_attention_sees_the_future():
    model = tiny_gpt(causal=False).build().eval()
    idx = torch.randint(0, 50, (1, 16))
    changed = idx.clone()
    changed[0, 10] = (changed[0, 10] + 1) % 50
    assert not torch.allclose(model(idx)[0, :10], model(changed)[0, :10])


@pytest.mark.parametrize("options, message", [
    ({"n_embd": 30, "n_head": 4}, "divisible"),
    ({"pos": "alibi"}, "learned, rope"),
    ({"block_size": 0}, "block_size"),
    ({"n_embd": 20, "n_head": 4, "pos": "rope"}, "even head dimension"),
])
def test_bad_model_config(options, message):
    with pytest.raises(UserError, match=message):
        tiny_gpt(**options)


def test_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    idx = torch.randint(0, 50, (2, 16))
    grads = []
    for flag in (False, True):
        torch.manual_seed(1)
        model = tiny_gpt(activation_checkpointing=flag).build()
        model(idx).sum().backward()
        grads.append(model.wte.weight.grad)
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_rope_scores_depend_only_on_relative_position():
    from gpt.models.transformer import Rotary

    rotary = Rotary(tiny_gpt(pos="rope", block_size=64))
    q, k = torch.randn(1, 2, 8, 16), torch.randn(1, 2, 8, 16)
    positions = torch.arange(8)[None]
    scores = rotary(q, positions) @ rotary(k, positions).transpose(-1, -2)
    shifted = rotary(q, positions + 37) @ rotary(k, positions + 37).transpose(-1, -2)
    assert torch.allclose(scores, shifted, atol=1e-4)
    assert not torch.allclose(scores, q @ k.transpose(-1, -2), atol=1e-2)  # it does rotate


def test_swiglu_keeps_the_mlp_parameter_count():
    def mlp_params(mlp):
        return sum(p.numel() for p in tiny_gpt(n_embd=384, n_head=6, mlp=mlp, bias=False).build().blocks[0].mlp.parameters())
    assert mlp_params("swiglu") == mlp_params("gelu")  # hidden 2/3 * 4 * 384 = 1024 (a multiple of 64)
    assert abs(mlp_params("swiglu") / mlp_params("gelu") - 1) < 0.05


def test_suppressed_tokens_are_never_generated():
    torch.manual_seed(0)
    model = tiny_gpt().build().eval()
    out = model.generate([[1, 2]], GenerationSettings(max_new_tokens=200, temperature=2.0,
                                                               suppress_ids={3, 4, 5}))[0]
    assert len(out) == 202 and not {3, 4, 5} & set(out[2:])
