"""Decoder GPT and a bigram baseline as plain ``nn.Module``s (no Lightning here)."""

import math
from collections.abc import Collection
from dataclasses import dataclass, fields

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from gpt import IGNORE_INDEX, UserError, check_positive

POSITIONS = ("learned", "rope")
MLPS = ("gelu", "gelu_tanh", "swiglu")  # gelu: exact (erf); gelu_tanh: GPT-2's tanh approximation
NORMS = ("layernorm", "rmsnorm")
PARAMETRIZATIONS = ("standard", "mup")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UserError(f"model.{name}={value!r} is not a valid option; choose one of {', '.join(choices)}")


def _check_fields(config) -> None:
    """Hydra passes values as written on the command line: check each field's type and sign."""
    for field in fields(config):
        value = getattr(config, field.name)
        if field.type in (int, float) and field.name != "dropout":
            check_positive(f"model.{field.name}", value, field.type)
        elif field.type in (bool, str) and not isinstance(value, field.type):
            raise UserError(f"model.{field.name} must be a {field.type.__name__}, got {value!r}")


@dataclass
class GPTConfig:
    """Shape and options of a GPT. ``vocab_size`` comes from the tokenizer at build time."""

    vocab_size: int = 0
    block_size: int = 256
    n_layer: int = 6
    n_head: int = 6
    n_embd: int = 384
    dropout: float = 0.0
    bias: bool = True
    tie_weights: bool = True
    pad_vocab_multiple: int = 1  # GPT-2 pads 50257 to 50304 (a multiple of 64) for faster matmuls
    pos: str = "learned"
    mlp: str = "gelu"
    norm: str = "layernorm"
    rope_base: float = 10000.0
    causal: bool = True  # False: bidirectional attention, for masked-LM training
    activation_checkpointing: bool = False  # recompute each block's activations in backward: less memory
    # mup: the maximal update parametrization (Tensor Programs V), under which the best learning rate found at
    # base_width carries over to wider models; at n_embd == base_width it equals the standard one
    parametrization: str = "standard"
    base_width: int = 128

    def __post_init__(self):
        _check_fields(self)
        _check_choice("pos", self.pos, POSITIONS)
        _check_choice("mlp", self.mlp, MLPS)
        _check_choice("norm", self.norm, NORMS)
        _check_choice("parametrization", self.parametrization, PARAMETRIZATIONS)
        if self.n_embd % self.n_head:
            raise UserError(f"model.n_embd={self.n_embd} must be divisible by model.n_head={self.n_head}")
        if self.pos == "rope" and self.head_dim % 2:
            raise UserError(f"model.pos=rope needs an even head dimension, got n_embd/n_head={self.head_dim}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise UserError(f"model.dropout must be in [0, 1), got {self.dropout}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def padded_vocab_size(self) -> int:
        return math.ceil(self.vocab_size / self.pad_vocab_multiple) * self.pad_vocab_multiple

    @property
    def width_mult(self) -> float:
        """How many times wider than ``base_width`` the model is under μP; 1 in the standard parametrization."""
        return self.n_embd / self.base_width if self.parametrization == "mup" else 1.0

    @property
    def attention_scale(self) -> float:
        """1/sqrt(head_dim) in the standard parametrization; μP scales by 1/head_dim instead, with the factor
        that makes both agree at the base width (widen n_embd, not n_head)."""
        return 1 / math.sqrt(self.head_dim * self.width_mult)

    def build(self) -> "GPT":
        return GPT(self)


@dataclass
class BigramConfig:
    """The baseline: the next token depends only on the current one."""

    vocab_size: int = 0
    block_size: int = 64  # only sets the length of training windows and of the context when sampling

    def __post_init__(self):
        _check_fields(self)

    def build(self) -> "Bigram":
        return Bigram(self)


class KVCache:
    """Keys and values of every layer for the positions seen so far, so each new token costs one step."""

    def __init__(self, n_layer: int, batch: int, n_head: int, length: int, head_dim: int,
                 device: torch.device, dtype: torch.dtype):
        shape = (n_layer, batch, n_head, length, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0  # slots filled

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this step's keys/values (B, H, T, D) after the filled slots; return all filled slots."""
        end = self.length + k.size(2)
        self.k[layer, :, :, self.length:end] = k
        self.v[layer, :, :, self.length:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


class Generator(nn.Module):
    """Autoregressive sampling for a model mapping token ids (B, T) to logits (B, T, V).

    Prompts of different lengths go in one batch, left-padded, with an attention mask; each prompt gets the
    tokens it would get alone. Each new token is predicted from the last ``block_size`` tokens of its sequence.
    Models with a ``new_cache`` method keep a KV cache while the sequence fits the context, so that each new
    token costs one step. Past ``block_size`` tokens the window slides, which changes every cached key and value:
    each new token is then computed afresh from the last ``block_size`` tokens. The cache therefore never changes
    the tokens, only the speed up to ``block_size``."""

    def __init__(self, config: "GPTConfig | BigramConfig"):
        super().__init__()
        self.config, self.block_size, self.vocab_size = config, config.block_size, config.vocab_size

    @torch.no_grad()
    def generate(self, prompts: list[list[int]] | torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, eot_id: int | None = None,
                 use_cache: bool = True, suppress_ids: Collection[int] = ()) -> list[list[int]]:
        """Each prompt followed by its new tokens (up to and including ``eot_id`` when it comes); the tokens
        of ``suppress_ids`` (such as ``[PAD]``, ``[MASK]``) are never generated. Batching and the KV cache past
        ``block_size``: see the class docstring."""
        idx, mask = left_pad(prompts, next(self.parameters()).device)
        prompt_width, cache = idx.size(1), None
        padded = not bool(mask.all())  # without padding, attention needs no mask tensor
        finished = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
        for _ in range(max_new_tokens):
            if use_cache and hasattr(self, "new_cache") and idx.size(1) <= self.block_size:
                new = idx if cache is None else idx[:, -1:]  # the cache holds every column before the last
                cache = cache or self.new_cache(idx.size(0))
                logits = self(new, attention_mask=mask if padded else None, cache=cache)
            else:
                logits = self(idx[:, -self.block_size:], attention_mask=mask[:, -self.block_size:] if padded else None)
            next_logits = logits[:, -1]
            if suppress_ids:
                next_logits = next_logits.index_fill(-1, torch.tensor(list(suppress_ids), device=idx.device),
                                                     float("-inf"))
            next_id = sample_next(next_logits, temperature, top_k, top_p)
            idx, mask = torch.cat([idx, next_id], dim=1), F.pad(mask, (0, 1), value=True)
            if eot_id is not None:
                finished |= next_id.squeeze(1) == eot_id
                if finished.all():
                    break
        return [strip_generated(row[m].tolist(), int(m[:prompt_width].sum()), eot_id)
                for row, m in zip(idx, mask)]


def left_pad(prompts: list[list[int]] | torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask) of shape (B, longest prompt), prompts aligned to the right."""
    if isinstance(prompts, torch.Tensor):
        return prompts.to(device), torch.ones_like(prompts, dtype=torch.bool, device=device)
    if not prompts or min(len(p) for p in prompts) == 0:
        raise ValueError("every prompt needs at least one token")
    width = max(len(p) for p in prompts)
    idx = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros(len(prompts), width, dtype=torch.bool)
    for row, prompt in enumerate(prompts):
        idx[row, width - len(prompt):] = torch.tensor(prompt)
        mask[row, width - len(prompt):] = True
    return idx.to(device), mask.to(device)


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Position of each token counted over the real (unmasked) tokens of its row."""
    return (mask.long().cumsum(dim=1) - 1).clamp(min=0)


def strip_generated(ids: list[int], prompt_length: int, eot_id: int | None) -> list[int]:
    if eot_id is not None and eot_id in ids[prompt_length:]:
        return ids[: ids.index(eot_id, prompt_length) + 1]
    return ids


def sample_next(logits: torch.Tensor, temperature: float, top_k: int | None = None,
                top_p: float | None = None) -> torch.Tensor:
    """One token id per row of ``logits`` (B, V); temperature 0 means greedy."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        before = sorted_logits.softmax(dim=-1).cumsum(dim=-1) - sorted_logits.softmax(dim=-1)
        drop = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, order, before > top_p)
        logits = logits.masked_fill(drop, float("-inf"))  # keep the smallest set whose mass reaches top_p
    return torch.multinomial(F.softmax(logits, dim=-1), num_samples=1)


@torch.no_grad()
def fill_masks(model: nn.Module, ids: list[int], mask_id: int, special_ids: Collection[int],
               top_k: int) -> tuple[list[int], list[list[tuple[int, float]]]]:
    """Predict every ``mask_id`` of ``ids`` at once with a masked LM: (``ids`` with each mask replaced by its
    most likely token, and for each mask its ``top_k`` candidates as (token id, probability)). Special
    tokens are never candidates."""
    device = next(model.parameters()).device
    logits = model(torch.tensor([ids], device=device))[0].float()
    logits[:, list(special_ids)] = float("-inf")
    positions = [i for i, token in enumerate(ids) if token == mask_id]
    probs, candidates = logits[positions].softmax(dim=-1).topk(min(top_k, model.vocab_size - len(special_ids)), dim=-1)
    filled = list(ids)
    for position, best in zip(positions, candidates[:, 0].tolist()):
        filled[position] = best
    return filled, [list(zip(c, p)) for c, p in zip(candidates.tolist(), probs.tolist())]


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean loss over the positions with a label (not -100); 0, not NaN, when a batch has none."""
    loss = F.cross_entropy(logits.flatten(0, -2).float(), labels.flatten(), ignore_index=IGNORE_INDEX,
                           reduction="sum")
    return loss / (labels != IGNORE_INDEX).sum().clamp(min=1)


def param_groups(model: nn.Module) -> list[dict]:
    """Parameter groups for AdamW: weight decay on matrices only, not on biases, norms and gains. Under μP the
    hidden matrices learn at lr / width_mult (the ``lr_scale`` of their group), the rest at lr."""
    hidden = {id(p) for p in model.hidden_matrices()} if hasattr(model, "hidden_matrices") else set()
    width_mult = getattr(getattr(model, "config", None), "width_mult", 1.0)
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2 and id(p) not in hidden]},
        {"params": [p for p in params if id(p) in hidden], "lr_scale": 1 / width_mult},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return [group for group in groups if group["params"]]


def apply_lr_scales(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """Scale each group's lr by its ``lr_scale`` (from ``param_groups``): an optimizer is made with one lr."""
    for group in optimizer.param_groups:
        group["lr"] *= group.get("lr_scale", 1.0)
    return optimizer


def count_parameters(model: nn.Module) -> int:
    """Trainable weights, tied embeddings counted once and vocabulary padding rows not at all."""
    n = sum(p.numel() for p in model.parameters())
    config = getattr(model, "config", None)
    if isinstance(config, GPTConfig):
        n -= (config.padded_vocab_size - config.vocab_size) * config.n_embd * (1 if config.tie_weights else 2)
    return n


class Bigram(Generator):
    def __init__(self, config: BigramConfig):
        super().__init__(config)
        self.logits_table = nn.Embedding(config.vocab_size, config.vocab_size)

    def forward(self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None, **_) -> torch.Tensor:
        return self.logits_table(idx)


def _norm(config: GPTConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.n_embd)
    return nn.LayerNorm(config.n_embd, bias=config.bias)


class Rotary(nn.Module):
    """Rotary position embedding: rotates query/key channel pairs by a position-dependent angle."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        freqs = config.rope_base ** (-torch.arange(0, config.head_dim, 2).float() / config.head_dim)
        angles = torch.outer(torch.arange(config.block_size).float(), freqs)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x: (B, H, T, D); positions: (B, T)."""
        cos, sin = self.cos[positions].unsqueeze(1), self.sin[positions].unsqueeze(1)
        x1, x2 = x.float()[..., 0::2], x.float()[..., 1::2]
        rotated = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
        return rotated.flatten(-2).type_as(x)


class SelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.dropout = config.dropout
        self.scale = config.attention_scale
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.rotary = Rotary(config) if config.pos == "rope" else None

    def forward(self, x: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor | None, is_causal: bool,
                cache: KVCache | None, layer: int) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
                   for t in self.qkv(x).split(C, dim=2))
        if self.rotary is not None:
            q, k = self.rotary(q, positions), self.rotary(k, positions)
        if cache is not None:
            k, v = cache.update(layer, k, v)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, scale=self.scale,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.resid_dropout(self.proj(y.transpose(1, 2).contiguous().view(B, T, C)))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.gated = config.mlp == "swiglu"
        self.gelu = "tanh" if config.mlp == "gelu_tanh" else "none"
        # SwiGLU has three matrices instead of two: a hidden size of 2/3 * 4 * n_embd keeps the
        # parameter count of the 4x GELU MLP (rounded up to a multiple of 64).
        hidden = 64 * math.ceil(8 * config.n_embd / 3 / 64) if self.gated else 4 * config.n_embd
        self.fc = nn.Linear(config.n_embd, 2 * hidden if self.gated else hidden, bias=config.bias)
        self.proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        if self.gated:
            gate, value = h.chunk(2, dim=-1)
            h = F.silu(gate) * value
        else:
            h = F.gelu(h, approximate=self.gelu)
        return self.dropout(self.proj(h))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.norm1, self.attn = _norm(config), SelfAttention(config)
        self.norm2, self.mlp = _norm(config), MLP(config)

    def forward(self, x: torch.Tensor, *attention_args) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), *attention_args)
        return x + self.mlp(self.norm2(x))


