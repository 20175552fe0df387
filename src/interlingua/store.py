"""Activation store: ragged per-token tensors in one Zarr v3 group.

Layout of `<split>.zarr/` (tens of files, not thousands: token arrays are sharded):
  token_ids        (N_tokens,)          int32   sender token ids, all rows back to back
  char_spans       (N_tokens, 2)        int32   each token's [start, end) in the row's prompt string
                                                 ((0, 0) for special tokens; fast tokenizers only)
  offsets          (N_rows + 1,)        int64   row r is tokens offsets[r]:offsets[r+1]
  labels           (N_rows,)            int64
  example_index    (N_rows,)            int64   row -> position in the materialized task split
  hidden/layer_L   (N_tokens, d)        16-bit  hidden states after block L (0 = embeddings)
  kv/layer_I/keys  (N_tokens, H_kv, D)  16-bit  the KV cache of block I (post-RoPE), when stored
  kv/layer_I/values
The group attribute `manifest` records provenance, the fingerprint, per-array logical dtypes
(bfloat16 is stored as its raw uint16 bits, so it round-trips bit-exactly) and a sha256 per file.

Writing is crash-safe: a store is built under `<name>.partial`, whole shards at a time, with
`progress.json` naming how many tokens are durable; a rerun resumes there. The store is renamed
into place only when complete, and one writer at a time holds `<name>.lock`.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import zarr
from zarr.codecs import ZstdCodec

from .errors import DataError

STORED_NUMPY = {"bfloat16": np.uint16, "float16": np.float16, "float32": np.float32}
PROGRESS = "progress.json"


def to_storage(tensor: torch.Tensor, logical: str) -> np.ndarray:
    """A CPU numpy array holding `tensor` in the logical dtype (bf16 as raw bits)."""
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


def kv_keys(layer: int) -> tuple[str, str]:
    return f"kv/layer_{layer}/keys", f"kv/layer_{layer}/values"


def partial_path(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


@contextmanager
def writer_lock(path: Path):
    """One writer per store: a second job fails at once with a clear message instead of corrupting it."""
    lock_path = path.with_name(path.name + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            raise DataError(f"{path} is being written by another process ({handle.read().strip() or 'unknown'}); "
                            f"wait for it to finish, or remove {lock_path} if that process is gone") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
    lock_path.unlink(missing_ok=True)


def file_checksums(path: Path) -> dict[str, str]:
    """sha256 of every file below the store, except the root metadata that holds the manifest."""
    sums = {}
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = file.relative_to(path).as_posix()
        if rel not in ("zarr.json", PROGRESS):
            sums[rel] = hashlib.sha256(file.read_bytes()).hexdigest()
    return sums


class StoreWriter:
    """Writes a store whose rows and lengths are known up front; resumes an interrupted write.

    `arrays` maps array name -> (per-token trailing shape, logical dtype) for token-aligned arrays.
    Rows must be added in order; `add` returns nothing and skips tokens that are already durable.
    """

    def __init__(self, path: str | Path, *, key: str, lengths: list[int], labels: list[int],
                 example_index: list[int], arrays: dict[str, tuple[tuple[int, ...], str]],
                 shard_tokens: int = 65536, chunk_tokens: int = 1024):
        self.path, self.key = Path(path), key
        self.partial = partial_path(self.path)
        self.offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int64)
        self.total = int(self.offsets[-1])
        self.shard_tokens = max(chunk_tokens, shard_tokens // chunk_tokens * chunk_tokens)
        self.logical = {name: dtype for name, (_, dtype) in arrays.items()}
        self.written = self._resume_point()
        if self.written is None:
            self._create(lengths, labels, example_index, arrays, chunk_tokens)
            self.written = 0
        self.group = zarr.open_group(self.partial, mode="r+")
        self.buffers: dict[str, list[np.ndarray]] = {name: [] for name in arrays}
        self.cursor = self.written  # token position of the next buffered token

    # -- set-up and resume -------------------------------------------------------------
    def _resume_point(self) -> int | None:
        progress = self.partial / PROGRESS
        if progress.exists():
            state = json.loads(progress.read_text())
            if state.get("key") == self.key and state.get("total") == self.total:
                return int(state["tokens"])
        if self.partial.exists():
            shutil.rmtree(self.partial)  # a different request, or killed before the first block
        return None

    def _create(self, lengths, labels, example_index, arrays, chunk_tokens) -> None:
        group = zarr.open_group(self.partial, mode="w")
        compressor = ZstdCodec(level=3)
        for name, (trailing, dtype) in arrays.items():
            group.create_array(name, shape=(self.total, *trailing), dtype=STORED_NUMPY.get(dtype, dtype),
                               chunks=(chunk_tokens, *trailing), shards=(self.shard_tokens, *trailing),
                               compressors=compressor, fill_value=0)
        for name, values in (("offsets", self.offsets), ("labels", np.asarray(labels, np.int64)),
                             ("example_index", np.asarray(example_index, np.int64))):
            group.create_array(name, data=values, chunks=(max(1, len(values)),))
        self._save_progress(0)

    def _save_progress(self, tokens: int) -> None:
        tmp = self.partial / (PROGRESS + ".tmp")
        tmp.write_text(json.dumps({"key": self.key, "total": self.total, "tokens": tokens}))
        tmp.replace(self.partial / PROGRESS)

    @property
    def first_row_to_compute(self) -> int:
        """The first row whose tokens are not all durable yet."""
        return int(np.searchsorted(self.offsets, self.written, side="right") - 1)

    # -- streaming -----------------------------------------------------------------------
    def add(self, row: int, values: dict[str, np.ndarray | torch.Tensor]) -> None:
        """All token-aligned arrays of one row, each (T_row, ...)."""
        start, end = int(self.offsets[row]), int(self.offsets[row + 1])
        if end <= self.cursor:
            return                       # durable already (recomputed after a resume)
        skip = self.cursor - start       # > 0 only for the row that straddles the resume point
        if skip < 0:
            raise ValueError(f"row {row} added out of order")
        for name, value in values.items():
            array = value if isinstance(value, np.ndarray) else to_storage(value, self.logical[name])
            if len(array) != end - start:
                raise ValueError(f"row {row}: {name} has {len(array)} tokens, expected {end - start}")
            self.buffers[name].append(array[skip:])
        self.cursor = end
        if self.cursor - self.written >= self.shard_tokens:
            self._flush(final=False)

    def _flush(self, final: bool) -> None:
        # Whole shards only: a partial shard would be rewritten on every append.
        pending = self.cursor - self.written
        n = pending if final else pending // self.shard_tokens * self.shard_tokens
        if n == 0:
            return
        for name, pieces in self.buffers.items():
            block = np.concatenate(pieces)
            self.group[name][self.written:self.written + n] = block[:n]
            self.buffers[name] = [block[n:]] if len(block) > n else []
        self.written += n
        self._save_progress(self.written)

    def finish(self, manifest: dict) -> Path:
        started = time.perf_counter()
        self._flush(final=True)
        if self.written != self.total:
            raise ValueError(f"store incomplete: {self.written} of {self.total} tokens written")
        (self.partial / PROGRESS).unlink()
        arrays = {name: {"logical_dtype": dtype} for name, dtype in self.logical.items()}
        checksums = file_checksums(self.partial)
        manifest = dict(manifest, rows=len(self.offsets) - 1, tokens=self.total, arrays=arrays, checksums=checksums,
                        finalize_seconds=round(time.perf_counter() - started, 3))
        self.group.attrs["manifest"] = manifest
        if self.path.exists():
            shutil.rmtree(self.path)
        self.partial.rename(self.path)   # the store appears complete, or not at all
        return self.path


def read_manifest(path: str | Path) -> dict:
    path = Path(path)
    if not (path / "zarr.json").exists():
        hint = " (an interrupted write left a .partial store: rerun to resume it)" \
            if partial_path(path).exists() else ""
        raise DataError(f"{path}: not an activation store{hint}; run the extract rule")
    manifest = zarr.open_group(path, mode="r").attrs.get("manifest")
    if manifest is None:
        raise DataError(f"{path}: store has no manifest (incomplete or not written by interlingua)")
    return manifest


def write_receipt(path: str | Path, receipt: str | Path, request: dict | None = None) -> Path:
    """The manifest of a complete store, beside it: small, human-readable, tracked by Snakemake and DVC.
    `request` (the job's params) lets the workflow tell a current store from a stale one by content."""
    manifest = {k: v for k, v in read_manifest(path).items() if k != "checksums"}
    if request is not None:
        manifest["request"] = request
    receipt = Path(receipt)
    tmp = receipt.with_name(receipt.name + ".tmp")
    tmp.write_text(json.dumps(dict(manifest, store=Path(path).name), indent=2, sort_keys=True))
    tmp.replace(receipt)
    return receipt


def verify(path: str | Path) -> list[str]:
    """Problems found (empty when the store is intact): per array, which file is corrupt or missing."""
    path = Path(path)
    manifest = read_manifest(path)
    expected = manifest.get("checksums", {})
    actual = file_checksums(path)
    problems = []
    for rel, digest in expected.items():
        array = rel.split("/c/")[0] if "/c/" in rel else rel.rsplit("/zarr.json", 1)[0]
        if rel not in actual:
            problems.append(f"array '{array}': file {rel} is missing")
        elif actual[rel] != digest:
            problems.append(f"array '{array}': file {rel} fails its checksum (corrupt or truncated)")
    for rel in sorted(set(actual) - set(expected)):
        problems.append(f"unexpected file {rel}")
    return problems


def require_intact(path: str | Path, request: dict | None = None) -> dict:
    """The manifest of a store that passes its checksums, its fingerprint and (if given) a request: the
    workflow's extraction request {model, sender_prompt, extract: {layers, kv_cache}, code, ...} and the
    content hash of the split it should hold (`task_sha256`, see `with_split`). Otherwise a DataError
    naming what differs and what to do."""
    problems = verify(path)
    if problems:
        raise DataError(f"{path} fails its integrity check: {'; '.join(problems[:5])}. Delete the store and "
                        f"rerun extraction, or `dvc pull` it again")
    manifest = read_manifest(path)
    if "model_fingerprint" in manifest:
        from .extract import extraction_fingerprint

        expected = extraction_fingerprint(manifest["model_fingerprint"], manifest["task_sha256"],
                                          manifest["sender_prompt"], manifest["layers"], manifest["storage_dtype"],
                                          manifest["compute_dtype"], "kv" in manifest, manifest.get("max_tokens"),
                                          manifest.get("code", ""), manifest.get("row_limit"))
        if expected != manifest["fingerprint"]:
            raise DataError(f"{path}: the manifest's fingerprint does not match its contents' description "
                            f"(edited or written by another version); delete the store and rerun extraction")
    if request:
        wanted = request.get("extract", {})
        mismatch = [k for k in ("sender_prompt",) if k in request and manifest.get(k) != request[k]]
        if "model" in request:
            from .zoo import model_fingerprint

            expected = model_fingerprint(request["model"])
            if manifest.get("model_fingerprint") != expected:
                mismatch.append(f"model: fingerprint {expected} asked, store has {manifest.get('model_fingerprint')} "
                                f"(another model, package version or loading code)")
        if "task_sha256" in request and manifest.get("task_sha256") != request["task_sha256"]:
            mismatch.append(f"task data: split content {request['task_sha256'][:16]} asked, store has "
                            f"{str(manifest.get('task_sha256'))[:16]}")
        if request.get("code") and manifest.get("code") != request["code"]:
            mismatch.append(f"extraction code: {request['code']} asked, store written by {manifest.get('code')}")
        if not set(wanted.get("layers", [])) <= set(manifest["layers"]):
            mismatch.append(f"layers {wanted['layers']} (store has {manifest['layers']})")
        if wanted.get("kv_cache") and "kv" not in manifest:
            mismatch.append("kv_cache")
        if mismatch:
            raise DataError(f"{path} was extracted for another request ({', '.join(mismatch)}); "
                            f"rerun the extract rule (snakemake reruns it when the config changed)")
    return manifest


def with_split(request: dict | None, split_path) -> dict | None:
    """A store request plus the content hash of the materialized split the store must hold."""
    if request is None or split_path is None:
        return request
    meta = json.loads(Path(split_path).with_suffix(".meta.json").read_text())
    return dict(request, task_sha256=meta["content_sha256"])


class ActivationStore:
    """Random-access reader: padded batches of one layer's states (or KV caches) for chosen rows."""

    def __init__(self, path: str | Path, check: bool = True, request: dict | None = None,
                 cache_bytes: int = 512 * 2**20):
        self.path = Path(path)
        self.manifest = require_intact(self.path, request) if check else read_manifest(self.path)
        self.group = zarr.open_group(self.path, mode="r")
        # Decoded chunks, least recently used first: a row read decodes a whole compressed chunk, and
        # training revisits every chunk each epoch, so keeping them turns ms reads into copies.
        self._chunks: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()
        self._cache_bytes, self._cached = cache_bytes, 0
        self._arrays: dict[str, zarr.Array] = {}
        self.offsets = self.group["offsets"][:]
        self.labels = torch.from_numpy(self.group["labels"][:])
        self.example_index = self.group["example_index"][:]
        self.layers = list(self.manifest["layers"])

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def hidden_size(self) -> int:
        return int(self.manifest["hidden_size"])

    def _chunk(self, key: str, index: int) -> np.ndarray:
        cached = self._chunks.get((key, index))
        if cached is not None:
            self._chunks.move_to_end((key, index))
            return cached
        array = self._array(key)
        size = array.chunks[0]
        chunk = array[index * size:(index + 1) * size]
        self._chunks[(key, index)] = chunk
        self._cached += chunk.nbytes
        while self._cached > self._cache_bytes and len(self._chunks) > 1:
            self._cached -= self._chunks.popitem(last=False)[1].nbytes
        return chunk

    def _array(self, key: str):
        """Opened once: opening a Zarr array reads its metadata from disk."""
        if key not in self._arrays:
            self._arrays[key] = self.group[key]
        return self._arrays[key]

    def _read(self, key: str, row: int) -> torch.Tensor:
        start, end = int(self.offsets[row]), int(self.offsets[row + 1])
        size = self._array(key).chunks[0]
        pieces = [self._chunk(key, c)[max(start - c * size, 0):end - c * size]
                  for c in range(start // size, (end - 1) // size + 1)] if end > start else []
        raw = np.concatenate(pieces) if pieces else self._array(key)[start:end]
        return from_storage(raw, self.manifest["arrays"][key]["logical_dtype"])

    def row_tokens(self, row: int) -> np.ndarray:
        return self.group["token_ids"][self.offsets[row]:self.offsets[row + 1]]

    def row_spans(self, row: int) -> list[tuple[int, int]]:
        """Each token's character span [start, end) in the row's prompt string (cross-tokenizer alignment)."""
        if "char_spans" not in self.manifest["arrays"]:
            raise DataError(f"{self.path}: no character spans stored (the tokenizer was not a fast one, or the "
                            f"store predates them); re-extract with a fast tokenizer")
        return [(int(a), int(b)) for a, b in self.group["char_spans"][self.offsets[row]:self.offsets[row + 1]]]

    def row_hidden(self, row: int, layer: int) -> torch.Tensor:
        """(T, d) in the logical dtype (bit-exact)."""
        if layer not in self.layers:
            raise DataError(f"{self.path}: layer {layer} not stored (has {self.layers}); re-extract with it")
        return self._read(layer_key(layer), row)

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

    # -- KV caches -------------------------------------------------------------------------
    @property
    def has_kv(self) -> bool:
        return "kv" in self.manifest

    def kv_batch(self, rows, dtype: torch.dtype = torch.float32, device="cpu"):
        """Per layer (keys, values), each (B, H_kv, T_max, D) left-padded, and the mask (B, T_max)."""
        if not self.has_kv:
            raise DataError(f"{self.path}: no KV cache stored; extract with extract.kv_cache: true")
        lengths = [int(self.offsets[r + 1] - self.offsets[r]) for r in rows]
        longest = max(lengths)
        mask = torch.zeros(len(rows), longest, dtype=torch.long)
        for i, n in enumerate(lengths):
            mask[i, longest - n:] = 1
        layers = []
        for layer in range(self.manifest["kv"]["num_layers"]):
            pair = []
            for key in kv_keys(layer):
                padded = None
                for i, r in enumerate(rows):
                    kv = self._read(key, int(r)).to(dtype)            # (T, H, D)
                    if padded is None:
                        padded = torch.zeros(len(rows), kv.shape[1], longest, kv.shape[2], dtype=dtype)
                    padded[i, :, longest - len(kv):] = kv.transpose(0, 1)
                pair.append(padded.to(device))
            layers.append(tuple(pair))
        return layers, mask.to(device)

    def to_cache(self, rows, model_config, dtype: torch.dtype = torch.float32, device="cpu"):
        """A transformers DynamicCache (sliding-window layers as the model expects) and its mask."""
        from transformers import DynamicCache

        layers, mask = self.kv_batch(rows, dtype, device)
        cache = DynamicCache(config=model_config)
        for index, (keys, values) in enumerate(layers):
            cache.update(keys, values, index)
        return cache, mask


def summary(path: str | Path) -> dict:
    """What `interlingua store info` prints."""
    path = Path(path)
    manifest = read_manifest(path)
    files = [p for p in path.rglob("*") if p.is_file()]
    disk = sum(p.stat().st_size for p in files)
    group = zarr.open_group(path, mode="r")
    values = sum(int(np.prod(group[name].shape)) for name in manifest["arrays"] if name.startswith(("hidden/", "kv/")))
    contents = ["hidden states"] + (["KV cache"] if "kv" in manifest else [])
    return {"path": str(path), "model": manifest["model"], "task": manifest["task"], "split": manifest["split"],
            "layers": manifest["layers"], "contents": contents, "rows": manifest["rows"],
            "tokens": manifest["tokens"], "storage_dtype": manifest["storage_dtype"], "bytes_on_disk": disk,
            "bytes_per_value": round(disk / max(values, 1), 4), "files": len(files),
            "fingerprint": manifest["fingerprint"]}


# -- HDF5 exchange --------------------------------------------------------------------------
def _walk_arrays(group, prefix=""):
    for name, member in group.members():
        full = f"{prefix}{name}"
        if isinstance(member, zarr.Array):
            yield full, member
        else:
            yield from _walk_arrays(member, full + "/")


def export_hdf5(path: str | Path, out: str | Path) -> Path:
    """An equivalent HDF5 file: same array names and raw stored values, manifest as a JSON attribute."""
    import h5py

    manifest = require_intact(path)
    group = zarr.open_group(path, mode="r")
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    with h5py.File(tmp, "w") as h5:
        h5.attrs["manifest"] = json.dumps(manifest)
        for name, array in _walk_arrays(group):
            data = array[:]
            h5.create_dataset(name, data=data, chunks=(min(len(data), 1024), *data.shape[1:]) if data.size else None,
                              compression="gzip", compression_opts=1)
            h5[name].attrs["zarr_chunks"] = list(array.chunks)
            if array.shards:
                h5[name].attrs["zarr_shards"] = list(array.shards)
    tmp.replace(out)
    return out


def import_hdf5(h5_path: str | Path, path: str | Path) -> Path:
    """Rebuild a Zarr store from `export_hdf5` output; arrays are identical and checksums recomputed."""
    import h5py

    path = Path(path)
    partial = partial_path(path)
    if partial.exists():
        shutil.rmtree(partial)
    with h5py.File(h5_path, "r") as h5:
        manifest = json.loads(h5.attrs["manifest"])
        group = zarr.open_group(partial, mode="w")
        names = []
        h5.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
        for name in names:
            data = h5[name][:]
            group.create_array(name, data=data, chunks=tuple(h5[name].attrs["zarr_chunks"]),
                               shards=tuple(h5[name].attrs["zarr_shards"]) if "zarr_shards" in h5[name].attrs else None,
                               compressors=ZstdCodec(level=3))
    manifest["checksums"] = file_checksums(partial)
    group.attrs["manifest"] = manifest
    if path.exists():
        shutil.rmtree(path)
    partial.rename(path)
    return path
