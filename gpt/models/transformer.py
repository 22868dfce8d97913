"""GPT-2's decoder with its options (learned or rotary positions, GELU or SwiGLU, LayerNorm or RMSNorm, μP, a KV
cache for generation) as a plain ``nn.Module``; its config is ``gpt.models.configs.GPTConfig``."""

import math

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from gpt.models.configs import GPTConfig
from gpt.models.interface import TokenModel, WrapUnit


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


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Position of each token counted over the real (unmasked) tokens of its row."""
    return (mask.long().cumsum(dim=1) - 1).clamp(min=0)


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

    def crop(self, block_size: int) -> None:
        self.cos, self.sin = self.cos[:block_size], self.sin[:block_size]

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


class Block(WrapUnit):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.norm1, self.attn = _norm(config), SelfAttention(config)
        self.norm2, self.mlp = _norm(config), MLP(config)

    def forward(self, x: torch.Tensor, *attention_args) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), *attention_args)
        return x + self.mlp(self.norm2(x))


class GPT(TokenModel):
    """GPT-2's decoder (pre-norm blocks of attention and MLP, tied embeddings) with the options of ``GPTConfig``."""

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

    @property
    def width_mult(self) -> float:
        return self.config.width_mult

    def hidden_matrices(self) -> list[nn.Parameter]:
        return [p for p in self.blocks.parameters() if p.dim() == 2]

    def count_parameters(self) -> int:
        """Vocabulary padding rows are no tokens: they are not counted (twice if the head is not tied)."""
        c = self.config
        return super().count_parameters() - (c.padded_vocab_size - c.vocab_size) * c.n_embd * (1 if c.tie_weights else 2)

    def flops_per_token(self) -> float:
        """6 per weight that takes part in a matmul (not the position embedding, a lookup), plus attention over the
        context."""
        c = self.config
        matmul_weights = self.count_parameters() - (self.wpe.weight.numel() if self.wpe is not None else 0)
        return 6 * matmul_weights + 12 * c.n_layer * c.n_head * c.head_dim * c.block_size

    def activations_per_token(self) -> int:
        """Each block keeps about 18 values per channel (its inputs, normed inputs, q/k/v, attention output, the
        MLP's 4x hidden before and after the activation); then the logits over the padded vocabulary."""
        c = self.config
        return 18 * c.n_layer * c.n_embd + 3 * c.padded_vocab_size

    def crop_block_size(self, block_size: int) -> None:
        super().crop_block_size(block_size)
        if self.wpe is not None:
            self.wpe.weight = nn.Parameter(self.wpe.weight[:block_size].detach().clone())
        for block in self.blocks:
            if block.attn.rotary is not None:
                block.attn.rotary.crop(block_size)

    def new_cache(self, batch: int, length: int) -> KVCache:
        c, weight = self.config, self.wte.weight
        return KVCache(c.n_layer, batch, c.n_head, length, c.head_dim, weight.device, weight.dtype)

    def logits(self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None,
               positions: torch.Tensor | None = None, cache: KVCache | None = None) -> torch.Tensor:
        """attention_mask: (B, keys) with True at real tokens; keys are the cached tokens then ``idx``.
        positions: (B, T) position of each token; by default counted over the real tokens."""
        logits = self.lm_head(self.hidden_states(idx, attention_mask, positions, cache))
        if self.config.width_mult != 1:  # μP: the readout shrinks as the model widens
            logits = logits / self.config.width_mult
        # the rows that pad the vocabulary to a multiple are no tokens: they never receive probability
        return logits[..., :self.vocab_size]

    def hidden_states(self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None,
                      positions: torch.Tensor | None = None, cache: KVCache | None = None) -> torch.Tensor:
        """The last block's normed output (B, T, n_embd), which the head reads (``logits``' arguments)."""
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
        return self.norm_f(x)

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
