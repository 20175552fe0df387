"""Per-example KV caches as plain tensors: every layer's keys and values for a block of positions.

A `KVBlock` is ragged and **left-padded**: row b's real entries are its last `lengths[b]` columns,
in time order, with mask[b] = 1 exactly there. Keys are as the model caches them: after rotary
embedding at `positions` (and after k_norm for Gemma-3; see rotary.py). Padding entries are zero.
Every operation is a gather or a cat, never a detach, so gradients reach whatever produced the
tensors (a translator's output).

Why left padding: a receiver continues each row right after its last real entry, so prefix and
continuation are contiguous ([pad..., prefix, continuation, pad...]). Sliding-window masks count
cache entries (transformers builds them from indices, not position ids); contiguous rows make the
entry distance the position distance.

The attention sink: position 0 (SmolLM2's first token has hidden-state norm ~22,000) is never
translated. The target reads its own position-0 cache, the same for every example:
    concat(kv_of(target, [[bos]]), translated.slice(1))
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ...errors import DataError
from ...runtime import cache_kwarg


@dataclass
class KVBlock:
    keys: list[torch.Tensor]    # per layer (B, H_kv, T, D), after rotary embedding
    values: list[torch.Tensor]  # per layer (B, H_kv, T, D)
    mask: torch.Tensor          # (B, T) long: 1 on real entries, left-padded
    positions: torch.Tensor     # (B, T) long: each entry's rotary position (0 on padding)

    def __post_init__(self):
        if not self.keys or len(self.keys) != len(self.values):
            raise DataError(f"KVBlock needs one keys and one values tensor per layer, got {len(self.keys)} "
                            f"keys and {len(self.values)} values")
        if self.mask.dim() != 2 or self.positions.shape != self.mask.shape:
            raise DataError(f"KVBlock mask and positions must both be (B, T), got {tuple(self.mask.shape)} "
                            f"and {tuple(self.positions.shape)}")
        batch, length = self.mask.shape
        for index, (keys, values) in enumerate(zip(self.keys, self.values)):
            if keys.dim() != 4 or keys.shape[0] != batch or keys.shape[2] != length or values.shape[:3] != keys.shape[:3]:
                raise DataError(f"KVBlock layer {index}: keys {tuple(keys.shape)} and values {tuple(values.shape)} "
                                f"must be (B, H_kv, T, D) with (B, T) = {(batch, length)} as the mask")
        if length > 1 and bool((self.mask[:, 1:] < self.mask[:, :-1]).any()):
            raise DataError("KVBlock mask must be left-padded (no real entry after padding in a row)")

    @property
    def batch(self) -> int:
        return self.mask.shape[0]

    @property
    def length(self) -> int:
        return self.mask.shape[1]

    @property
    def num_layers(self) -> int:
        return len(self.keys)

    @property
    def lengths(self) -> torch.Tensor:
        return self.mask.sum(1)                                                # (B,)

    def next_positions(self) -> torch.Tensor:
        """(B,) the position after each row's last entry (0 for an empty row): where a continuation starts."""
        if self.length == 0:
            return self.mask.new_zeros(self.batch)
        return torch.where(self.mask[:, -1].bool(), self.positions[:, -1] + 1, 0)

    @classmethod
    def from_store(cls, store, rows, dtype: torch.dtype = torch.float32, device="cpu") -> "KVBlock":
        """Rows of an ActivationStore extracted with kv_cache: each row was run from its first token, so
        its positions are 0..n-1."""
        layers, mask = store.kv_batch(rows, dtype, device)
        positions = (mask.cumsum(1) - 1).clamp(min=0) * mask                   # (B, T)
        return cls([k for k, _ in layers], [v for _, v in layers], mask, positions)

    def rows(self, index) -> "KVBlock":
        """The block of the given rows (e.g. a shuffled pairing: another example's prefix)."""
        index = torch.as_tensor(index, dtype=torch.long, device=self.mask.device)
        pick = lambda t: t.index_select(0, index)
        mask, positions = pick(self.mask), pick(self.positions)
        keep = mask.bool()
        return _pack([pick(k) for k in self.keys], [pick(v) for v in self.values], keep, positions)

    def expand(self, batch: int) -> "KVBlock":
        """A batch-1 block repeated for `batch` rows (views, no copy)."""
        if self.batch != 1:
            raise DataError(f"KVBlock.expand needs a batch of 1, got {self.batch}")
        grow = lambda t: t.expand(batch, *t.shape[1:])
        return KVBlock([grow(k) for k in self.keys], [grow(v) for v in self.values], grow(self.mask),
                       grow(self.positions))

    def to(self, *args, **kwargs) -> "KVBlock":
        """Keys and values moved/cast (torch's Tensor.to arguments); mask and positions only move device."""
        keys = [k.to(*args, **kwargs) for k in self.keys]
        device = keys[0].device
        return KVBlock(keys, [v.to(*args, **kwargs) for v in self.values], self.mask.to(device),
                       self.positions.to(device))

    def slice(self, start: int = 0, stop: int | None = None) -> "KVBlock":
        """Each row's real entries [start:stop] (counted from the row's first real entry), left-padded
        again; positions keep their values. slice(1) drops the attention sink, slice(0, n) keeps a prefix."""
        if start < 0 or (stop is not None and stop < start):
            raise DataError(f"KVBlock.slice({start}, {stop}): need 0 <= start <= stop")
        rank = self.mask.cumsum(1) - 1                                         # (B, T) index within the row
        keep = self.mask.bool() & (rank >= start)
        if stop is not None:
            keep &= rank < stop
        return _pack(self.keys, self.values, keep, self.positions)

    def where(self, keep: torch.Tensor) -> "KVBlock":
        """The real entries where keep (B, T) is true, left-padded again; positions keep their values (e.g. the
        most-attended fraction of a transferred cache, or a cache at the positions another block holds)."""
        if tuple(keep.shape) != tuple(self.mask.shape):
            raise DataError(f"KVBlock.where: keep is {tuple(keep.shape)}, the block {tuple(self.mask.shape)}")
        return _pack(self.keys, self.values, keep.bool() & self.mask.bool(), self.positions)

    def at(self, positions: list[torch.Tensor]) -> "KVBlock":
        """Row b's entries at rotary positions `positions[b]` (each must be there)."""
        keep = torch.stack([torch.isin(self.positions[b], positions[b].to(self.positions.device))
                            for b in range(self.batch)]) & self.mask.bool()
        found = keep.sum(1).tolist()
        wanted = [len(p) for p in positions]
        if found != wanted:
            raise DataError(f"KVBlock.at: rows hold {found} of the {wanted} positions asked for")
        return self.where(keep)

    def to_cache(self):
        """A transformers DynamicCache holding every entry of every layer (config-less, so Gemma-3's
        sliding-window layers keep all positions and the window is applied by the mask), and the
        attention mask (B, T) to pass, extended by whatever follows. A fresh cache per call: the
        model appends to it."""
        from transformers import DynamicCache

        cache = DynamicCache()
        for index, (keys, values) in enumerate(zip(self.keys, self.values)):
            cache.update(keys, values, index)
        return cache, self.mask


