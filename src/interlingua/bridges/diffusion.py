"""Diffusion-transformer bridge (ablation): soft tokens by iterative denoising from Gaussian noise.

x_K ~ N(0, I) of shape (B, M, d) in the bridge's internal width d. Each of K steps runs one shared
denoiser: a small transformer over the M tokens (pre-norm blocks of self-attention, cross-attention
to the projected sender states, FFN), told the step by a sinusoidal timestep embedding (MLP, added
to every token as in DDPM) and the slot by a learned position embedding. It predicts the clean
tokens x0; a deterministic DDIM update (eta = 0, cosine schedule over K steps) moves x_k to x_{k-1}.
The final x0 prediction -> LayerNorm -> Linear(d, d_r) -> RMS norm times alpha.

Trained like every other bridge: end-to-end through the receiver's loss, gradients flowing through
all K unrolled steps (no separate denoising loss, one training loop). K = 4 by default: each step
costs about one Perceiver forward, so the bridge is ~K times the Perceiver's compute.
Noise: fresh from the global RNG in train mode; in eval mode the same fixed noise (seeded by
`noise_seed`, shared by every example, drawn on CPU) so evaluation is reproducible, independent
of batch composition and device, and leaves the global RNG untouched.
Tests: does iterative refinement from noise beat the Perceiver's single pass with learned queries?
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .base import SoftTokenBridge
from .input_norm import SenderInputNorm


@dataclass
class DiffusionConfig:
    sender_dim: int            # d_s: hidden size of the sender layer read
    receiver_dim: int          # d_r: embedding size of the receiver
    source_layer: int = 15     # sender layer the bridge reads (0 = embeddings)
    dim: int = 512             # d: internal width (the space the diffusion runs in)
    num_queries: int = 8       # M: soft tokens emitted
    depth: int = 2             # N: denoiser blocks (self-attention + cross-attention + FFN), shared by all steps
    heads: int = 8
    ffn_mult: int = 4
    steps: int = 4             # K: denoising steps, unrolled in training; small keeps it cheap
    noise_seed: int = 0        # seed of the fixed starting noise in eval mode
    dropout: float = 0.0


def timestep_embedding(t, dim: int):
    # t (K,) float in [0, 1] -> (K, dim) sinusoidal features (DDPM / transformer positional style)
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=t.dtype) / half)
    angles = 1000.0 * t[:, None] * freqs[None]                       # t scaled to the usual 0..1000 range
    features = torch.cat([angles.sin(), angles.cos()], dim=-1)
    return nn.functional.pad(features, (0, dim - 2 * half))          # odd dim: one zero column


def cosine_alpha_bar(t):
    # t in [0, 1] -> cumulative signal fraction: 1 at t = 0 (clean), ~0 at t = 1 (pure noise)
    return torch.cos(0.5 * math.pi * t).pow(2).clamp(min=0.0, max=1.0)


class DenoiserBlock(nn.Module):
    """Tokens attend to each other, then to the sender states, then an FFN; pre-norm, residual."""

    def __init__(self, config: DiffusionConfig):
        super().__init__()
        d = config.dim
        self.norm_self, self.norm_q, self.norm_kv, self.norm_ffn = (nn.LayerNorm(d) for _ in range(4))
        self.self_attn = nn.MultiheadAttention(d, config.heads, dropout=config.dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(d, config.heads, dropout=config.dropout, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(d, config.ffn_mult * d), nn.GELU(), nn.Linear(config.ffn_mult * d, d),
                                 nn.Dropout(config.dropout))

    def forward(self, x, context, context_mask):
        # x (B, M, d); context (B, T, d); context_mask (B, T) True = real token
        h = self.norm_self(x)
        x = x + self.self_attn(h, h, h, need_weights=False)[0]                        # (B, M, d)
        kv = self.norm_kv(context)
        x = x + self.cross_attn(self.norm_q(x), kv, kv, key_padding_mask=~context_mask,
                                need_weights=False)[0]                                # (B, M, d)
        return x + self.ffn(self.norm_ffn(x))                                         # (B, M, d)


class DiffusionBridge(SoftTokenBridge):

    def __init__(self, config: DiffusionConfig):
        super().__init__()
        self.config = config
        d = config.dim
        self.sender_norm = SenderInputNorm(config.sender_dim)  # sinks masked, standardized (fitted)
        self.input_norm = nn.LayerNorm(config.sender_dim)
        self.input_proj = nn.Linear(config.sender_dim, d)
        self.slot_embedding = nn.Parameter(torch.randn(config.num_queries, d) * 0.02)
        self.time_mlp = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        self.blocks = nn.ModuleList(DenoiserBlock(config) for _ in range(config.depth))
        self.denoise_norm = nn.LayerNorm(d)
        self.denoise_out = nn.Linear(d, d)                 # predicts the clean tokens x0
        self.output_norm = nn.LayerNorm(d)
        self.output_proj = nn.Linear(d, config.receiver_dim)

    def initial_noise(self, batch: int):
        shape, dtype, device = (self.config.num_queries, self.config.dim), self.slot_embedding.dtype, \
            self.slot_embedding.device
        if self.training:
            return torch.randn(batch, *shape, dtype=dtype, device=device)               # (B, M, d)
        generator = torch.Generator().manual_seed(self.config.noise_seed)                # CPU: device-independent
        noise = torch.randn(1, *shape, generator=generator).to(device=device, dtype=dtype)
        return noise.expand(batch, -1, -1)                                              # (B, M, d), same for all

    def denoise(self, x, t_embedding, context, mask):
        # x (B, M, d) noisy tokens; t_embedding (d,) -> predicted clean tokens (B, M, d)
        h = x + self.slot_embedding + t_embedding
        for block in self.blocks:
            h = block(h, context, mask)
        return self.denoise_out(self.denoise_norm(h))

    def forward(self, states, mask):
        # states (B, T, d_s); mask (B, T) bool
        states, mask = self.sender_norm(states, mask)                     # sinks masked out
        K = self.config.steps
        context = self.input_proj(self.input_norm(states))                               # (B, T, d), once
        times = torch.arange(K, -1, -1, device=states.device, dtype=context.dtype) / K  # (K+1,): 1, ..., 0
        alpha_bar = cosine_alpha_bar(times)                                              # (K+1,)
        t_embeddings = self.time_mlp(timestep_embedding(times[:K], self.config.dim))     # (K, d)
        x = self.initial_noise(states.shape[0])                                          # (B, M, d) = x_K
        for k in range(K):
            x0 = self.denoise(x, t_embeddings[k], context, mask)                          # (B, M, d)
            if k == K - 1:                                                               # alpha_bar(0) = 1: clean
                x = x0
                break
            a_now, a_next = alpha_bar[k], alpha_bar[k + 1]
            eps = (x - a_now.sqrt() * x0) / (1 - a_now).sqrt()                           # implied noise
            x = a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps                          # DDIM, eta = 0
        soft = self.output_proj(self.output_norm(x))                                     # (B, M, d_r)
        return self.scale(soft)                                          # (B, M, d_r), RMS = alpha
