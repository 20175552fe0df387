"""Cross-attention adapter (Dery et al. 2.2): layer-wise cross-attention stacks into and out of S.

Every map works per position (N = B*T rows). With W the adapter width (below), In = LayerNorm +
Linear + GELU and Out = In then Linear (the paper's input and output transforms):

Into S (T[m->S]), one layer per SOURCE layer l:
  tokens_l = [InK_l(k_l,h) for each KV head h] + [InV_l(v_l,h) for each h] + head embeddings  (N, 2H_l, 2W)
             (D_l -> 2W: each token's attention key and value; separate key and value parameters)
  state    = state + CrossAttn(LN(state), tokens_l);  state = state + MLP(LN(state))          (N, W)
  The seed state is In_0([k_0; v_0]) (the first layer's cache seeds the stack, as in the paper);
  the L per-layer states are concatenated and mapped out: Out(L*W -> W -> Q), like the paper's
  concatenation of every cross-attention layer's output.
Out of S (T[S->m]), one layer per TARGET layer l:
  tokens_l = In_l(z split into `latent_tokens` chunks of Q/latent_tokens) + chunk embeddings   (N, n, 2W)
  state    = In(z) (seed), then the same cross-attention + MLP update, and
  k_l, v_l = OutK_l(state), OutV_l(state): Out(W -> W -> H_l*D_l), separate key and value parameters.
Inputs are standardized and outputs de-standardized per dimension (CacheStandardizer, fit_stats).

Sizes: W = embed_dim_factor * max_l(H_l*D_l), the member's widest per-layer key (or value) width at
one position (the paper's D'_i = embed_dim_factor * D_i, with D_i the cache width rather than the
model width), rounded up to a multiple of attn_head_dim; every MLP's hidden size is
translation_dim_factor * W (the paper's expansion of the residual stream). Per position and layer the
cost is about (4 + 2 * translation_dim_factor) * W^2 multiply-adds into S and that plus 2 * W^2 + 2 * W * H_l*D_l
out of S (each parameter used once, except the in-transforms, used once per token).
Differences from the paper, by this project's design: one state carries keys and values together
(the paper runs key and value blocks through the stack separately, with shared cross-attention
weights), cross-attention runs within one position over the layer's KV heads (tokens = heads; the
paper's Gemma-2-style adapter also attends over sequence positions), attention keys and values come
straight from the in-transforms (no separate W -> 2W projection: 3x cheaper at SmolLM2's size), and
the decoder reads Q as `latent_tokens` chunks (the paper reshapes it into L_i chunks, which needs
Q % L_i == 0 for every member).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ....errors import ConfigError
from .base import KV, CacheShape, CacheStandardizer, flatten, unflatten


@dataclass
class CrossAttentionConfig:
    """Sizes of the cross-attention adapters (paper defaults: embed 2, translation 1)."""
    shared_dim: int = 512              # Q: size of the shared vector per position
    embed_dim_factor: float = 2.0      # W = factor * max_l(H_l*D_l): the adapter's residual width
    translation_dim_factor: float = 1.0  # MLP hidden size = factor * W
    attn_head_dim: int = 32            # size of one adapter attention head; W is a multiple of it
    latent_tokens: int = 8             # decoder: Q is read as this many tokens of Q / latent_tokens

    def __post_init__(self):
        if self.shared_dim < 1 or self.attn_head_dim < 1 or self.latent_tokens < 1:
            raise ConfigError("cross_attention: shared_dim, attn_head_dim and latent_tokens must be >= 1")
        if self.embed_dim_factor <= 0 or self.translation_dim_factor <= 0:
            raise ConfigError("cross_attention: embed_dim_factor and translation_dim_factor must be > 0")
        if self.shared_dim % self.latent_tokens:
            raise ConfigError(f"cross_attention: shared_dim (Q={self.shared_dim}) must be a multiple of "
                              f"latent_tokens ({self.latent_tokens})")

    def width(self, shape: CacheShape) -> int:
        base = max(shape.layer_width(l) for l in range(shape.num_layers))
        heads = max(1, math.ceil(self.embed_dim_factor * base / self.attn_head_dim))
        return heads * self.attn_head_dim

    def hidden(self, width: int) -> int:
        return max(1, round(self.translation_dim_factor * width))


class InTransform(nn.Module):
    """LayerNorm + Linear + GELU."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.norm, self.proj = nn.LayerNorm(d_in), nn.Linear(d_in, d_out)

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(self.proj(self.norm(x)))                                   # (..., d_out)


class OutTransform(nn.Module):
    """LayerNorm + Linear + GELU, then Linear."""

    def __init__(self, d_in: int, d_hidden: int, d_out: int):
        super().__init__()
        self.inner, self.proj = InTransform(d_in, d_hidden), nn.Linear(d_hidden, d_out)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(self.inner(x))                                          # (..., d_out)


