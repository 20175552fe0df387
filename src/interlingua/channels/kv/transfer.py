"""A sender's cache as a receiver's: un-rotate, translate, re-rotate, and put the receiver's own sink first.

    source KVBlock (positions 0..n-1, keys after the source's rotary)
      -> slice(1)                       drop position 0, the attention sink (never translated)
      -> unrotate with the source's specs (keys position-free)
      -> translator.translate(src, tgt)  (any of channels/kv/translators)
      -> rotate with the target's specs at the same positions
      -> concat(target's own position-0 cache, ...)

Controls: the shuffled source is the same path on another example's block (runtime.derangement); `zero_block` is the target's own sink followed by all-zero keys and values.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ...errors import ConfigError, DataError
from .cache import KVBlock, concat, kv_of
from .rotary import RotarySpec, rotary_specs, rotate, unrotate
from .translators import KV


@dataclass
class Endpoint:
    """What the channel needs of a model at either end: its decoder, rotary specs and sink cache."""
    model: object                      # a causal LM (frozen)
    rotary: list[RotarySpec]           # one per layer (rotary.rotary_specs)
    sink: KVBlock                      # (1, H, 1, D) per layer: the model's own cache of its position-0 token

    @classmethod
    def of(cls, model, first_token: int) -> "Endpoint":
        with torch.no_grad():
            sink = kv_of(model, [[first_token]])
        return cls(model, rotary_specs(model.config), sink)


def position_free(block: KVBlock, end: Endpoint) -> KV:
    """The block's keys with rotary removed (values unchanged)."""
    keys = [unrotate(k, block.positions, spec) for k, spec in zip(block.keys, end.rotary)]
    return KV(keys, list(block.values))


def translate_block(translator, src: str, tgt: str, block: KVBlock, source: Endpoint, target: Endpoint) -> KVBlock:
    """The target's cache for the source's block: its own sink, then the translated positions 1..n-1."""
    body = block.slice(1)                                                    # (B, H_s, T-1, D_s) per layer
    out = translator.translate(src, tgt, position_free(body, source))        # un-rotated, target's shape
    keep = body.mask[:, None, :, None].bool()
    keys = [torch.where(keep, rotate(k, body.positions, spec), 0) for k, spec in zip(out.keys, target.rotary)]
    values = [torch.where(keep, v, 0) for v in out.values]
    return concat(target.sink, KVBlock(keys, values, body.mask, body.positions))


def zero_block(block: KVBlock, target: Endpoint) -> KVBlock:
    """Control: the target's own sink, then all-zero keys and values at the block's other positions."""
    body = block.slice(1)
    shape = lambda s: (body.batch, s.shape[1], body.length, s.shape[3])
    keys = [s.new_zeros(shape(s)) for s in target.sink.keys]
    values = [s.new_zeros(shape(s)) for s in target.sink.values]
    return concat(target.sink, KVBlock(keys, values, body.mask, body.positions))


def translate_pooled(space, src: str, tgt: str, block: KVBlock, source: Endpoint, target: Endpoint,
                     pooling: torch.Tensor, mask: torch.Tensor) -> KVBlock:
    """Across tokenizers, through a shared space: each target position reads the shared vectors of the source
    positions covering its characters, pooled (tokens.align; pooling (B, T_t, T_s): row b's weights over its
    source tokens 1..n_b in order (T_s = the block's longest row less the sink), each row summing to 1, or
    0 where no source character reaches the position: it then decodes a zero shared vector). The target's
    positions are 1..T_t where mask (B, T_t) is true (its real tokens). Then its own sink first."""
    if not hasattr(space, "encode"):
        raise ConfigError(f"translating across tokenizers pools shared vectors: the translator needs a shared space "
                          f"(encode/decode), {type(space).__name__} has none")
    body = block.slice(1)                                                    # (B, H_s, T_s, D_s) per layer
    mask = mask.to(body.mask.device)
    if pooling.shape[2] != body.length or pooling.shape[:2] != mask.shape:
        raise DataError(f"translate_pooled: pooling {tuple(pooling.shape)} does not fit a source body of "
                        f"{body.length} positions and a target mask {tuple(mask.shape)}")
    z = space.encode(src, position_free(body, source))                       # (B, T_s, Q), left-padded
    lengths = body.lengths                                                   # (B,)
    order = torch.arange(body.length, device=z.device)                      # token j of a row at index pad + j
    index = (order + (body.length - lengths)[:, None]).clamp(max=body.length - 1)         # (B, T_s)
    real = (order < lengths[:, None])[..., None]                            # (B, T_s, 1)
    z = torch.where(real, z.gather(1, index[..., None].expand(-1, -1, z.shape[2])), 0)   # token order
    z = pooling.to(z) @ z                                                    # (B, T_t, Q)
    out = space.decode(tgt, z)                                               # un-rotated, target's shape
    positions = torch.arange(1, mask.shape[1] + 1, device=mask.device).expand(mask.shape[0], -1)  # (B, T_t)
    keys = [rotate(k, positions, spec) for k, spec in zip(out.keys, target.rotary)]
    full = torch.ones_like(mask, dtype=torch.long)
    translated = KVBlock(keys, list(out.values), full, positions).where(mask)
    return concat(target.sink, translated)