class GPT(Generator):
    def __init__(self, config: GPTConfig):
        super().__init__(config)
        self.wte = nn.Embedding(config.padded_vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd) if config.pos == "learned" else None
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.norm_f = _norm(config)
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False)
        if config.tie_weights:
            self.lm_head.weight = self.wte.weight
        self.apply(self._init_weights)
        for name, param in self.blocks.named_parameters():
            if param.dim() == 2:  # hidden matrices: under μP their variance falls as 1/width
                std = 0.02 / math.sqrt(config.width_mult)
                if name.endswith("proj.weight"):  # residual projections, scaled as in GPT-2
                    std /= math.sqrt(2 * config.n_layer)
                nn.init.normal_(param, mean=0.0, std=std)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def hidden_matrices(self) -> list[nn.Parameter]:
        """The weights whose both dimensions grow with the width (μP scales their learning rate)."""
        return [p for p in self.blocks.parameters() if p.dim() == 2]

    def new_cache(self, batch: int) -> KVCache:
        c, weight = self.config, self.wte.weight
        return KVCache(c.n_layer, batch, c.n_head, c.block_size, c.head_dim, weight.device, weight.dtype)

    def forward(self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None,
                positions: torch.Tensor | None = None, cache: KVCache | None = None) -> torch.Tensor:
        """Logits (B, T, vocab) for token ids ``idx`` (B, T).

        attention_mask: (B, keys) with True at real tokens; keys are the cached tokens then ``idx``.
        positions: (B, T) position of each token; by default counted over the real tokens."""
        B, T = idx.shape
        past = cache.length if cache is not None else 0
        if past + T > self.block_size:
            raise ValueError(f"sequence of length {past + T} is longer than block_size={self.block_size}")
        if positions is None:
            positions = (positions_from_mask(attention_mask)[:, -T:] if attention_mask is not None
                         else torch.arange(past, past + T, device=idx.device).expand(B, T))
        mask, is_causal = self._attention_mask(attention_mask, B, T, past, idx.device)
        x = self.wte(idx)
        if self.wpe is not None:
            x = x + self.wpe(positions)
        x = self.drop(x)
        for layer, block in enumerate(self.blocks):
            if self.config.activation_checkpointing and self.training:
                x = checkpoint(block, x, positions, mask, is_causal, cache, layer, use_reentrant=False)
            else:
                x = block(x, positions, mask, is_causal, cache, layer)
        if cache is not None:
            cache.length += T
        logits = self.lm_head(self.norm_f(x))
        if self.config.width_mult != 1:  # μP: the readout shrinks as the model widens
            logits = logits / self.config.width_mult
        # the rows that pad the vocabulary to a multiple are no tokens: they never receive probability
        return logits[..., :self.vocab_size]

    def _attention_mask(self, attention_mask: torch.Tensor | None, B: int, T: int, past: int,
                        device: torch.device) -> tuple[torch.Tensor | None, bool]:
        """(boolean mask (B, 1, T, past+T) or None, is_causal) for scaled_dot_product_attention."""
        if attention_mask is None and (past == 0 or T == 1):
            return None, self.config.causal and past == 0  # fast paths: no mask tensor
        keys = torch.ones(B, past + T, dtype=torch.bool, device=device) if attention_mask is None else attention_mask
        mask = keys[:, None, None, :].expand(B, 1, T, past + T)
        query_slot = torch.arange(past, past + T, device=device)[:, None]
        key_slot = torch.arange(past + T, device=device)[None, :]
        if self.config.causal:
            mask = mask & (key_slot <= query_slot)
        # a padding query that sees no key would give NaN: let it see itself (its output is ignored)
        return mask | (key_slot == query_slot), False
