"""Mean-pooling bridge (ablation): ONE pooled vector, shared by all M soft tokens.

Masked mean over real tokens (B, d_s) -> one Linear(d_s, d_r) -> (B, 1, d_r), replicated to the M slots,
plus a learned, input-independent offset per slot (M, d_r) -> RMS norm times alpha. All input
information sits in a single d_r direction; the slots differ only by their constant offsets (which
keep them from being identical copies). Tests: does the receiver need M *different* input-dependent
tokens (`linear` gives each slot its own projection), or is one pooled summary enough?
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .base import SoftTokenBridge
from .input_norm import SenderInputNorm
from .pooling import masked_mean


@dataclass
class MeanPoolConfig:
    sender_dim: int            # d_s: hidden size of the sender layer read
    receiver_dim: int          # d_r: embedding size of the receiver
    source_layer: int = 15     # sender layer the bridge reads (0 = embeddings)
    num_queries: int = 8       # M: soft tokens emitted (copies of the one pooled token + slot offsets)


class MeanPoolBridge(SoftTokenBridge):

    def __init__(self, config: MeanPoolConfig):
        super().__init__()
        self.config = config
        self.sender_norm = SenderInputNorm(config.sender_dim)  # sinks masked, standardized (fitted)
        self.input_norm = nn.LayerNorm(config.sender_dim)
        self.proj = nn.Linear(config.sender_dim, config.receiver_dim)
        self.slot_offsets = nn.Parameter(torch.randn(config.num_queries, config.receiver_dim) * 0.02)

    def forward(self, states, mask):
        # states (B, T, d_s); mask (B, T) bool
        states, mask = self.sender_norm(states, mask)                     # sinks masked out
        pooled = self.proj(masked_mean(self.input_norm(states), mask))   # (B, d_r)
        soft = pooled.unsqueeze(1) + self.slot_offsets                   # (B, M, d_r)
        return self.scale(soft)                          # (B, M, d_r), RMS = alpha
