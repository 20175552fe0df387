"""A C2C-style gated fuser: the sender's cache projected into the receiver's own cache, in place.

Cache-to-Cache (thu-nics/C2C) fuses, per receiver layer, the receiver's own keys/values with a projection
of the sender's at the same positions and adds the result through a learned gate. Here, per receiver layer
l and for keys and values apart:

    t     = DenseTransform(sender, aligned to receiver positions)            (B, T, G)  rotary removed
    fused = own + sigmoid(g_l) * P_l([own ; t])                               (B, T, G)

P_l starts as [-I ; I] (so fused = own + sigmoid(g_l) * (t - own): a pull towards the transferred cache) and
g_l at `gate_init`. It needs the receiver's own cache of the same input: context-aware only. Positions the
sender does not cover (the receiver's sink, frame tokens only the sender's sink covers) keep their own cache.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .cache import KVBlock
from .dense import DenseTransform, _flat


class GatedFuser(nn.Module):
    def __init__(self, transform: DenseTransform, gate_init: float = -2.0):
        super().__init__()
        self.transform = transform
        self.project = nn.ParameterDict()
        self.gate = nn.ParameterDict()
        for l in range(transform.target.num_layers):
            width = transform.target.layer_width(l)
            for kind in ("key", "value"):
                self.project[f"{kind}{l}"] = nn.Parameter(torch.cat([-torch.eye(width), torch.eye(width)]))  # (2G, G)
                self.gate[f"{kind}{l}"] = nn.Parameter(torch.tensor(float(gate_init)))

    def forward(self, own: tuple[list[Tensor], list[Tensor]], sender: tuple[list[Tensor], list[Tensor]]):
        """own: the receiver's position-free cache at the aligned positions; sender: the pooled, position-free
        sender cache there (per layer (B, H, T, D)). Returns the fused position-free keys and values."""
        moved = self.transform(*sender)
        out = {}
        for index, kind in enumerate(("key", "value")):
            layers = []
            for l, (mine, theirs) in enumerate(zip(own[index], moved[index])):
                B, H, T, D = mine.shape
                mixed = torch.cat([_flat(mine), _flat(theirs)], -1) @ self.project[f"{kind}{l}"].to(mine.dtype)
                fused = _flat(mine) + torch.sigmoid(self.gate[f"{kind}{l}"]) * mixed           # (B, T, H*D)
                layers.append(fused.view(B, T, H, D).transpose(1, 2))
            out[kind] = layers
        return out["key"], out["value"]


def fuse_in_place(own: KVBlock, fused: KVBlock) -> KVBlock:
    """The receiver's own block with the entries at `fused`'s positions replaced by `fused`'s (row by row)."""
    keys, values = [k.clone() for k in own.keys], [v.clone() for v in own.values]
    for b in range(own.batch):
        where = {int(p): i for i, p in enumerate(own.positions[b].tolist()) if own.mask[b, i]}
        columns = [i for i in range(fused.length) if fused.mask[b, i]]
        target = torch.tensor([where[int(fused.positions[b, i])] for i in columns], dtype=torch.long)
        source = torch.tensor(columns, dtype=torch.long)
        for l in range(own.num_layers):
            keys[l][b, :, target] = fused.keys[l][b, :, source]
            values[l][b, :, target] = fused.values[l][b, :, source]
    return KVBlock(keys, values, own.mask, own.positions)
