"""Device, dtype and seeding (`auto` means CUDA + bf16 when present, else CPU + float32), and atomic writes."""
from __future__ import annotations

import contextlib
import inspect
import math
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        # CPUs here have no bf16 units (4x slower than fp32): compute in fp32, store 16-bit.
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return DTYPES[name]


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)


# transformers compatibility, shared by extraction and the receiver (so neither reaches the other's code)
def cache_kwarg(decoder) -> str:
    """Name of the KV-cache argument: `cache` from transformers 5.x (the rename), else `past_key_values`."""
    return "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"


def returned_cache(out):
    """The KV cache a decoder returned, under either name."""
    return getattr(out, "cache", None) or out.past_key_values


def derangement(n: int, seed: int) -> torch.Tensor:
    """A seeded permutation with no fixed point: every example gets another example's states."""
    if n < 2:
        return torch.arange(n)
    generator = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(n, generator=generator)
        if not (perm == torch.arange(n)).any():
            return perm


def lr_lambda(warmup: int, steps: int):
    """LambdaLR factor: linear warm-up, then cosine to 0 at `steps`."""
    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))
    return schedule


def atomic_save(path: Path, payload) -> None:
    """torch.save through a temporary file: a kill never leaves a half-written file at `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


@contextlib.contextmanager
def atomic_dir(out_dir: Path):
    """Yield a temporary directory beside `out_dir`; on success it replaces `out_dir` (one rename), on any
    error or kill it is removed: a job never leaves a half-written directory at `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    try:
        yield tmp
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
