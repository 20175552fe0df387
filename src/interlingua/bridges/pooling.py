"""Helpers shared by the pooled bridges: masked mean over real tokens, and the output scale."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_mean(states, mask):
    # states (B, T, d); mask (B, T) bool True = real token -> (B, d)
    # torch.where, not states * mask: padding may hold anything (even inf/nan) and must not leak.
    kept = torch.where(mask.unsqueeze(-1), states, torch.zeros((), dtype=states.dtype, device=states.device))
    count = mask.sum(-1, keepdim=True).clamp(min=1).to(states.dtype)  # (B, 1); all-padding rows give 0
    return kept.sum(1) / count


def scale_to_alpha(soft, alpha):
    # soft (B, M, d_r) -> RMS-normalised per token, times alpha (the receiver's embedding RMS)
    return F.rms_norm(soft, (soft.shape[-1],)) * alpha
