"""Translator registry: name in config `translators.<name>.type` -> (config dataclass, builder).

Every translator maps a source member's un-rotated cache block (per layer keys and values
(B, H_l, T, D_l)) to a target member's, per position, with `translate(src, tgt, block) -> (keys, values)`,
and counts its size with `num_parameters(name=None)` (paper Table 1). What each one tests:

- identity:        nothing learned; only where source and target cache shapes match.
- linear:          separate key and value linear maps over the layer-concatenated cache, through S.
- cross_attention: the paper's adapters (Dery et al. 2.2): layer-wise cross-attention stacks, through S.
- ridge:           training-free closed-form per-head ridge map, pairwise (not through S).

identity, linear and cross_attention are a `SharedSpace` (one encoder T[m->S] and one decoder T[S->m]
per member: `encode`, `decode`, `add_member`, `freeze_except`, `fit_stats`); ridge is a
`RidgeTranslator` (`accumulate`, `fit`). A translator's `trainable` is False when nothing is optimised.
"""
from __future__ import annotations

import dataclasses

from ....errors import ConfigError
from .base import KV, CacheShape, SharedSpace, flatten, split_block, unflatten
from .cross_attention import CrossAttentionConfig, CrossAttentionDecoder, CrossAttentionEncoder
from .identity import IdentityConfig, IdentitySpace
from .linear import LinearConfig, LinearDecoder, LinearEncoder
from .ridge import RidgeConfig, RidgeTranslator, proportional_layer


def _shared(encoder, decoder):
    return lambda config, shapes: SharedSpace(config, shapes, encoder, decoder)


REGISTRY = {
    "identity": (IdentityConfig, IdentitySpace),
    "linear": (LinearConfig, _shared(LinearEncoder, LinearDecoder)),
    "cross_attention": (CrossAttentionConfig, _shared(CrossAttentionEncoder, CrossAttentionDecoder)),
    "ridge": (RidgeConfig, RidgeTranslator),
}


def translator_config(spec: dict, key: str = "translator"):
    """(type, dataclass config) from a config entry {type: ..., options...}; unknown keys name themselves."""
    spec = dict(spec)
    kind = spec.pop("type", None)
    if kind not in REGISTRY:
        raise ConfigError(f"config key '{key}.type': unknown translator type {kind!r} (known: {sorted(REGISTRY)})")
    config_class, _ = REGISTRY[kind]
    allowed = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise ConfigError(f"config key '{key}': unknown option(s) {unknown} for type '{kind}' "
                          f"(allowed: {sorted(allowed)})")
    return kind, config_class(**spec)


def build_translator(kind: str, config, shapes: dict[str, CacheShape]):
    """A translator over the pool `shapes` ({member name: CacheShape})."""
    if kind not in REGISTRY:
        raise ConfigError(f"unknown translator type {kind!r} (known: {sorted(REGISTRY)})")
    return REGISTRY[kind][1](config, shapes)


__all__ = ["KV", "CacheShape", "SharedSpace", "RidgeTranslator", "IdentitySpace", "REGISTRY",
           "CrossAttentionConfig", "IdentityConfig", "LinearConfig", "RidgeConfig",
           "translator_config", "build_translator", "proportional_layer", "flatten", "unflatten", "split_block"]
