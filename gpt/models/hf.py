"""GPT-2 weights in Hugging Face's format (``GPT2LMHeadModel``) to our ``GPT`` and back, and its ``config.json``.

HF's GPT-2 stores its linear layers as ``Conv1D`` with weights of shape (in, out): they are transposed on the way in
and out. Our embedding may be padded to a multiple of 64 rows; the padding rows are zero on import and dropped on
export (they never receive probability). The tokenizer's files are ``gpt.data.hf``'s.
"""

from dataclasses import replace
from pathlib import Path

import torch

from gpt import UserError
from gpt.models.configs import GPTConfig

# our name -> HF name, with {i} the layer number
_LAYER_NAMES = {
    "norm1.weight": "ln_1.weight", "norm1.bias": "ln_1.bias",
    "attn.qkv.weight": "attn.c_attn.weight", "attn.qkv.bias": "attn.c_attn.bias",
    "attn.proj.weight": "attn.c_proj.weight", "attn.proj.bias": "attn.c_proj.bias",
    "norm2.weight": "ln_2.weight", "norm2.bias": "ln_2.bias",
    "mlp.fc.weight": "mlp.c_fc.weight", "mlp.fc.bias": "mlp.c_fc.bias",
    "mlp.proj.weight": "mlp.c_proj.weight", "mlp.proj.bias": "mlp.c_proj.bias",
}
_TOP_NAMES = {"wte.weight": "wte.weight", "wpe.weight": "wpe.weight",
              "norm_f.weight": "ln_f.weight", "norm_f.bias": "ln_f.bias"}
_CONV1D = ("attn.qkv.weight", "attn.proj.weight", "mlp.fc.weight", "mlp.proj.weight")


def name_map(n_layer: int) -> dict[str, str]:
    names = dict(_TOP_NAMES)
    for i in range(n_layer):
        names.update({f"blocks.{i}.{ours}": f"h.{i}.{theirs}" for ours, theirs in _LAYER_NAMES.items()})
    return names


def read_hf_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Weights from a ``.safetensors`` or ``.bin`` file, or a directory holding ``model.safetensors``
    or ``pytorch_model.bin``, with the ``transformer.`` prefix removed."""
    path = Path(path)
    if path.is_dir():
        path = next((path / n for n in ("model.safetensors", "pytorch_model.bin") if (path / n).is_file()), path)
    if not path.is_file():
        raise UserError(f"Hugging Face weights not found: {path}; pass a .safetensors/.bin file or its directory")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"cannot read Hugging Face weights from {path} ({type(e).__name__}: {e})") from None
    return {key.removeprefix("transformer."): value for key, value in state.items()}


def gpt2_from_hf(hf_state: dict[str, torch.Tensor], config):
    """Our GPT of ``config``'s shape holding HF GPT-2 weights, at their own context length (the rows of their
    position embedding; ``crop_block_size`` shortens it); every shape is checked first."""
    refuse_non_gpt2(config, "GPT-2 weights need a model shaped like GPT-2 (model=gpt2 is)")
    if config.mlp != "gelu_tanh":
        raise UserError("GPT-2 weights need GPT-2's GELU, model.mlp=gelu_tanh (model=gpt2 sets it)")
    if "wpe.weight" not in hf_state:
        raise UserError("the Hugging Face weights have no tensor 'wpe.weight'; is this a GPT-2 checkpoint?")
    model = replace(config, block_size=hf_state["wpe.weight"].shape[0]).build()
    ours = model.state_dict()
    state = {}
    for our_name, hf_name in name_map(config.n_layer).items():
        if hf_name not in hf_state:
            raise UserError(f"the Hugging Face weights have no tensor {hf_name!r}; is this a GPT-2 checkpoint?")
        tensor = hf_state[hf_name]
        if our_name.endswith(_CONV1D):
            tensor = tensor.t()
        if our_name == "wte.weight":
            tensor = _pad_rows(tensor, ours[our_name].shape[0])
        if tensor.shape != ours[our_name].shape:
            raise UserError(f"shape mismatch at {hf_name}: the weights have {tuple(tensor.shape)}, the model "
                            f"expects {tuple(ours[our_name].shape)}; choose the model config that matches them")
        state[our_name] = tensor.to(ours[our_name].dtype)
    state["lm_head.weight"] = state["wte.weight"]
    model.load_state_dict(state)
    return model


def refuse_non_gpt2(config, what: str) -> None:
    """Stop unless ``config`` is a GPT-2 architecture, which is all that HF's GPT-2 classes can hold."""
    if not isinstance(config, GPTConfig):
        raise UserError(f"{what}; this one is a {type(config).__name__}")
    differences = {
        "model.pos=learned": config.pos == "learned", "model.mlp=gelu or gelu_tanh": config.mlp != "swiglu",
        "model.norm=layernorm": config.norm == "layernorm", "model.bias=true": config.bias,
        "model.tie_weights=true (GPT-2 has no separate lm_head)": config.tie_weights,
        "model.causal=true (GPT-2 attends to the past only)": config.causal,
        "model.parametrization=standard": config.parametrization == "standard",
    }
    missing = [needed for needed, holds in differences.items() if not holds]
    if missing:
        raise UserError(f"{what}; this one needs {', '.join(missing)}")


def to_hf(model) -> dict[str, torch.Tensor]:
    """HF ``GPT2LMHeadModel`` weights (``transformer.`` prefix, Conv1D layout) from our GPT."""
    config = model.config
    refuse_non_gpt2(config, "only GPT-2-shaped models export to Hugging Face's GPT-2 format")
    ours = model.state_dict()
    hf = {}
    for our_name, hf_name in name_map(config.n_layer).items():
        tensor = ours[our_name]
        if our_name.endswith(_CONV1D):
            tensor = tensor.t()
        if our_name == "wte.weight":
            tensor = tensor[: config.vocab_size]
        hf[f"transformer.{hf_name}"] = tensor.contiguous().clone()
    return hf  # lm_head.weight is tied to wte in GPT-2, so HF leaves it out of its files too


def hf_config(c, eot_id: int | None, pad_id: int | None) -> dict:
    """``config.json`` of a GPT-2-shaped model, with the ids of its tokenizer's end and padding tokens."""
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": c.vocab_size,
            "n_positions": c.block_size, "n_embd": c.n_embd, "n_layer": c.n_layer, "n_head": c.n_head,
            "activation_function": "gelu_new" if c.mlp == "gelu_tanh" else "gelu", "layer_norm_epsilon": 1e-5,
            "tie_word_embeddings": True, "bos_token_id": eot_id, "eos_token_id": eot_id, "pad_token_id": pad_id}


def _pad_rows(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    if tensor.shape[0] >= rows:
        return tensor
    return torch.cat([tensor, tensor.new_zeros(rows - tensor.shape[0], *tensor.shape[1:])])
