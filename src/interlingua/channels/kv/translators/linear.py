"""Linear translator (paper Table 1 and 7.1): separate key and value maps over the layer-concatenated cache.

Into S: z = A_k k + A_v v + b, with k, v the member's standardized keys and values at one position,
all layers concatenated (W = sum_l H_l*D_l each): two W -> Q maps whose outputs are summed.
Out of S: k' = C_k z + c_k and v' = C_v z + c_v (two Q -> W maps), de-standardized and split per layer.
Parameters per member: 2 * W * Q (in, one bias Q) + 2 * (Q * W + W) (out).
Tests: is a linear change of coordinates enough (the paper matches the base model with one, at the
price of a wide Q), i.e. how much does the cross-attention adapter's non-linearity buy?
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from .base import KV, CacheShape, CacheStandardizer, flatten, unflatten


@dataclass
class LinearConfig:
    """Sizes of the linear translator."""
    shared_dim: int = 512      # Q: size of the shared vector per position


class LinearEncoder(nn.Module):
    """(keys, values) -> (B, T, Q): A_k k + A_v v + b over all layers at once."""

    def __init__(self, shape: CacheShape, config: LinearConfig):
        super().__init__()
        self.stats = CacheStandardizer(shape)
        self.key_in = nn.Linear(shape.width, config.shared_dim)
        self.value_in = nn.Linear(shape.width, config.shared_dim, bias=False)   # one bias is enough

    def forward(self, keys: list[Tensor], values: list[Tensor]) -> Tensor:
        dtype = self.key_in.weight.dtype
        k = self.stats.normalize("key", flatten(keys).to(dtype))                 # (B, T, W)
        v = self.stats.normalize("value", flatten(values).to(dtype))             # (B, T, W)
        return self.key_in(k) + self.value_in(v)                                 # (B, T, Q)


class LinearDecoder(nn.Module):
    """(B, T, Q) -> (keys, values): separate Q -> W maps for keys and values."""

    def __init__(self, shape: CacheShape, config: LinearConfig):
        super().__init__()
        self.shape = shape
        self.stats = CacheStandardizer(shape)
        self.key_out = nn.Linear(config.shared_dim, shape.width)
        self.value_out = nn.Linear(config.shared_dim, shape.width)

    def forward(self, z: Tensor) -> KV:
        z = z.to(self.key_out.weight.dtype)                                      # (B, T, Q)
        k = self.stats.denormalize("key", self.key_out(z))                       # (B, T, W)
        v = self.stats.denormalize("value", self.value_out(z))                   # (B, T, W)
        return KV(unflatten(self.shape, k), unflatten(self.shape, v))
