"""Activation store: ragged per-token tensors in one Zarr v3 group.

Layout of `<split>.zarr/` (tens of files, not thousands: arrays are sharded):
  token_ids      (N_tokens,)       int32   sender token ids, all rows back to back
  offsets        (N_rows + 1,)     int64   row r is tokens offsets[r]:offsets[r+1]
  labels         (N_rows,)         int64
  example_index  (N_rows,)         int64   row -> position in the materialized task split
  hidden/layer_L (N_tokens, d)     16-bit  hidden states after block L (0 = embeddings)
The group attribute `manifest` records provenance, the fingerprint and, per array, the
logical dtype: bfloat16 is stored as its raw uint16 bits so it round-trips bit-exactly.
A store is written under `<name>.partial` and renamed when complete.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
import zarr
from zarr.codecs import ZstdCodec

from .errors import DataError

STORED_NUMPY = {"bfloat16": np.uint16, "float16": np.float16, "float32": np.float32}


def to_storage(tensor: torch.Tensor, logical: str) -> np.ndarray:
    """A CPU numpy array holding `tensor` in the logical 16-bit dtype (bf16 as raw bits)."""
    tensor = tensor.detach().to("cpu", getattr(torch, logical)).contiguous()
    if logical == "bfloat16":
        return tensor.view(torch.int16).numpy().view(np.uint16)
    return tensor.numpy()


def from_storage(array: np.ndarray, logical: str) -> torch.Tensor:
    if logical == "bfloat16":
        return torch.from_numpy(np.ascontiguousarray(array).view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(np.ascontiguousarray(array))


def layer_key(layer: int) -> str:
    return f"hidden/layer_{layer}"


class StoreWriter:
    """Streams rows into a new store; tokens are buffered and written a whole shard at a time."""

    def __init__(self, path: str | Path, hidden_size: int, layers: list[int], storage_dtype: str = "bfloat16",
                 shard_tokens: int = 65536, chunk_tokens: int = 1024):
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        if self.partial.exists():
            shutil.rmtree(self.partial)
        self.layers, self.storage_dtype = list(layers), storage_dtype
        self.shard_tokens = max(chunk_tokens, shard_tokens // chunk_tokens * chunk_tokens)
        self.group = zarr.open_group(self.partial, mode="w")
        compressor = ZstdCodec(level=3)
        self.token_arrays = {"token_ids": self.group.create_array(
            "token_ids", shape=(0,), dtype="int32", chunks=(chunk_tokens * 16,),
            shards=(self.shard_tokens * 16,), compressors=compressor)}
        for layer in self.layers:
            self.token_arrays[layer_key(layer)] = self.group.create_array(
                layer_key(layer), shape=(0, hidden_size), dtype=STORED_NUMPY[storage_dtype],
                chunks=(chunk_tokens, hidden_size), shards=(self.shard_tokens, hidden_size),
                compressors=compressor)
        self.buffers: dict[str, list[np.ndarray]] = {k: [] for k in self.token_arrays}
        self.buffered = 0
        self.written = 0
        self.lengths: list[int] = []
        self.labels: list[int] = []
        self.example_index: list[int] = []

    def add(self, token_ids: np.ndarray, hidden: dict[int, torch.Tensor], label: int, example_index: int) -> None:
        """One row: token ids (T,) and, per layer, its hidden states (T, d)."""
        self.buffers["token_ids"].append(np.asarray(token_ids, dtype=np.int32))
        for layer in self.layers:
            self.buffers[layer_key(layer)].append(to_storage(hidden[layer], self.storage_dtype))
        self.buffered += len(token_ids)
        self.lengths.append(len(token_ids))
        self.labels.append(int(label))
        self.example_index.append(int(example_index))
        if self.buffered >= self.shard_tokens:
            self._flush(final=False)

    def _flush(self, final: bool) -> None:
        # Write whole shards only (a partial shard would be rewritten on every append).
        n = self.buffered if final else self.buffered // self.shard_tokens * self.shard_tokens
        if n == 0:
            return
        for key, array in self.token_arrays.items():
            block = np.concatenate(self.buffers[key])
            array.resize((self.written + n, *array.shape[1:]))
            array[self.written:self.written + n] = block[:n]
            self.buffers[key] = [block[n:]] if len(block) > n else []
        self.written += n
        self.buffered -= n

    def finish(self, manifest: dict) -> Path:
        self._flush(final=True)
        offsets = np.concatenate([[0], np.cumsum(self.lengths, dtype=np.int64)])
        for name, values in (("offsets", offsets), ("labels", np.asarray(self.labels, np.int64)),
                             ("example_index", np.asarray(self.example_index, np.int64))):
            self.group.create_array(name, data=values, chunks=(max(1, len(values)),))
        manifest = dict(manifest, rows=len(self.lengths), tokens=int(offsets[-1]),
                        arrays={key: {"logical_dtype": self.storage_dtype if key.startswith("hidden/") else
                                      str(self.token_arrays[key].dtype)} for key in self.token_arrays})
        self.group.attrs["manifest"] = manifest
        if self.path.exists():
            shutil.rmtree(self.path)
        self.partial.rename(self.path)
        return self.path


def read_manifest(path: str | Path) -> dict:
    path = Path(path)
    if not (path / "zarr.json").exists():
        hint = " (an interrupted write left a .partial store)" if path.with_name(path.name + ".partial").exists() else ""
        raise DataError(f"{path}: not an activation store{hint}; run the extract rule")
    manifest = zarr.open_group(path, mode="r").attrs.get("manifest")
    if manifest is None:
        raise DataError(f"{path}: store has no manifest (incomplete or not written by interlingua)")
    return manifest


class ActivationStore:
    """Random-access reader: padded batches of one layer's states for chosen rows."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        self.group = zarr.open_group(self.path, mode="r")
        self.offsets = self.group["offsets"][:]
        self.labels = torch.from_numpy(self.group["labels"][:])
        self.example_index = self.group["example_index"][:]
        self.layers = list(self.manifest["layers"])

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def hidden_size(self) -> int:
        return int(self.manifest["hidden_size"])

    def row_tokens(self, row: int) -> np.ndarray:
        return self.group["token_ids"][self.offsets[row]:self.offsets[row + 1]]

    def row_hidden(self, row: int, layer: int) -> torch.Tensor:
        """(T, d) in the logical dtype (bit-exact)."""
        if layer not in self.layers:
            raise DataError(f"{self.path}: layer {layer} not stored (has {self.layers}); re-extract with it")
        key = layer_key(layer)
        raw = self.group[key][self.offsets[row]:self.offsets[row + 1]]
        return from_storage(raw, self.manifest["arrays"][key]["logical_dtype"])

    def batch(self, rows, layer: int, dtype: torch.dtype = torch.float32, device="cpu"):
        """Right-padded states (B, T_max, d), mask (B, T_max) bool, labels (B,)."""
        states = [self.row_hidden(int(r), layer) for r in rows]
        longest = max(len(s) for s in states)
        padded = torch.zeros(len(states), longest, self.hidden_size, dtype=dtype)
        mask = torch.zeros(len(states), longest, dtype=torch.bool)
        for i, s in enumerate(states):
            padded[i, :len(s)] = s.to(dtype)
            mask[i, :len(s)] = True
        return padded.to(device), mask.to(device), self.labels[list(map(int, rows))].to(device)


def describe(path: str | Path) -> str:
    return json.dumps(read_manifest(path), indent=2)
