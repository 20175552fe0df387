"""Rotary position embedding per layer: removed from and re-applied to cached keys, exactly.

A transformers cache stores keys after rotation. With angles p * inv_freq (p the token's position)
and a = attention scaling (YaRN's factor, 1 for the other schemes), transformers computes over the
first `rotary_dim` channels

    rotate(k, p) = k * cos + rotate_half(k) * sin,   cos = a cos(p w), sin = a sin(p w)

and `unrotate` inverts it: (k * cos - rotate_half(k) * sin) / a^2. Gemma-3 normalises keys (k_norm)
before rotating them, so unrotating its cache gives k_norm(k_proj(x)), not k_proj(x).

The frequencies come from the model's own rotary embedding module, built from its config, so
linear / llama3 / yarn scaling and Gemma-3's local (sliding-window) and global bases are exactly
the model's. Schemes whose frequencies change with the sequence length (dynamic, longrope) are refused.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ...errors import ConfigError, DataError

FULL, SLIDING = "full_attention", "sliding_attention"
POSITION_DEPENDENT = ("dynamic", "longrope")  # inv_freq changes with the sequence length


@dataclass
class RotarySpec:
    """One layer's rotary embedding."""
    attention_type: str = FULL         # or "sliding_attention" (Gemma-3's local layers)
    base: float = 10000.0              # rope_theta of this layer's type
    rotary_dim: int = 64               # channels rotated (2 * len(inv_freq)); any further channels pass through
    rope_type: str = "default"         # transformers' rope_type: default, linear, llama3, yarn, ...
    scaling: dict = field(default_factory=dict)  # rope parameters beyond type and theta (factor, ...)
    attention_scaling: float = 1.0     # cos and sin are multiplied by it (YaRN); 1 otherwise
    key_norm: bool = False             # keys are RMS-normalised per head (k_norm) before rotation (Gemma-3)
    inv_freq: torch.Tensor | None = None  # (rotary_dim / 2,) fp32; None: the default scheme from base

    def frequencies(self) -> torch.Tensor:
        if self.inv_freq is not None:
            return self.inv_freq
        return 1.0 / (self.base ** (torch.arange(0, self.rotary_dim, 2, dtype=torch.float) / self.rotary_dim))

    def cos_sin(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin (B, 1, T, rotary_dim) in fp32 for positions (B, T), as transformers computes them."""
        inv_freq = self.frequencies().to(positions.device, torch.float)
        freqs = positions[..., None].float() * inv_freq                  # (B, T, R/2)
        angles = torch.cat((freqs, freqs), dim=-1)                        # (B, T, R)
        return (angles.cos() * self.attention_scaling)[:, None], (angles.sin() * self.attention_scaling)[:, None]

    def layout(self) -> dict:
        """JSON-able description (what a store manifest records)."""
        return {"type": self.attention_type, "base": float(self.base), "rotary_dim": self.rotary_dim,
                "rope_type": self.rope_type, "scaling": self.scaling,
                "attention_scaling": float(self.attention_scaling), "key_norm": self.key_norm}


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _check(keys: torch.Tensor, positions: torch.Tensor, spec: RotarySpec) -> None:
    if keys.dim() != 4:
        raise DataError(f"keys must be (B, H, T, D), got shape {tuple(keys.shape)}")
    if positions.shape != (keys.shape[0], keys.shape[2]):
        raise DataError(f"positions must be (B, T) = {(keys.shape[0], keys.shape[2])} for keys "
                        f"{tuple(keys.shape)}, got {tuple(positions.shape)}")
    if keys.shape[-1] < spec.rotary_dim:
        raise DataError(f"keys have head_dim {keys.shape[-1]} < rotary_dim {spec.rotary_dim}")


def _apply(keys: torch.Tensor, positions: torch.Tensor, spec: RotarySpec, inverse: bool) -> torch.Tensor:
    _check(keys, positions, spec)
    rotated, rest = keys[..., :spec.rotary_dim], keys[..., spec.rotary_dim:]
    cos, sin = spec.cos_sin(positions)                                    # (B, 1, T, R)
    if keys.dtype == torch.float32:
        x = rotated
    else:  # 16-bit keys: rotate in fp32 so unrotate(rotate(k)) loses nothing beyond the final rounding
        x = rotated.float()
    if inverse:
        out = (x * cos - _rotate_half(x) * sin) / (cos.square() + sin.square())  # / a^2
    else:
        out = (x * cos) + (_rotate_half(x) * sin)
    out = out.to(keys.dtype)                                              # (B, H, T, R)
    return torch.cat((out, rest), dim=-1) if rest.shape[-1] else out      # (B, H, T, D)


def rotate(keys: torch.Tensor, positions: torch.Tensor, spec: RotarySpec) -> torch.Tensor:
    """Apply rotary embedding: pre-rotary keys (B, H, T, D) at positions (B, T) -> cached keys."""
    return _apply(keys, positions, spec, inverse=False)


def unrotate(keys: torch.Tensor, positions: torch.Tensor, spec: RotarySpec) -> torch.Tensor:
    """Remove rotary embedding: cached keys (B, H, T, D) at positions (B, T) -> pre-rotary keys."""
    return _apply(keys, positions, spec, inverse=True)


def _text_config(config):
    return config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config


def _rotary_module(config):
    """The model's own rotary embedding module (built on CPU from the config) and whether its attention
    has a key norm. The architecture is instantiated on the meta device: no weights are allocated."""
    from transformers import AutoModel

    with torch.device("meta"):
        base = AutoModel.from_config(config)
    rotary = getattr(base, "rotary_emb", None)
    if rotary is None:
        raise ConfigError(f"model_type {config.model_type!r} has no rotary_emb module: no rotary embedding to remove")
    attention = base.layers[0].self_attn if hasattr(base, "layers") else None
    return type(rotary)(config), attention is not None and hasattr(attention, "k_norm")


def layer_types(config) -> list[str]:
    config = _text_config(config)
    return list(getattr(config, "layer_types", None) or [FULL] * config.num_hidden_layers)


def rotary_specs(config) -> list[RotarySpec]:
    """One RotarySpec per layer of a transformers model config."""
    config = _text_config(config)
    parameters = getattr(config, "rope_parameters", None)
    if not parameters:
        raise ConfigError(f"model_type {config.model_type!r}: config has no rope_parameters (no rotary embedding)")
    types = layer_types(config)
    per_type = all(isinstance(parameters.get(t), dict) for t in set(types))  # Gemma-3: one entry per layer type
    module, key_norm = _rotary_module(config)
    specs: dict[str, RotarySpec] = {}
    for kind in sorted(set(types)):
        params = parameters[kind] if per_type else parameters
        rope_type = params.get("rope_type", "default")
        if rope_type in POSITION_DEPENDENT:
            raise ConfigError(f"rope_parameters[{kind!r}].rope_type = {rope_type!r}: its frequencies change with the "
                              f"sequence length; only fixed-frequency schemes can be removed exactly")
        prefix = f"{kind}_" if hasattr(module, f"{kind}_inv_freq") else ""
        inv_freq = getattr(module, f"{prefix}inv_freq").detach().float().cpu()   # (R/2,)
        specs[kind] = RotarySpec(
            attention_type=kind, base=float(params["rope_theta"]), rotary_dim=2 * inv_freq.numel(),
            rope_type=rope_type, scaling={k: v for k, v in params.items() if k not in ("rope_type", "rope_theta")},
            attention_scaling=float(getattr(module, f"{prefix}attention_scaling")), key_norm=key_norm,
            inv_freq=inv_freq)
    return [specs[kind] for kind in types]


def rotary_layout(config) -> dict | None:
    """JSON-able per-layer rotary parameters (type, base, rotary dim, scaling), or None for a model
    without rotary embedding."""
    if not getattr(_text_config(config), "rope_parameters", None):
        return None
    return {"keys": "stored after rotary embedding (after k_norm where key_norm)",
            "layers": [spec.layout() for spec in rotary_specs(config)]}
