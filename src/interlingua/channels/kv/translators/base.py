"""What every KV translator shares: a member's cache shape, the block layout, and the shared space S.

A cache block is, per layer l, keys and values of shape (B, H_l, T, D_l) (the transformers layout),
keys with rotary embedding REMOVED (the caller un-rotates with the source's parameters and re-applies
rotary with the target's). A block is passed as any object with `.keys` and `.values` lists (the
channel's KVBlock, or `KV`) or as a `(keys, values)` pair of per-layer lists; translators return a
`KV(keys, values)` named tuple. Masks and positions never reach a translator: every map here works
per position, so the caller keeps them (and, by the attention-sink decision, never passes position 0:
the target uses its own cache there; fit statistics without it too).

`SharedSpace` is the paper's pool (Dery et al. 2.1): one encoder T[m->S] (block -> (B, T, Q)) and one
decoder T[S->m] ((B, T, Q) -> block) per member, so any path src -> S -> tgt works, self-cycles included,
and parameters grow linearly with the number of members.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, NamedTuple, Sequence

import torch
from torch import Tensor, nn

from ....errors import ConfigError, DataError


class KV(NamedTuple):
    """A translated block: per layer keys and values (B, H_l, T, D_l); unpacks as (keys, values)."""
    keys: list[Tensor]
    values: list[Tensor]


@dataclass(frozen=True)
class CacheShape:
    """A model's cache shape; heads and head_dim are one int for every layer or one per layer."""
    num_layers: int                          # L: attention layers (blocks) in the cache
    num_kv_heads: int | tuple[int, ...] = 1  # H or (H_0, ..., H_{L-1}): KV heads per layer
    head_dim: int | tuple[int, ...] = 64     # D or (D_0, ..., D_{L-1}): key/value size per head

    def __post_init__(self):
        if not isinstance(self.num_layers, int) or self.num_layers < 1:
            raise ConfigError(f"CacheShape.num_layers must be a positive int, got {self.num_layers!r}")
        for key in ("num_kv_heads", "head_dim"):
            value = getattr(self, key)
            if isinstance(value, (list, tuple)):
                if len(value) != self.num_layers or not all(isinstance(v, int) and v > 0 for v in value):
                    raise ConfigError(f"CacheShape.{key}: expected {self.num_layers} positive ints, got {value!r}")
                # all layers alike: one int, so equal shapes compare equal however they were written
                object.__setattr__(self, key, value[0] if len(set(value)) == 1 else tuple(value))
            elif not isinstance(value, int) or value < 1:
                raise ConfigError(f"CacheShape.{key} must be a positive int or a per-layer list, got {value!r}")

    def heads(self, layer: int) -> int:
        h = self.num_kv_heads
        return h[layer] if isinstance(h, tuple) else h

    def dim(self, layer: int) -> int:
        d = self.head_dim
        return d[layer] if isinstance(d, tuple) else d

    def layer_width(self, layer: int) -> int:
        """H_l * D_l: one layer's keys (or values) at one position."""
        return self.heads(layer) * self.dim(layer)

    @property
    def width(self) -> int:
        """sum_l H_l * D_l: all layers' keys (or values) at one position."""
        return sum(self.layer_width(l) for l in range(self.num_layers))

    def __str__(self) -> str:
        return f"{self.num_layers} layers x {self.num_kv_heads} heads x {self.head_dim}"

    @classmethod
    def of(cls, block) -> "CacheShape":
        keys, _ = split_block(block)
        heads = tuple(k.shape[1] for k in keys)
        dims = tuple(k.shape[3] for k in keys)
        same = len(set(heads)) == 1 and len(set(dims)) == 1
        return cls(len(keys), heads[0] if same else heads, dims[0] if same else dims)

    @classmethod
    def from_layout(cls, layout: dict) -> "CacheShape":
        """From a store manifest's `kv` entry (extract.kv_layout): num_layers, num_kv_heads, head_dim."""
        try:
            return cls(layout["num_layers"], layout["num_kv_heads"], layout["head_dim"])
        except KeyError as err:
            raise DataError(f"KV layout misses key {err} (has {sorted(layout)})") from None

    @classmethod
    def from_hf_config(cls, config) -> "CacheShape":
        heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        return cls(config.num_hidden_layers, heads, dim)


