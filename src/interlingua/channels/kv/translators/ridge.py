"""Ridge translator: a training-free closed-form map from the source's cache to the target's, per pair.

Fitted on cached pairs (the same tokens through both models, un-rotated keys). For each target layer
l_t, its KV heads' keys are regressed on the source layer s = round_half_up(l_t * (L_s-1) / (L_t-1))
(proportional layer mapping; s = 0 when L_t = 1), all of that layer's heads concatenated
(F = H_s*D_s features), plus an unpenalized bias; values likewise from the source's values. Ridge
decouples over output columns, so regressing all of a layer's heads at once is the per-head ridge.

Fit: stream batches through `accumulate` (n, sum x, X^T X, sum y, X^T Y in float64, so any number of
rows works), then `fit` solves, for each target layer, (S_xx + lambda * tr(S_xx)/F * I) W = S_xy with
S the centred moments (`torch.linalg.solve`), b = mean_y - mean_x W. lambda is relative to the mean
feature variance, so it means the same for every model's scale; 0 is plain least squares.
Pairwise (src -> tgt directly, not through S): maps grow with the square of the pool, and
`num_parameters` counts the fitted coefficients (buffers, nothing is trained).
Tests: how much of the cross-model map is linear and per layer, with no training at all?
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ....errors import ConfigError, DataError
from .base import KV, CacheShape, check_block, check_name, unflatten


@dataclass
class RidgeConfig:
    """Penalty of the closed-form ridge map."""
    ridge_lambda: float = 1e-3   # lambda, relative: lambda * tr(S_xx)/F is added to S_xx's diagonal

    def __post_init__(self):
        if not self.ridge_lambda >= 0:
            raise ConfigError(f"ridge: ridge_lambda must be >= 0, got {self.ridge_lambda}")


def proportional_layer(target_layer: int, target_layers: int, source_layers: int) -> int:
    """Source layer read for a target layer: round(l_t * (L_s-1) / (L_t-1)), halves rounded up."""
    if target_layers == 1:
        return 0
    return math.floor(target_layer * (source_layers - 1) / (target_layers - 1) + 0.5)


def _rows(t: Tensor, mask: Tensor | None) -> Tensor:
    """(B, H, T, D) -> (N, H*D) float64 rows, the masked-in positions only."""
    B, _, T, _ = t.shape
    flat = t.detach().transpose(1, 2).reshape(B, T, -1).double()                # (B, T, H*D)
    return flat[mask] if mask is not None else flat.reshape(B * T, -1)            # (N, H*D)


class PairMoments:
    """Streamed sufficient statistics of one src -> tgt pair, for keys and for values."""

    def __init__(self, layer_map: list[int]):
        self.layer_map, self.n = layer_map, 0
        self.sx, self.sxx, self.sy, self.sxy = {}, {}, {}, {}   # keyed (kind, layer)

    def add(self, kind: str, source: list[Tensor], target: list[Tensor], mask: Tensor | None) -> int:
        xs = {s: _rows(source[s], mask) for s in sorted(set(self.layer_map))}    # (N, F_s)
        for s, x in xs.items():
            self._acc(self.sx, (kind, s), x.sum(0))
            self._acc(self.sxx, (kind, s), x.T @ x)                              # (F, F)
        for l, s in enumerate(self.layer_map):
            y = _rows(target[l], mask)                                           # (N, G_l)
            self._acc(self.sy, (kind, l), y.sum(0))
            self._acc(self.sxy, (kind, l), xs[s].T @ y)                          # (F, G)
        return len(next(iter(xs.values())))

    @staticmethod
    def _acc(store: dict, key, value: Tensor) -> None:
        store[key] = store[key] + value if key in store else value

    def solve(self, kind: str, layer: int, lam: float) -> tuple[Tensor, Tensor]:
        """(W (F, G), b (G,)) in float64 for one target layer."""
        s, n = self.layer_map[layer], self.n
        mean_x, mean_y = self.sx[(kind, s)] / n, self.sy[(kind, layer)] / n     # (F,), (G,)
        sxx = self.sxx[(kind, s)] - n * torch.outer(mean_x, mean_x)              # (F, F) centred
        sxy = self.sxy[(kind, layer)] - n * torch.outer(mean_x, mean_y)          # (F, G) centred
        reg = lam * torch.diagonal(sxx).mean().clamp_min(1e-300)
        try:
            weight = torch.linalg.solve(sxx + reg * torch.eye(len(sxx), dtype=sxx.dtype), sxy)
        except RuntimeError as err:   # singular: too few rows or constant features
            raise DataError(f"ridge fit of {kind}s for target layer {layer} is singular ({n} rows, "
                            f"{len(sxx)} features): add rows or raise ridge_lambda ({err})") from None
        return weight, mean_y - mean_x @ weight


class RidgeMap(nn.Module):
    """One fitted src -> tgt map: per target layer, key and value weights (F, G) and biases (G,)."""

    def __init__(self, source: CacheShape, target: CacheShape):
        super().__init__()
        self.target = target
        self.layer_map = [proportional_layer(l, target.num_layers, source.num_layers)
                          for l in range(target.num_layers)]
        for l, s in enumerate(self.layer_map):
            features, outputs = source.layer_width(s), target.layer_width(l)
            for kind in ("key", "value"):
                self.register_buffer(f"{kind}_weight_{l}", torch.zeros(features, outputs))
                self.register_buffer(f"{kind}_bias_{l}", torch.zeros(outputs))

    def forward(self, keys: list[Tensor], values: list[Tensor]) -> KV:
        B, _, T, _ = keys[0].shape
        out = {}
        for kind, source in (("key", keys), ("value", values)):
            flat = []
            for l, s in enumerate(self.layer_map):
                x = source[s].transpose(1, 2).reshape(B, T, -1)                   # (B, T, F)
                w, b = getattr(self, f"{kind}_weight_{l}"), getattr(self, f"{kind}_bias_{l}")
                flat.append(x @ w.to(x.dtype) + b.to(x.dtype))                    # (B, T, G_l)
            out[kind] = unflatten(self.target, torch.cat(flat, dim=-1))
        return KV(out["key"], out["value"])


class RidgeTranslator(nn.Module):
    """Closed-form src -> tgt maps for pairs of pool members; `translate(src, tgt, block)` like S's.

    Usage: `accumulate(src, tgt, src_block, tgt_block, mask)` over batches, then `fit()`. To load a
    saved state_dict, first `add_pair(src, tgt)` for each saved pair.
    """
    trainable = False

    def __init__(self, config: RidgeConfig, shapes: dict[str, CacheShape]):
        super().__init__()
        self.config, self.shapes = config, {}
        self.maps = nn.ModuleDict()
        self._moments: dict[tuple[str, str], PairMoments] = {}
        for name, shape in shapes.items():
            self.add_member(name, shape)

    @property
    def members(self) -> list[str]:
        return list(self.shapes)

    @property
    def pairs(self) -> list[tuple[str, str]]:
        """Fitted (src, tgt) pairs."""
        return [tuple(key.split("__to__")) for key in self.maps]

    def add_member(self, name: str, shape: CacheShape) -> None:
        if check_name(name) in self.shapes:
            raise ConfigError(f"pool member '{name}' is already in the ridge translator (members: {self.members})")
        self.shapes[name] = shape

    def _member(self, name: str) -> CacheShape:
        if name not in self.shapes:
            raise ConfigError(f"unknown pool member '{name}' (members: {self.members})")
        return self.shapes[name]

    def add_pair(self, src: str, tgt: str) -> RidgeMap:
        key = f"{src}__to__{tgt}"
        if key not in self.maps:
            self.maps[key] = RidgeMap(self._member(src), self._member(tgt))
        return self.maps[key]

    @torch.no_grad()
    def accumulate(self, src: str, tgt: str, src_block, tgt_block, mask: Tensor | None = None) -> int:
        """Add one batch of paired caches (mask (B, T), True = a position to fit on); returns its rows."""
        src_keys, src_values = check_block(self._member(src), src_block, f"ridge source '{src}'")
        tgt_keys, tgt_values = check_block(self._member(tgt), tgt_block, f"ridge target '{tgt}'")
        B, T = src_keys[0].shape[0], src_keys[0].shape[2]
        if (tgt_keys[0].shape[0], tgt_keys[0].shape[2]) != (B, T):
            raise DataError(f"ridge pair {src}->{tgt}: source block is (B, T) = {(B, T)}, target block is "
                            f"{(tgt_keys[0].shape[0], tgt_keys[0].shape[2])}; the same tokens must go through both")
        if mask is not None:
            if tuple(mask.shape) != (B, T):
                raise DataError(f"ridge pair {src}->{tgt}: mask has shape {tuple(mask.shape)}, expected {(B, T)}")
            mask = mask.bool()
        if (src, tgt) not in self._moments:
            target_layers, source_layers = self.shapes[tgt].num_layers, self.shapes[src].num_layers
            self._moments[(src, tgt)] = PairMoments([proportional_layer(l, target_layers, source_layers)
                                                     for l in range(target_layers)])
        moments = self._moments[(src, tgt)]
        rows = moments.add("key", src_keys, tgt_keys, mask)
        moments.add("value", src_values, tgt_values, mask)
        moments.n += rows
        return rows

    @torch.no_grad()
    def fit(self) -> list[tuple[str, str]]:
        """Solve every pair with accumulated statistics (then drop them); returns the pairs fitted."""
        fitted = []
        for (src, tgt), moments in self._moments.items():
            if moments.n < 2:
                raise DataError(f"ridge pair {src}->{tgt}: {moments.n} rows accumulated, need at least 2")
            target = self.add_pair(src, tgt)
            for l in range(self._member(tgt).num_layers):
                for kind in ("key", "value"):
                    weight, bias = moments.solve(kind, l, self.config.ridge_lambda)
                    getattr(target, f"{kind}_weight_{l}").copy_(weight)
                    getattr(target, f"{kind}_bias_{l}").copy_(bias)
            fitted.append((src, tgt))
        self._moments = {}
        return fitted

    def translate(self, src: str, tgt: str, block) -> KV:
        keys, values = check_block(self._member(src), block, f"ridge from '{src}'")
        self._member(tgt)
        key = f"{src}__to__{tgt}"
        if key not in self.maps:
            raise ConfigError(f"ridge map {src}->{tgt} is not fitted (fitted: {self.pairs})")
        return self.maps[key](keys, values)

    def num_parameters(self, name: str | None = None) -> int:
        """Fitted coefficients (weights and biases) of all pairs, or of the pairs that involve `name`."""
        if name is not None:
            self._member(name)
        return sum(b.numel() for key, m in self.maps.items() if name is None or name in key.split("__to__")
                   for b in m.buffers())
