"""Linear bridge (ablation): one linear map from the mean-pooled sender states to M soft tokens.

Masked mean over real tokens (B, d_s) -> Linear(d_s, M * d_r) -> (B, M, d_r) -> RMS norm times alpha.
Each slot has its own projection of the pooled vector, so the M tokens are M different linear
views of the input. Tests: is a linear read-out of the average state enough, i.e. how much of the
Perceiver's gain comes from attention over tokens and from non-linearity (compare `mlp`)?
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .base import SoftTokenBridge
from .input_norm import SenderInputNorm
from .pooling import masked_mean


@dataclass
class LinearConfig:
    sender_dim: int            # d_s: hidden size of the sender layer read
    receiver_dim: int          # d_r: embedding size of the receiver
    source_layer: int = 15     # sender layer the bridge reads (0 = embeddings)
    num_queries: int = 8       # M: soft tokens emitted


class LinearBridge(SoftTokenBridge):

    def __init__(self, config: LinearConfig):
        super().__init__()
        self.config = config
        self.sender_norm = SenderInputNorm(config.sender_dim)  # sinks masked, standardized (fitted)
        self.input_norm = nn.LayerNorm(config.sender_dim)
        self.proj = nn.Linear(config.sender_dim, config.num_queries * config.receiver_dim)

    def forward(self, states, mask):
        # states (B, T, d_s); mask (B, T) bool
        states, mask = self.sender_norm(states, mask)                     # sinks masked out
        pooled = masked_mean(self.input_norm(states), mask)                   # (B, d_s)
        soft = self.proj(pooled).view(len(pooled), self.config.num_queries, -1)  # (B, M, d_r)
        return self.scale(soft)                               # (B, M, d_r), RMS = alpha
