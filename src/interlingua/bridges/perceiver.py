"""Perceiver Resampler bridge (LatentWire section 3.2).

Sender states (B, T, d_s) -> M soft tokens (B, M, d_r) in the receiver's embedding space:
input projection to d, M learned queries, N pre-norm blocks of cross-attention + FFN,
output projection, then RMS normalisation times alpha, alpha calibrated to the RMS of the
receiver's own input embeddings so soft tokens have the scale the receiver expects.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .base import SoftTokenBridge
from .input_norm import SenderInputNorm


@dataclass
class PerceiverConfig:
    sender_dim: int            # d_s: hidden size of the sender layer read
    receiver_dim: int          # d_r: embedding size of the receiver
    source_layer: int = 15     # sender layer the bridge reads (0 = embeddings)
    dim: int = 512             # d: internal width
    num_queries: int = 8       # M: soft tokens emitted
    depth: int = 2             # N: cross-attention + FFN blocks
    heads: int = 8
    ffn_mult: int = 4
    dropout: float = 0.0


class CrossAttentionBlock(nn.Module):
    """Queries attend to the (projected) sender states, then an FFN; pre-norm, residual."""

    def __init__(self, config: PerceiverConfig):
        super().__init__()
        d = config.dim
        self.norm_q, self.norm_kv, self.norm_ffn = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, config.heads, dropout=config.dropout, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(d, config.ffn_mult * d), nn.GELU(), nn.Linear(config.ffn_mult * d, d),
                                 nn.Dropout(config.dropout))

    def forward(self, queries, context, context_mask):
        # queries (B, M, d); context (B, T, d); context_mask (B, T) True = real token
        kv = self.norm_kv(context)
        attended, _ = self.attn(self.norm_q(queries), kv, kv, key_padding_mask=~context_mask, need_weights=False)
        queries = queries + attended                       # (B, M, d)
        return queries + self.ffn(self.norm_ffn(queries))  # (B, M, d)


class PerceiverResampler(SoftTokenBridge):
    def __init__(self, config: PerceiverConfig):
        super().__init__()
        self.config = config
        self.sender_norm = SenderInputNorm(config.sender_dim)  # sinks masked, standardized (fitted)
        self.input_norm = nn.LayerNorm(config.sender_dim)
        self.input_proj = nn.Linear(config.sender_dim, config.dim)
        self.queries = nn.Parameter(torch.randn(config.num_queries, config.dim) * 0.02)
        self.blocks = nn.ModuleList(CrossAttentionBlock(config) for _ in range(config.depth))
        self.output_norm = nn.LayerNorm(config.dim)
        self.output_proj = nn.Linear(config.dim, config.receiver_dim)

    def forward(self, states, mask):
        # states (B, T, d_s); mask (B, T) bool
        states, mask = self.sender_norm(states, mask)                     # sinks masked out
        context = self.input_proj(self.input_norm(states))              # (B, T, d)
        queries = self.queries.expand(states.shape[0], -1, -1)          # (B, M, d)
        for block in self.blocks:
            queries = block(queries, context, mask)                     # (B, M, d)
        soft = self.output_proj(self.output_norm(queries))              # (B, M, d_r)
        return self.scale(soft)                                         # (B, M, d_r), RMS = alpha
