"""Bridge registry: name in config `bridges.<name>.type` -> (config dataclass, module).

Every bridge maps sender states (B, T, d_s) with a mask (B, T) (True = real token) to M soft tokens
(B, M, d_r), RMS-normalised times alpha (`calibrate(receiver_embedding_rms)`); every config has
sender_dim, receiver_dim, source_layer and num_queries (M). What each one tests:

- perceiver: the default (LatentWire 3.2): M learned queries cross-attend to all sender tokens.
- diffusion: iterative denoising from noise over K steps, cross-attending to the sender states.
- mlp:       no attention: a 2-layer MLP of the mean-pooled states -> M tokens (non-linear read-out).
- linear:    no attention, no non-linearity: one linear map of the mean-pooled states -> M tokens.
- mean_pool: one pooled token shared by all M slots (plus constant per-slot offsets): does M matter?
- identity:  nothing learned: the sender's last M token states (fixed random projection if d_s != d_r).

A module's `trainable` attribute is False when it has no parameters (identity): do not optimise it.
"""
from __future__ import annotations

import dataclasses

from ..errors import ConfigError
from .diffusion import DiffusionBridge, DiffusionConfig
from .identity import IdentityBridge, IdentityConfig
from .linear import LinearBridge, LinearConfig
from .mean_pool import MeanPoolBridge, MeanPoolConfig
from .mlp import MLPBridge, MLPConfig
from .perceiver import PerceiverConfig, PerceiverResampler

REGISTRY = {
    "perceiver": (PerceiverConfig, PerceiverResampler),
    "diffusion": (DiffusionConfig, DiffusionBridge),
    "mlp": (MLPConfig, MLPBridge),
    "linear": (LinearConfig, LinearBridge),
    "mean_pool": (MeanPoolConfig, MeanPoolBridge),
    "identity": (IdentityConfig, IdentityBridge),
}


def bridge_config(name: str, spec: dict, sender_dim: int, receiver_dim: int, seed: int = 0):
    """Dataclass config from a config entry; unknown keys are an error naming them. A bridge whose
    config has a `seed` (identity's fixed projection) takes the run's seed: it is not a config key, so
    the seeds of a sweep are different runs, never one run shown three times."""
    spec = dict(spec)
    kind = spec.pop("type")
    if kind not in REGISTRY:
        raise ConfigError(f"config key 'bridges.{name}.type': unknown bridge type '{kind}' "
                          f"(known: {sorted(REGISTRY)})")
    config_class, _ = REGISTRY[kind]
    fields = {f.name for f in dataclasses.fields(config_class)}
    allowed = fields - {"sender_dim", "receiver_dim", "seed"}
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise ConfigError(f"config key 'bridges.{name}': unknown option(s) {unknown} for type '{kind}' "
                          f"(allowed: {sorted(allowed)})")
    if "seed" in fields:
        spec["seed"] = seed
    return config_class(sender_dim=sender_dim, receiver_dim=receiver_dim, **spec)


def build_bridge(kind: str, config):
    return REGISTRY[kind][1](config)


def is_trainable(bridge) -> bool:
    """False for bridges with nothing to optimise (identity): skip the optimiser, just calibrate and save."""
    return getattr(bridge, "trainable", True) and any(p.requires_grad for p in bridge.parameters())
