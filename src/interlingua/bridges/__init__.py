"""Bridge registry: name in config `bridges.<name>.type` -> (config dataclass, module)."""
from __future__ import annotations

import dataclasses

from ..errors import ConfigError
from .perceiver import PerceiverConfig, PerceiverResampler

REGISTRY = {"perceiver": (PerceiverConfig, PerceiverResampler)}


def bridge_config(name: str, spec: dict, sender_dim: int, receiver_dim: int):
    """Dataclass config from a config entry; unknown keys are an error naming them."""
    spec = dict(spec)
    kind = spec.pop("type")
    config_class, _ = REGISTRY[kind]
    allowed = {f.name for f in dataclasses.fields(config_class)} - {"sender_dim", "receiver_dim"}
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise ConfigError(f"config key 'bridges.{name}': unknown option(s) {unknown} for type '{kind}' "
                          f"(allowed: {sorted(allowed)})")
    return config_class(sender_dim=sender_dim, receiver_dim=receiver_dim, **spec)


def build_bridge(kind: str, config):
    return REGISTRY[kind][1](config)
