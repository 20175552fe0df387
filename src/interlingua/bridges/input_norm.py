"""What every learned bridge does first with the sender states: drop attention sinks, standardize.

Mid-layer states of a causal LM are dominated by what all tokens share: SmolLM2's first token is an
attention sink (norm ~22,000 against ~180 for the others, almost all of it on one dimension), and
the other tokens share a large common direction (mean-pooled states of two different SST-2 reviews
have cosine ~0.93 after LayerNorm). A bridge that reads them raw can lower its loss fastest by
attending to the sink, which is the same for every example, and it then emits the same soft tokens
for every input: the collapse the Perceiver showed (soft tokens of different examples at cosine
0.999, one class predicted for everything).

So every learned bridge reads the states through `SenderInputNorm`, fitted once on the training
store (`fit`, from `train.token_statistics`):
- sink positions, tokens whose norm exceeds SINK_NORM_RATIO x the median token norm, are masked out
  (they carry no example information; a row made only of sinks keeps them);
- the remaining states are standardized per dimension with the training tokens' mean and std,
  removing the shared direction so what differs between examples is what the bridge sees first.
Both are fixed buffers saved with the checkpoint: evaluation and the controls read the same map.
Before `fit` (a fresh module, tests), it is the identity with no sink masked.
"""
from __future__ import annotations

import torch
from torch import nn

SINK_NORM_RATIO = 10.0  # SmolLM2 layer 15: sink ~120x the median norm, every other token < 3x


class SenderInputNorm(nn.Module):
    def __init__(self, sender_dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(sender_dim))          # (d_s,)
        self.register_buffer("std", torch.ones(sender_dim))            # (d_s,)
        self.register_buffer("sink_norm", torch.tensor(float("inf")))  # tokens above it are masked

    @torch.no_grad()
    def fit(self, mean: torch.Tensor, std: torch.Tensor, sink_norm: float) -> None:
        self.mean.copy_(mean)
        self.std.copy_(std.clamp(min=1e-6))
        self.sink_norm.fill_(sink_norm)

    def forward(self, states, mask):
        # states (B, T, d_s); mask (B, T) bool True = real token
        keep = mask & (states.norm(dim=-1) <= self.sink_norm)               # (B, T)
        keep = torch.where(keep.any(-1, keepdim=True), keep, mask)          # a row of sinks only keeps them
        return (states - self.mean) / self.std, keep                        # (B, T, d_s), (B, T)


@torch.no_grad()
def token_statistics(rows, ratio: float = SINK_NORM_RATIO):
    """Per-dimension mean and std over every non-sink token, and the sink threshold (ratio x the median
    token norm). `rows()` yields the (T_i, d_s) states of each training row; it is walked twice (norms,
    then float64 sums), so memory stays one row whatever the store's size. Returns (mean, std, sink_norm)."""
    norms = torch.cat([r.float().norm(dim=-1) for r in rows()])           # (N_tokens,)
    sink_norm = ratio * norms.median().item()
    total = square = None
    count = 0
    for r in rows():
        kept = r.double()[r.float().norm(dim=-1) <= sink_norm]            # (T_kept, d_s)
        total = kept.sum(0) if total is None else total + kept.sum(0)
        square = kept.pow(2).sum(0) if square is None else square + kept.pow(2).sum(0)
        count += len(kept)
    mean = total / count
    std = (square / count - mean.pow(2)).clamp(min=0).sqrt()
    return mean.float(), std.float(), sink_norm