class CrossAttentionBlock(nn.Module):
    """One state vector attends to M tokens, then an MLP; pre-norm, residual.

    The tokens arrive as attention keys and values (N, M, 2W), made by the layer's in-transform:
    a per-layer in-transform straight to 2W costs M * D_in * 2W per position, where a separate
    key/value projection of W-wide tokens would cost M * 2W^2 (the adapter's largest term).
    """

    def __init__(self, width: int, head_dim: int, hidden: int):
        super().__init__()
        self.heads, self.head_dim = width // head_dim, head_dim
        self.norm_q, self.norm_mlp = nn.LayerNorm(width), nn.LayerNorm(width)
        self.q, self.out = nn.Linear(width, width), nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, state: Tensor, tokens: Tensor) -> Tensor:
        # state (N, W); tokens (N, M, 2W): attention keys then values
        N, M, _ = tokens.shape
        W = state.shape[-1]
        q = self.q(self.norm_q(state)).view(N, self.heads, 1, self.head_dim)     # (N, h, 1, d)
        k, v = tokens.view(N, M, 2, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (N, h, M, d) x2
        attended = F.scaled_dot_product_attention(q, k, v).reshape(N, W)         # (N, W)
        state = state + self.out(attended)
        return state + self.mlp(self.norm_mlp(state))                            # (N, W)


class LayerReader(nn.Module):
    """Encoder layer for one source layer: its KV heads become tokens the state attends to."""

    def __init__(self, heads: int, dim: int, width: int, config: CrossAttentionConfig):
        super().__init__()
        self.key_in, self.value_in = InTransform(dim, 2 * width), InTransform(dim, 2 * width)
        self.head_embed = nn.Parameter(0.02 * torch.randn(2 * heads, 2 * width))  # which head, key or value
        self.block = CrossAttentionBlock(width, config.attn_head_dim, config.hidden(width))

    def forward(self, state: Tensor, k: Tensor, v: Tensor) -> Tensor:
        # state (N, W); k, v (N, H, D)
        tokens = torch.cat([self.key_in(k), self.value_in(v)], dim=1) + self.head_embed  # (N, 2H, 2W)
        return self.block(state, tokens)                                         # (N, W)


class CrossAttentionEncoder(nn.Module):
    """T[m->S]: (keys, values) -> (B, T, Q), one cross-attention layer per source layer."""

    def __init__(self, shape: CacheShape, config: CrossAttentionConfig):
        super().__init__()
        self.shape, width = shape, config.width(shape)
        self.stats = CacheStandardizer(shape)
        self.seed = InTransform(2 * shape.layer_width(0), width)
        self.layers = nn.ModuleList(LayerReader(shape.heads(l), shape.dim(l), width, config)
                                    for l in range(shape.num_layers))
        self.out = OutTransform(shape.num_layers * width, width, config.shared_dim)

    def forward(self, keys: list[Tensor], values: list[Tensor]) -> Tensor:
        dtype, shape = self.seed.proj.weight.dtype, self.shape
        B, _, T, _ = keys[0].shape
        sizes = [shape.layer_width(l) for l in range(shape.num_layers)]
        k = self.stats.normalize("key", flatten(keys).to(dtype)).reshape(B * T, -1).split(sizes, -1)    # (N, H_l*D_l)
        v = self.stats.normalize("value", flatten(values).to(dtype)).reshape(B * T, -1).split(sizes, -1)
        state = self.seed(torch.cat([k[0], v[0]], dim=-1))                       # (N, W)
        states = []
        for l, layer in enumerate(self.layers):
            heads = (B * T, shape.heads(l), shape.dim(l))
            state = layer(state, k[l].reshape(heads), v[l].reshape(heads))      # (N, W)
            states.append(state)
        return self.out(torch.cat(states, dim=-1)).view(B, T, -1)                # (B, T, Q)


class LayerWriter(nn.Module):
    """Decoder layer for one target layer: read the shared vector's chunks, emit that layer's keys and values."""

    def __init__(self, heads: int, dim: int, width: int, config: CrossAttentionConfig):
        super().__init__()
        self.latent_in = InTransform(config.shared_dim // config.latent_tokens, 2 * width)
        self.latent_embed = nn.Parameter(0.02 * torch.randn(config.latent_tokens, 2 * width))  # which chunk
        self.block = CrossAttentionBlock(width, config.attn_head_dim, config.hidden(width))
        self.key_out = OutTransform(width, width, heads * dim)
        self.value_out = OutTransform(width, width, heads * dim)

    def forward(self, state: Tensor, chunks: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        # state (N, W); chunks (N, n, Q/n)
        state = self.block(state, self.latent_in(chunks) + self.latent_embed)   # (N, W)
        return state, self.key_out(state), self.value_out(state)                 # (N, W), (N, H*D) x2


class CrossAttentionDecoder(nn.Module):
    """T[S->m]: (B, T, Q) -> (keys, values), one cross-attention layer per target layer."""

    def __init__(self, shape: CacheShape, config: CrossAttentionConfig):
        super().__init__()
        self.shape, self.tokens, width = shape, config.latent_tokens, config.width(shape)
        self.stats = CacheStandardizer(shape)
        self.seed = InTransform(config.shared_dim, width)
        self.layers = nn.ModuleList(LayerWriter(shape.heads(l), shape.dim(l), width, config)
                                    for l in range(shape.num_layers))

    def forward(self, z: Tensor) -> KV:
        B, T, Q = z.shape
        z = z.to(self.seed.proj.weight.dtype).reshape(B * T, Q)                  # (N, Q)
        chunks = z.view(B * T, self.tokens, -1)                                  # (N, n, Q/n)
        state, keys, values = self.seed(z), [], []                               # (N, W)
        for layer in self.layers:
            state, k, v = layer(state, chunks)                                   # (N, H_l*D_l) x2
            keys.append(k)
            values.append(v)
        k = self.stats.denormalize("key", torch.cat(keys, dim=-1).view(B, T, -1))       # (B, T, W_cache)
        v = self.stats.denormalize("value", torch.cat(values, dim=-1).view(B, T, -1))   # (B, T, W_cache)
        return KV(unflatten(self.shape, k), unflatten(self.shape, v))
