"""Cross-entropy through a frozen output head without materialising (N, V) logits twice.

A receiver like Gemma-3 has a 262k x 640 output head (671 MB in fp32). Training a bridge needs
-log p(target) for a few positions per example, and the gradient only with respect to the hidden
states (the head is frozen). The plain path reads the head twice per step: once for the logits
and again in backward (dL/dh = (p - onehot) W). Here one pass over the head, in chunks that stay
in cache, computes the loss *and* that gradient with an online softmax (running max and sum, as
flash attention does), so backward is a multiply. Exact up to float rounding.
"""
from __future__ import annotations

import torch

CHUNK_ROWS = 1024  # 1024 x 640 fp32 = 2.6 MB, about one core's L2: the second read of a chunk hits cache


class FusedHeadNLL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, softcap, chunk_rows):
        # hidden (N, d) float; weight (V, d) frozen; targets (N,) long
        want_grad = ctx.needs_input_grad[0]
        n = hidden.shape[0]
        running_max = hidden.new_full((n,), float("-inf"))
        running_sum = hidden.new_zeros(n)
        weighted = hidden.new_zeros(hidden.shape) if want_grad else None      # sum_v p_v dz_v/dh (unnormalised)
        for start in range(0, weight.shape[0], chunk_rows):
            rows = weight[start:start + chunk_rows]                           # (C, d)
            logits = hidden @ rows.T                                          # (N, C)
            slope = None
            if softcap:
                squashed = torch.tanh(logits / softcap)
                logits, slope = squashed * softcap, 1 - squashed * squashed
            new_max = torch.maximum(running_max, logits.amax(-1))
            rescale = torch.exp(running_max - new_max)                        # (N,)
            probs = torch.exp(logits - new_max[:, None])                      # (N, C), unnormalised
            running_sum = running_sum * rescale + probs.sum(-1)
            if want_grad:
                weighted = weighted * rescale[:, None] + (probs if slope is None else probs * slope) @ rows
            running_max = new_max
        target_rows = weight[targets]                                         # (N, d)
        target_logit = (hidden * target_rows).sum(-1)
        target_slope = None
        if softcap:
            squashed = torch.tanh(target_logit / softcap)
            target_logit, target_slope = squashed * softcap, 1 - squashed * squashed
        nll = running_max + running_sum.log() - target_logit                  # (N,)
        if want_grad:
            target_grad = target_rows if target_slope is None else target_rows * target_slope[:, None]
            ctx.save_for_backward(weighted / running_sum[:, None] - target_grad)  # d nll / d hidden  (N, d)
        return nll

    @staticmethod
    def backward(ctx, grad_nll):
        (grad_hidden,) = ctx.saved_tensors
        return grad_hidden * grad_nll[:, None], None, None, None, None


def head_nll(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, softcap: float | None = None,
             chunk_rows: int = CHUNK_ROWS) -> torch.Tensor:
    """-log softmax(softcap(hidden @ weight.T))[targets], (N,), for a frozen bias-free head."""
    if weight.requires_grad:
        raise ValueError("head_nll is for a frozen head: its gradient with respect to the weight is not computed")
    return FusedHeadNLL.apply(hidden.float(), weight.float(), targets, softcap, chunk_rows)
