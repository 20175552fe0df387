"""MLP bridge (ablation): a 2-layer MLP from the mean-pooled sender states to M soft tokens.

Masked mean over real tokens (B, d_s) -> Linear(d_s, h) -> GELU -> Linear(h, M * d_r) -> (B, M, d_r)
-> RMS norm times alpha. Same pooling as `linear`, plus one hidden non-linear layer. Tests: does a
non-linear map of the average state recover the Perceiver's accuracy without attention over tokens?
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .base import SoftTokenBridge
from .input_norm import SenderInputNorm
from .pooling import masked_mean


@dataclass
class MLPConfig:
    sender_dim: int            # d_s: hidden size of the sender layer read
    receiver_dim: int          # d_r: embedding size of the receiver
    source_layer: int = 15     # sender layer the bridge reads (0 = embeddings)
    num_queries: int = 8       # M: soft tokens emitted
    hidden_dim: int = 1024     # h: hidden width of the MLP
    dropout: float = 0.0


class MLPBridge(SoftTokenBridge):

    def __init__(self, config: MLPConfig):
        super().__init__()
        self.config = config
        self.sender_norm = SenderInputNorm(config.sender_dim)  # sinks masked, standardized (fitted)
        self.input_norm = nn.LayerNorm(config.sender_dim)
        self.mlp = nn.Sequential(nn.Linear(config.sender_dim, config.hidden_dim), nn.GELU(), nn.Dropout(config.dropout),
                                 nn.Linear(config.hidden_dim, config.num_queries * config.receiver_dim))

    def forward(self, states, mask):
        # states (B, T, d_s); mask (B, T) bool
        states, mask = self.sender_norm(states, mask)                     # sinks masked out
        pooled = masked_mean(self.input_norm(states), mask)                   # (B, d_s)
        soft = self.mlp(pooled).view(len(pooled), self.config.num_queries, -1)   # (B, M, d_r)
        return self.scale(soft)                               # (B, M, d_r), RMS = alpha
