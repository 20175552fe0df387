"""Identity bridge (ablation): a fixed, NON-learned map; the sender's own last M token states.

The last M real tokens (by the mask, so left- and right-padding give the same result) -> when
d_s == d_r the states themselves, otherwise a fixed seeded random projection d_s -> d_r with
orthonormal columns (or rows, if d_s < d_r) held in a buffer, drawn from the run's seed -> RMS norm times alpha. A sequence
shorter than M fills the leading slots with its first real token. Tests: is the sender's
representation directly usable by the receiver, i.e. how much does the learned bridge itself add?

No trainable parameters (`trainable = False`): training must skip the optimiser and just
calibrate and save it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import SoftTokenBridge


@dataclass
class IdentityConfig:
    sender_dim: int            # d_s: hidden size of the sender layer read
    receiver_dim: int          # d_r: embedding size of the receiver
    source_layer: int = 15     # sender layer the bridge reads (0 = embeddings)
    num_queries: int = 8       # M: soft tokens emitted (the last M real tokens)
    seed: int = 0              # seed of the fixed projection (used only when d_s != d_r): the run's seed


def fixed_projection(d_in: int, d_out: int, seed: int) -> torch.Tensor:
    """(d_in, d_out) random matrix with orthonormal columns (d_in >= d_out) or rows (d_in < d_out)."""
    gaussian = torch.randn(max(d_in, d_out), min(d_in, d_out), generator=torch.Generator().manual_seed(seed),
                           dtype=torch.float64)
    q, r = torch.linalg.qr(gaussian)                       # (max, min), orthonormal columns
    q = q * torch.sign(torch.diagonal(r))                  # unique QR: Haar-distributed, platform-stable
    return (q if d_in >= d_out else q.T).float().contiguous()


def last_real_indices(mask, count: int):
    # mask (B, T) bool -> (B, M) positions of the last M real tokens in order; short rows repeat their first
    real = mask.long()
    rank_from_end = real.flip(-1).cumsum(-1).flip(-1) * real       # (B, T): 1 = last real token, 0 = padding
    n_real = real.sum(-1, keepdim=True)                            # (B, 1)
    wanted = torch.arange(count, 0, -1, device=mask.device)        # (M,): M, ..., 1
    wanted = torch.minimum(wanted.unsqueeze(0), n_real)            # (B, M)
    hit = rank_from_end.unsqueeze(1) == wanted.unsqueeze(-1)       # (B, M, T), one-hot per slot
    hit &= mask.unsqueeze(1)
    return hit.long().argmax(-1)                                   # (B, M); 0 if the row has no real token


class IdentityBridge(SoftTokenBridge):
    trainable = False  # nothing to optimise: torch.optim rejects an empty parameter list

    def __init__(self, config: IdentityConfig):
        super().__init__()
        self.config = config
        if config.sender_dim != config.receiver_dim:
            self.register_buffer("projection", fixed_projection(config.sender_dim, config.receiver_dim, config.seed))
        else:
            self.projection = None

    def forward(self, states, mask):
        # states (B, T, d_s); mask (B, T) bool
        index = last_real_indices(mask, self.config.num_queries)                        # (B, M)
        picked = states.gather(1, index.unsqueeze(-1).expand(-1, -1, states.shape[-1]))  # (B, M, d_s)
        if self.projection is not None:
            picked = picked @ self.projection.to(picked.dtype)                           # (B, M, d_r)
        return self.scale(picked)                                        # (B, M, d_r), RMS = alpha