def split_block(block) -> KV:
    """(keys, values) lists from an object with .keys/.values lists (KV, KVBlock) or a (keys, values) pair.

    A pair is (all layers' keys, all layers' values), never the legacy ((k_0, v_0), (k_1, v_1), ...).
    """
    if isinstance(getattr(block, "keys", None), (list, tuple)):
        keys, values = block.keys, block.values
    elif isinstance(block, (tuple, list)) and len(block) == 2:
        keys, values = block
    else:
        raise DataError(f"a KV block is a (keys, values) pair of per-layer lists, got {type(block).__name__}")
    return KV(list(keys), list(values))


def check_block(shape: CacheShape, block, who: str) -> KV:
    """The block's (keys, values), or a DataError naming the member, layer and shapes."""
    keys, values = split_block(block)
    if len(keys) != shape.num_layers or len(values) != shape.num_layers:
        raise DataError(f"{who}: block has {len(keys)} key / {len(values)} value layers, "
                        f"cache shape is {shape}")
    lead = keys[0].shape[0], keys[0].shape[2]                     # (B, T)
    for l, (k, v) in enumerate(zip(keys, values)):
        want = (lead[0], shape.heads(l), lead[1], shape.dim(l))
        for kind, t in (("keys", k), ("values", v)):
            if tuple(t.shape) != want:
                raise DataError(f"{who}: layer {l} {kind} have shape {tuple(t.shape)}, expected (B, H, T, D) "
                                f"= {want} for cache shape {shape}")
    return KV(keys, values)


def flatten(tensors: Sequence[Tensor]) -> Tensor:
    """Per-layer (B, H_l, T, D_l) -> (B, T, sum_l H_l*D_l), layer-major then head-major."""
    B, _, T, _ = tensors[0].shape
    return torch.cat([t.transpose(1, 2).reshape(B, T, -1) for t in tensors], dim=-1)   # (B, T, W)


def unflatten(shape: CacheShape, flat: Tensor) -> list[Tensor]:
    """(B, T, sum_l H_l*D_l) -> per-layer (B, H_l, T, D_l); inverse of `flatten`."""
    B, T, _ = flat.shape
    sizes = [shape.layer_width(l) for l in range(shape.num_layers)]
    return [part.reshape(B, T, shape.heads(l), shape.dim(l)).transpose(1, 2)          # (B, H_l, T, D_l)
            for l, part in enumerate(flat.split(sizes, dim=-1))]


class CacheStandardizer(nn.Module):
    """Per-dimension mean/std of a member's keys and values (flattened, (W,)); identity until fitted.

    Encoders read (x - mean) / std, decoders emit mean + std * y: an affine change of coordinates
    (a linear translator stays linear) that spares the adapters the caches' raw scales and offsets.
    """

    def __init__(self, shape: CacheShape):
        super().__init__()
        for kind in ("key", "value"):
            self.register_buffer(f"{kind}_mean", torch.zeros(shape.width))
            self.register_buffer(f"{kind}_std", torch.ones(shape.width))

    def normalize(self, kind: str, flat: Tensor) -> Tensor:
        return (flat - getattr(self, f"{kind}_mean")) / getattr(self, f"{kind}_std")   # (B, T, W)

    def denormalize(self, kind: str, flat: Tensor) -> Tensor:
        return getattr(self, f"{kind}_mean") + getattr(self, f"{kind}_std") * flat      # (B, T, W)

    @torch.no_grad()
    def fit(self, keys: Sequence[Tensor], values: Sequence[Tensor], mask: Tensor | None = None,
            min_std: float = 1e-6) -> None:
        for kind, tensors in (("key", keys), ("value", values)):
            flat = flatten(tensors).double()                                            # (B, T, W)
            rows = flat[mask.bool()] if mask is not None else flat.reshape(-1, flat.shape[-1])  # (N, W)
            if len(rows) < 2:
                raise DataError(f"fitting cache statistics needs at least 2 positions, got {len(rows)}")
            getattr(self, f"{kind}_mean").copy_(rows.mean(0))
            getattr(self, f"{kind}_std").copy_(rows.std(0).clamp_min(min_std))


