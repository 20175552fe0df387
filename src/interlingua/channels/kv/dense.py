"""A dense cross-model cache transformation for one direction (sender -> receiver), any tokenizers.

    sender KVBlock (its positions 0..n-1, keys after its rotary)
      -> unrotate with the sender's specs; the sender's position 0 (attention sink) is read by nobody
      -> pool onto receiver positions: receiver token r reads the mean of the sender positions covering
         its characters (tokens.align; identity when the tokenizers are the same)
      -> per receiver layer l: keys and values from a window of sender layers around the one at the same
         relative depth (`layer_window` layers, H_s*D_s each, concatenated), one affine map each
      -> rotate with the receiver's specs at the receiver positions
      -> after the receiver's own position-0 cache

Training is two-phase ("See What I See, Know What I Think"): phase 1 (reconstruction) fits every map
to the receiver's own cache of the same text at the aligned positions. The loss is the squared error,
so its minimiser is closed-form: `Phase1` streams the moments and `fit` solves the ridge system (exact,
no step size to tune). Phase 2 (generation) trains the same maps with the receiver's loss on the answer.
Phase 2 alone starts from zero maps (the zero-cache control).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ...errors import ConfigError, DataError
from .cache import KVBlock, concat
from .rotary import rotate, unrotate
from .tokens import align
from .transfer import Endpoint
from .translators.base import CacheShape
from .translators.ridge import proportional_layer


@dataclass
class DenseConfig:
    layer_window: int = 3        # sender layers read per receiver layer (centred on the proportional one)
    ridge_lambda: float = 1e-2   # phase 1 penalty, relative to the mean feature variance

    def __post_init__(self):
        if self.layer_window < 1 or self.layer_window % 2 == 0:
            raise ConfigError(f"dense: layer_window must be a positive odd number, got {self.layer_window}")
        if not self.ridge_lambda >= 0:
            raise ConfigError(f"dense: ridge_lambda must be >= 0, got {self.ridge_lambda}")


def layer_windows(source_layers: int, target_layers: int, window: int) -> list[list[int]]:
    """For each receiver layer, the sender layers it reads: `window` consecutive layers around the
    proportional one, shifted to stay inside the sender (fewer if the sender is shallower)."""
    width = min(window, source_layers)
    out = []
    for layer in range(target_layers):
        centre = proportional_layer(layer, target_layers, source_layers)
        start = min(max(0, centre - width // 2), source_layers - width)
        out.append(list(range(start, start + width)))
    return out


def _flat(t: Tensor) -> Tensor:
    """(B, H, T, D) -> (B, T, H*D)."""
    B, H, T, D = t.shape
    return t.transpose(1, 2).reshape(B, T, H * D)


class DenseTransform(nn.Module):
    """Per receiver layer, an affine map for keys and one for values from its window of sender layers."""

    def __init__(self, source: CacheShape, target: CacheShape, config: DenseConfig = DenseConfig()):
        super().__init__()
        self.source, self.target, self.config = source, target, config
        self.windows = layer_windows(source.num_layers, target.num_layers, config.layer_window)
        self.weight = nn.ParameterDict()
        self.bias = nn.ParameterDict()
        for l, window in enumerate(self.windows):
            features = sum(source.layer_width(s) for s in window)
            for kind in ("key", "value"):
                self.weight[f"{kind}{l}"] = nn.Parameter(torch.zeros(features, target.layer_width(l)))  # (F, G)
                self.bias[f"{kind}{l}"] = nn.Parameter(torch.zeros(target.layer_width(l)))              # (G,)

    def features(self, kind_tensors: list[Tensor], layer: int) -> Tensor:
        """(B, T, F): the receiver layer's window of sender layers, concatenated."""
        return torch.cat([_flat(kind_tensors[s]) for s in self.windows[layer]], dim=-1)

    def forward(self, keys: list[Tensor], values: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Position-free sender keys and values (per layer (B, H_s, T, D_s)) -> the receiver's."""
        out = {}
        for kind, source in (("key", keys), ("value", values)):
            layers = []
            for l in range(self.target.num_layers):
                x = self.features(source, l)                                             # (B, T, F)
                y = x @ self.weight[f"{kind}{l}"].to(x.dtype) + self.bias[f"{kind}{l}"].to(x.dtype)  # (B, T, G)
                B, T, _ = y.shape
                layers.append(y.view(B, T, self.target.heads(l), self.target.dim(l)).transpose(1, 2))
            out[kind] = layers
        return out["key"], out["value"]

    @torch.no_grad()
    def set_identity(self) -> "DenseTransform":
        """Each receiver layer copies the sender layer at its own depth (same cache shapes only)."""
        if self.source != self.target:
            raise ConfigError(f"an identity transformation needs the same cache shapes, got {self.source} -> "
                              f"{self.target}")
        for l, window in enumerate(self.windows):
            offset = sum(self.source.layer_width(s) for s in window[:window.index(l)])
            width = self.target.layer_width(l)
            for kind in ("key", "value"):
                weight = self.weight[f"{kind}{l}"]
                weight.zero_()
                weight[offset:offset + width] = torch.eye(width)
                self.bias[f"{kind}{l}"].zero_()
        return self


class Phase1:
    """Streamed moments of (pooled sender features, receiver cache) pairs; `fit` writes the ridge solution."""

    def __init__(self, transform: DenseTransform):
        self.transform, self.n = transform, 0
        self.moments: dict[str, list[Tensor]] = {}   # key -> [sum x, X^T X, sum y, X^T Y] in float64

    @torch.no_grad()
    def add(self, source: tuple[list[Tensor], list[Tensor]], target: tuple[list[Tensor], list[Tensor]],
            mask: Tensor) -> None:
        """source/target: position-free per-layer keys, values (B, H, T, D) at the same (receiver) positions;
        mask (B, T): the positions to fit on."""
        mask = mask.bool()
        for kind, xs, ys in (("key", source[0], target[0]), ("value", source[1], target[1])):
            for l in range(self.transform.target.num_layers):
                x = self.transform.features(xs, l)[mask].double()                        # (N, F)
                y = _flat(ys[l])[mask].double()                                          # (N, G)
                parts = [x.sum(0), x.T @ x, y.sum(0), x.T @ y]
                key = f"{kind}{l}"
                self.moments[key] = parts if key not in self.moments else [a + b for a, b in zip(self.moments[key], parts)]
        self.n += int(mask.sum())

    @torch.no_grad()
    def fit(self) -> DenseTransform:
        n = self.n
        if n < 2:
            raise DataError(f"phase 1: {n} aligned positions accumulated, need at least 2")
        for key, (sx, sxx, sy, sxy) in self.moments.items():
            mean_x, mean_y = sx / n, sy / n
            cxx = sxx - n * torch.outer(mean_x, mean_x)                                   # (F, F)
            cxy = sxy - n * torch.outer(mean_x, mean_y)                                   # (F, G)
            reg = self.transform.config.ridge_lambda * torch.diagonal(cxx).mean().clamp_min(1e-300)
            weight = torch.linalg.solve(cxx + reg * torch.eye(len(cxx), dtype=cxx.dtype), cxy)
            self.transform.weight[key].copy_(weight.float())
            self.transform.bias[key].copy_((mean_y - mean_x @ weight).float())
        self.moments = {}
        return self.transform


def aligned_positions(receiver_spans: list[tuple[int, int]], sender_spans: list[tuple[int, int]]):
    """Pooling weights (R, S) and receiver positions (R,) of one row: the receiver positions (except 0) that
    share characters with a sender position (except 0). Position 0 is each model's attention sink (or
    <bos>): the sender's is read by nobody, the receiver keeps its own there."""
    alignment = align(receiver_spans, sender_spans, skip={0})
    kept = alignment.kept
    rows = [i for i, r in enumerate(kept) if r > 0]
    if not rows:
        raise DataError("no receiver token shares a character with the sender's tokens after position 0 "
                        f"(receiver spans {receiver_spans[:8]}, sender spans {sender_spans[:8]})")
    return alignment.pooling()[rows], torch.tensor([kept[i] for i in rows], dtype=torch.long)


def pool(block: KVBlock, weights: list[Tensor], positions: list[Tensor]) -> KVBlock:
    """Each row's sender entries averaged onto receiver positions: weights[b] (R_b, S_b) over the row's real
    entries, positions[b] (R_b,) the receiver positions they go to. Left-padded like every KVBlock."""
    rows_k, rows_v = [[] for _ in block.keys], [[] for _ in block.values]
    width = max(len(p) for p in positions)
    device = block.mask.device
    mask = torch.zeros(block.batch, width, dtype=torch.long, device=device)
    pos = torch.zeros(block.batch, width, dtype=torch.long, device=device)
    for b in range(block.batch):
        real = block.mask[b].bool()
        w = weights[b].to(device, block.keys[0].dtype)                                  # (R, S)
        if w.shape[1] != int(real.sum()):
            raise DataError(f"pool: row {b} has {int(real.sum())} sender entries, its alignment {w.shape[1]}")
        pad = width - len(positions[b])
        mask[b, pad:] = 1
        pos[b, pad:] = positions[b].to(device)
        for out, tensors in ((rows_k, block.keys), (rows_v, block.values)):
            for l, t in enumerate(tensors):
                pooled = torch.einsum("rs,hsd->hrd", w, t[b][:, real])                 # (H, R, D)
                out[l].append(nn.functional.pad(pooled, (0, 0, pad, 0)))
    stack = lambda rows: [torch.stack(layer) for layer in rows]                         # (B, H, W, D)
    return KVBlock(stack(rows_k), stack(rows_v), mask, pos)


def position_free(block: KVBlock, end: Endpoint) -> tuple[list[Tensor], list[Tensor]]:
    keys = [unrotate(k, block.positions, spec) for k, spec in zip(block.keys, end.rotary)]
    return keys, list(block.values)


def transfer(transform: nn.Module, block: KVBlock, weights: list[Tensor], positions: list[Tensor],
             sender: Endpoint, receiver: Endpoint) -> KVBlock:
    """The receiver's cache for the sender's block: its own sink, then the transformed aligned positions
    (receiver positions `positions`, read from the sender entries by `weights`, see `pool`)."""
    aligned = pool(KVBlock(*position_free(block, sender), block.mask, block.positions), weights, positions)
    keys, values = transform(aligned.keys, aligned.values)
    keep = aligned.mask[:, None, :, None].bool()
    keys = [torch.where(keep, rotate(k, aligned.positions, spec), 0) for k, spec in zip(keys, receiver.rotary)]
    values = [torch.where(keep, v, 0) for v in values]
    return concat(receiver.sink, KVBlock(keys, values, aligned.mask, aligned.positions))