def concat(*blocks: KVBlock) -> KVBlock:
    """Blocks joined along time, row by row (row b: the first block's entries, then the next's), left-padded
    again. A batch-1 block is repeated for every row (e.g. the target's own position-0 cache)."""
    batch = max(block.batch for block in blocks)
    blocks = [block.expand(batch) if block.batch == 1 and batch > 1 else block for block in blocks]
    first = blocks[0]
    for block in blocks[1:]:
        if block.batch != batch or block.num_layers != first.num_layers:
            raise DataError(f"concat: blocks of (batch, layers) {(block.batch, block.num_layers)} and "
                            f"{(first.batch, first.num_layers)} do not match")
        for index, (keys, other) in enumerate(zip(block.keys, first.keys)):
            if (keys.shape[1], keys.shape[3]) != (other.shape[1], other.shape[3]):
                raise DataError(f"concat: layer {index} has (H_kv, D) {(keys.shape[1], keys.shape[3])} vs "
                                f"{(other.shape[1], other.shape[3])}")
    keys = [torch.cat(layer, 2) for layer in zip(*(b.keys for b in blocks))]           # (B, H, T1 + T2, D)
    values = [torch.cat(layer, 2) for layer in zip(*(b.values for b in blocks))]
    mask = torch.cat([b.mask for b in blocks], 1)                                        # (B, T1 + T2)
    return _pack(keys, values, mask.bool(), torch.cat([b.positions for b in blocks], 1))


def _pack(keys: list[torch.Tensor], values: list[torch.Tensor], keep: torch.Tensor, positions: torch.Tensor) -> KVBlock:
    """The entries where keep (B, T) is true, in time order, left-padded into a block of width max(count)."""
    batch, length = keep.shape
    counts = keep.sum(1)                                                       # (B,)
    width = int(counts.max()) if batch else 0
    # A stable sort of 0/1 puts dropped entries first and kept ones last, each in time order.
    order = torch.sort(keep.to(torch.uint8), dim=1, stable=True).indices[:, length - width:]  # (B, W)
    mask = (torch.arange(width, device=keep.device) >= (width - counts)[:, None]).long()       # (B, W)

    def gather(t: torch.Tensor) -> torch.Tensor:                               # (B, H, T, D) -> (B, H, W, D)
        index = order[:, None, :, None].expand(-1, t.shape[1], -1, t.shape[3])
        return torch.where(mask[:, None, :, None].bool(), t.gather(2, index), 0)

    return KVBlock([gather(k) for k in keys], [gather(v) for v in values], mask,
                   positions.gather(1, order) * mask)


def kv_of(model, ids_list: list[list[int]]) -> KVBlock:
    """The model's own cache of each row of token ids (positions 0..n-1), in the caller's grad mode.
    `model` is a causal LM or its decoder; the output head is not run."""
    from transformers import DynamicCache

    if not ids_list or any(len(ids) == 0 for ids in ids_list):
        raise DataError(f"kv_of needs at least one row and no empty row, got lengths {[len(i) for i in ids_list]}")
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    device = decoder.get_input_embeddings().weight.device
    longest = max(len(ids) for ids in ids_list)
    pad = getattr(decoder.config, "pad_token_id", None) or 0
    ids = torch.full((len(ids_list), longest), pad, dtype=torch.long, device=device)
    mask = torch.zeros_like(ids)
    for row, tokens in enumerate(ids_list):   # right-padded for the run: every row starts at position 0
        ids[row, :len(tokens)] = torch.tensor(tokens, device=device)
        mask[row, :len(tokens)] = 1
    cache = DynamicCache()  # config-less: keeps every position, sliding-window layers included
    positions = torch.arange(longest, device=device).expand(len(ids_list), -1)  # (B, T)
    decoder(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
            **{cache_kwarg(decoder): cache})
    return _pack([layer.keys for layer in cache.layers], [layer.values for layer in cache.layers], mask.bool(),
                 positions)
