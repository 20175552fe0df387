"""The C2C-style gated fuser as a study-3 baseline (context-aware only): the receiver reads the input itself,
and its own cache of it is fused, in place at the aligned positions, with the sender's transformed cache
(channels/kv/fuser.py). Then it reads the question (the unaware prompt: the input is already in its cache).

Trained like phase 2 (the receiver's loss over the labels, tasks in turn) from the phase-1 transformation,
every parameter of the fuser (transformation, projections, gates) trainable. Scored beside its controls, on the
same rows: another example's sender cache stretched onto these positions (shuffled), a zeroed sender cache
(zero), and the receiver's own cache unfused (own_cache: no communication, the same prompt).
"""
from __future__ import annotations

import random
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ...channels.kv.cache import KVBlock
from ...channels.kv.dense import pool, position_free
from ...channels.kv.fuser import GatedFuser, fuse_in_place
from ...channels.kv.rotary import rotate
from ...errors import DataError
from ...evaluate import rows_for
from ...receiver import Receiver
from ...runtime import derangement
from ...store import ActivationStore
from .configs import DenseRunConfig
from .data import TaskData

METHOD = "fuser_aware"
CONTROLS = ("shuffled_source", "zero_source", "own_cache")


def stretch(weights: torch.Tensor, length: int) -> torch.Tensor:
    """(length, S) pooling weights: `weights`' (R, S) rows resampled to `length` receiver positions (row k reads
    what row floor(k R / length) read), so one example's sender cache lands on another's positions."""
    index = (torch.arange(length) * weights.shape[0]) // length
    return weights[index]


def own_cache(store: ActivationStore, rows_by_example: dict, examples) -> KVBlock:
    """The receiver's own cache of each example's string (its store), every position."""
    return KVBlock.from_store(store, [rows_by_example[e.example] for e in examples])


def fused(fuser: GatedFuser, data: TaskData, examples, own: KVBlock, ends, sources=None,
          zero: bool = False) -> KVBlock:
    """`own` with each row's aligned positions fused with the sender's transformed cache of `sources` (default
    the same examples; another example's is stretched onto these positions); zero: a zeroed sender cache."""
    end = ends.receiver(data.first_token)
    sources = examples if sources is None else sources
    positions = [e.positions for e in examples]
    mine = own.at(positions)
    mine_free = position_free(mine, end)
    block = KVBlock.from_store(data.store, [s.row for s in sources])
    weights = [stretch(s.weights, len(e.positions)) for e, s in zip(examples, sources)]
    sender = pool(KVBlock(*position_free(block, ends.sender), block.mask, block.positions), weights, positions)
    theirs = (sender.keys, sender.values)
    if zero:
        theirs = ([torch.zeros_like(k) for k in sender.keys], [torch.zeros_like(v) for v in sender.values])
    keys, values = fuser(mine_free, theirs)
    keep = sender.mask[:, None, :, None].bool()
    keys = [torch.where(keep, rotate(k, sender.positions, spec), 0) for k, spec in zip(keys, end.rotary)]
    values = [torch.where(keep, v, 0) for v in values]
    return fuse_in_place(own, KVBlock(keys, values, sender.mask, sender.positions))


def rows_by_example(store: ActivationStore) -> dict[int, int]:
    return {int(e): r for r, e in enumerate(store.example_index)}


def train_fuser(fuser: GatedFuser, tasks: dict[str, TaskData], own_stores: dict[str, ActivationStore], ends,
                config: DenseRunConfig, seed: int, out_dir: Path, run_key: str) -> list[dict]:
    """The receiver's label loss with the fused cache before the question (train.train_steps: resumable)."""
    from .train import after, train_steps

    receivers = {name: Receiver(ends.model, ends.tokenizer, data.task["verbalizers"]) for name, data in tasks.items()}
    indexes = {name: rows_by_example(store) for name, store in own_stores.items()}

    def loss(name, data, batch, mode):
        block = fused(fuser, data, batch, own_cache(own_stores[name], indexes[name], batch), ends)
        prompt = after(receivers[name], block, [e.prompt_ids["unaware"] for e in batch])
        return receivers[name].label_loss(prompt, torch.tensor([e.label for e in batch]))

    return train_steps(fuser, tasks, config, loss, out_dir, {"run": run_key, "seed": seed}, random.Random(seed + 2),
                       desc="fuser", modes=["aware"])


@torch.no_grad()
def evaluate_fuser(fuser: GatedFuser, data: TaskData, receiver: Receiver, own_store: ActivationStore, ends, *,
                   base: dict, seed: int, batch_size: int = 16) -> list[dict]:
    """Tidy rows of the fuser and its controls on every eval row of a task."""
    from .train import after

    examples = data.examples
    n = len(examples)
    labels = torch.tensor([e.label for e in examples])
    shuffled = derangement(n, seed).tolist()
    extracted_from = str(own_store.manifest.get("task_sha256") or "")[:16]
    if extracted_from != data.split:
        raise DataError(f"{own_store.path} (the receiver's own cache) was extracted from another split of task "
                        f"{data.name} (sha256 {extracted_from or 'unknown'}..., the eval split's {data.split}...): "
                        f"extract the receiver's cache of the eval split")
    index_of = rows_by_example(own_store)
    missing = [e.example for e in examples if e.example not in index_of]
    if missing:
        raise DataError(f"{own_store.path} lacks examples {missing[:5]} of task {data.name}: extract the receiver's "
                        f"cache of every eval row")
    predictions: dict[str, torch.Tensor] = {}
    seconds: dict[str, float] = {}
    order = sorted(range(n), key=lambda i: (int(examples[i].positions.numel()), i))
    for start in tqdm(range(0, n, batch_size), desc=f"fuser {data.name}", leave=False):
        index = order[start:start + batch_size]
        batch = [examples[i] for i in index]
        own = own_cache(own_store, index_of, batch)
        ids = [e.prompt_ids["unaware"] for e in batch]
        runs = {"": lambda: fused(fuser, data, batch, own, ends),
                "shuffled_source": lambda: fused(fuser, data, batch, own, ends,
                                                 sources=[examples[shuffled[i]] for i in index]),
                "zero_source": lambda: fused(fuser, data, batch, own, ends, zero=True),
                "own_cache": lambda: own}
        for variant, build in runs.items():
            began = time.perf_counter()
            predicted = receiver.class_scores(after(receiver, build(), ids)).argmax(-1).cpu()
            predictions.setdefault(variant, torch.empty(n, dtype=torch.long))[index] = predicted
            seconds[variant] = seconds.get(variant, 0.0) + time.perf_counter() - began
    rows = []
    for variant, predicted in predictions.items():
        run = dict(base, task=data.name, method=METHOD, seed=seed)
        rows += rows_for(run, predicted, labels, seconds[variant], variant,
                         examples=[e.example for e in examples], split=data.split)
    return rows