def check_name(name: str) -> str:
    if not isinstance(name, str) or not name or "." in name:
        raise ConfigError(f"pool member name must be a non-empty string without '.', got {name!r}")
    return name


class SharedSpace(nn.Module):
    """Per-member encoders T[m->S] and decoders T[S->m] around one shared space of size Q.

    `encoder(shape, config)` builds a module with forward(keys, values) -> (B, T, Q);
    `decoder(shape, config)` one with forward(z) -> (keys, values). Both hold a `stats`
    CacheStandardizer (fit with `fit_stats`).
    """
    trainable = True

    def __init__(self, config, shapes: dict[str, CacheShape], encoder: Callable, decoder: Callable):
        super().__init__()
        self.config = config
        self.make_encoder, self.make_decoder = encoder, decoder
        self.shapes: dict[str, CacheShape] = {}
        self.encoders, self.decoders = nn.ModuleDict(), nn.ModuleDict()
        for name, shape in shapes.items():
            self.add_member(name, shape)

    @property
    def members(self) -> list[str]:
        return list(self.shapes)

    def add_member(self, name: str, shape: CacheShape) -> None:
        """A new member's adapter pair (freshly initialised); train it with `freeze_except([name])`."""
        if check_name(name) in self.shapes:
            raise ConfigError(f"pool member '{name}' is already in the shared space (members: {self.members})")
        if not isinstance(shape, CacheShape):
            raise ConfigError(f"pool member '{name}': shape must be a CacheShape, got {type(shape).__name__}")
        self.shapes[name] = shape
        self.encoders[name] = self.make_encoder(shape, self.config)
        self.decoders[name] = self.make_decoder(shape, self.config)

    def _member(self, name: str) -> CacheShape:
        if name not in self.shapes:
            raise ConfigError(f"unknown pool member '{name}' (members: {self.members})")
        return self.shapes[name]

    def encode(self, model: str, block) -> Tensor:
        """T[model->S]: the member's un-rotated block -> (B, T, Q)."""
        keys, values = check_block(self._member(model), block, f"encode from '{model}'")
        return self.encoders[model](keys, values)                                       # (B, T, Q)

    def decode(self, model: str, z: Tensor) -> KV:
        """T[S->model]: (B, T, Q) -> the member's un-rotated (keys, values)."""
        self._member(model)
        if z.dim() != 3:
            raise DataError(f"decode to '{model}': shared vectors must be (B, T, Q), got {tuple(z.shape)}")
        q = getattr(self.config, "shared_dim", None)
        if q is not None and z.shape[-1] != q:
            raise DataError(f"decode to '{model}': shared vectors have size {z.shape[-1]}, shared_dim is {q}")
        return self.decoders[model](z)

    def translate(self, src: str, tgt: str, block) -> KV:
        """src -> S -> tgt (src == tgt is the cyclic path)."""
        return self.decode(tgt, self.encode(src, block))

    def freeze_except(self, names: Iterable[str]) -> None:
        """Only the listed members' adapters keep requires_grad (extensibility: train a newcomer alone)."""
        keep = set(names)
        for n in keep:
            self._member(n)
        for n in self.shapes:
            for p in (*self.encoders[n].parameters(), *self.decoders[n].parameters()):
                p.requires_grad_(n in keep)

    def num_parameters(self, name: str | None = None) -> int:
        """Parameters of one member's adapter pair, or of the whole space (the sum over members)."""
        names = [name] if name is not None else self.members
        total = 0
        for n in names:
            self._member(n)
            total += sum(p.numel() for p in (*self.encoders[n].parameters(), *self.decoders[n].parameters()))
        return total

    @torch.no_grad()
    def fit_stats(self, name: str, block, mask: Tensor | None = None) -> None:
        """Per-dimension mean/std of the member's keys and values over real positions (mask (B, T))."""
        keys, values = check_block(self._member(name), block, f"fit_stats of '{name}'")
        stats = CacheStandardizer(self.shapes[name]).to(keys[0].device)
        stats.fit(keys, values, mask)
        for module in (self.encoders[name], self.decoders[name]):
            if getattr(module, "stats", None) is not None:
                module.stats.load_state_dict(stats.state_dict())
