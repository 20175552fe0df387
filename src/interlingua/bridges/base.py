"""What every bridge shares: the output scale alpha, calibrated to the receiver's embedding RMS, and
(learned bridges) the sender input norm fitted on the training store (input_norm.py)."""
from __future__ import annotations

import torch
from torch import nn

from .pooling import scale_to_alpha


class SoftTokenBridge(nn.Module):
    """Sender states (B, T, d_s) + mask (B, T) -> M soft tokens (B, M, d_r) with RMS alpha."""
    trainable = True  # False for a fixed map (identity): training skips the optimiser

    def __init__(self):
        super().__init__()
        self.register_buffer("alpha", torch.tensor(1.0))   # set by calibrate()

    @torch.no_grad()
    def calibrate(self, receiver_embedding_rms: float) -> None:
        self.alpha.fill_(receiver_embedding_rms)

    @torch.no_grad()
    def fit_input(self, mean: torch.Tensor, std: torch.Tensor, sink_norm: float) -> None:
        """Fit the sender input norm (sink threshold, per-dimension standardization) on training states.
        Bridges that read the states raw (identity) have none: nothing to fit."""
        if getattr(self, "sender_norm", None) is not None:
            self.sender_norm.fit(mean, std, sink_norm)

    def scale(self, soft: torch.Tensor) -> torch.Tensor:
        return scale_to_alpha(soft, self.alpha)             # (B, M, d_r), RMS = alpha
