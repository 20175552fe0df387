"""Identity translator (paper Table 1): the source's cache, unchanged, as the target's cache.

Only defined where source and target cache shapes match (a ConfigError names both otherwise); no
parameters. Through S it is a lossless reshape: encode flattens a block to (B, T, 2 * sum_l H_l*D_l)
(keys then values), decode reshapes it back, so Q is the member's own cache width. Tests: how far
apart are two members' caches when nothing is learned (the paper's 4.94 vs 3.09 NLL for two seeds)?
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ....errors import ConfigError, DataError
from .base import KV, CacheShape, SharedSpace, check_block, flatten, unflatten


@dataclass
class IdentityConfig:
    """No options: the identity map has nothing to choose."""


class IdentityEncoder(nn.Module):
    """Block -> (B, T, 2W): keys then values, flattened per position."""

    def __init__(self, shape: CacheShape, config: IdentityConfig):
        super().__init__()
        self.shape = shape

    def forward(self, keys: list[Tensor], values: list[Tensor]) -> Tensor:
        return torch.cat([flatten(keys), flatten(values)], dim=-1)                      # (B, T, 2W)


class IdentityDecoder(nn.Module):
    """(B, T, 2W) -> block: the inverse reshape."""

    def __init__(self, shape: CacheShape, config: IdentityConfig):
        super().__init__()
        self.shape = shape

    def forward(self, z: Tensor) -> KV:
        if z.shape[-1] != 2 * self.shape.width:
            raise DataError(f"identity decode: shared vectors have size {z.shape[-1]}, this member's "
                            f"cache ({self.shape}) needs 2 x {self.shape.width}")
        k, v = z.split(self.shape.width, dim=-1)                                        # (B, T, W) each
        return KV(unflatten(self.shape, k), unflatten(self.shape, v))


class IdentitySpace(SharedSpace):
    """The identity as a pool: `translate` hands the source's tensors on, untouched."""
    trainable = False

    def __init__(self, config: IdentityConfig, shapes: dict[str, CacheShape]):
        super().__init__(config, shapes, IdentityEncoder, IdentityDecoder)

    def translate(self, src: str, tgt: str, block) -> KV:
        src_shape, tgt_shape = self._member(src), self._member(tgt)
        if src_shape != tgt_shape:
            raise ConfigError(f"identity translator needs matching cache shapes: '{src}' has {src_shape}, "
                              f"'{tgt}' has {tgt_shape}")
        return check_block(src_shape, block, f"identity from '{src}'")
