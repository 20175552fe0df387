"""Accuracy of the receiver with the transferred cache, both modes, beside its controls.

Per task and mode (unaware: the receiver reads only the question; aware: it reads the input too):
  cache_<mode>   the transferred cache (variant ""), another example's transferred cache
                 (shuffled_source, a seeded derangement), the receiver's sink then zeros at the same
                 positions (zero_source), and only the most-attended fraction f of the transferred
                 positions (keep_<f>: ranked by the attention mass the receiver's prompt gives them with
                 the whole cache in place, the sink never ranked, always kept)
  alone_<mode>   no communication: the receiver's own sink, then its prompt (aware: the text baseline)
Every method is scored on the same eval rows (the task's whole eval split); rows are tidy
(`evaluate.COLUMNS`) with per-example predictions beside them for paired tests.
"""
from __future__ import annotations

import math
import time

import torch
from tqdm.auto import tqdm

from ...channels.kv.cache import KVBlock, concat
from ...evaluate import rows_for
from ...receiver import Receiver
from ...runtime import derangement
from .compute import cache_transfer_flops, forward_flops
from .data import MODES, TaskData
from .train import Ends, after, transferred

CONTROLS = ("shuffled_source", "zero_source")


def zeroed(block: KVBlock) -> KVBlock:
    """The block's first entry (the receiver's own sink) kept, zeros at every other entry."""
    sink, body = block.slice(0, 1), block.slice(1)
    zeros = KVBlock([torch.zeros_like(k) for k in body.keys], [torch.zeros_like(v) for v in body.values],
                    body.mask, body.positions)
    return concat(sink, zeros)


def most_attended(block: KVBlock, mass: torch.Tensor, fraction: float) -> KVBlock:
    """The sink and the ceil(fraction * n) body entries with the most attention mass, per row."""
    rank = block.mask.cumsum(1) - 1                                       # (B, P) index within the row
    body = block.mask.bool() & (rank >= 1)
    scores = torch.where(body, mass, float("-inf"))
    keep = block.mask.bool() & (rank == 0)
    for b in range(block.batch):
        count = math.ceil(fraction * int(body[b].sum()))
        keep[b, scores[b].topk(count).indices] = True
    return block.where(keep)


@torch.no_grad()
def evaluate_task(transform, data: TaskData, receiver: Receiver, ends: Ends, *, base: dict, seed: int,
                  keep_fractions=(), modes=MODES, batch_size: int = 16, alone: bool = True,
                  zero: bool = True) -> list[dict]:
    """Tidy result rows of one task: every mode, condition and control on the same examples. `alone` and
    `zero` score the rows that do not depend on the trained transformation (no communication; the zeroed
    cache: the receiver's sink, then zeros at the transferred positions), which a study scores once per
    direction (plan.eval_options)."""
    examples = data.examples
    n = len(examples)
    labels = torch.tensor([e.label for e in examples])
    shuffled = derangement(n, seed).tolist()
    sink = ends.receiver(data.first_token).sink
    predictions: dict[tuple[str, str], torch.Tensor] = {}
    seconds: dict[tuple[str, str], float] = {}
    fractions = [f for f in keep_fractions if f < 1]
    order = sorted(range(n), key=lambda i: (int(examples[i].positions.numel()), i))   # batches of like length
    for start in tqdm(range(0, n, batch_size), desc=f"evaluate {data.name}", leave=False):
        index = order[start:start + batch_size]
        batch = [examples[i] for i in index]
        began = time.perf_counter()
        matched = transferred(transform, data, batch, ends)
        transfer_seconds = time.perf_counter() - began
        conditions = {"": matched,
                      "shuffled_source": transferred(transform, data, [examples[shuffled[i]] for i in index], ends)}
        if zero:
            conditions["zero_source"] = zeroed(matched)
        for mode in modes:
            ids = [e.prompt_ids[mode] for e in batch]
            runs = dict(conditions)
            if fractions:
                mass = receiver.attention_to_prefix(after(receiver, matched, ids))
                runs.update({f"keep_{f:g}": most_attended(matched, mass, f) for f in fractions})
            scored = [(f"cache_{mode}", variant, block) for variant, block in runs.items()]
            if alone:
                scored.append((f"alone_{mode}", "", sink.expand(len(batch))))
            for method, variant, block in scored:
                began = time.perf_counter()
                predicted = receiver.class_scores(after(receiver, block, ids)).argmax(-1).cpu()
                elapsed = time.perf_counter() - began + (transfer_seconds if method.startswith("cache") else 0.0)
                key = (method, variant)
                predictions.setdefault(key, torch.empty(n, dtype=torch.long))[index] = predicted
                seconds[key] = seconds.get(key, 0.0) + elapsed
    flops = example_flops(transform, data, receiver, ends, modes)
    rows = []
    for (method, variant), predicted in predictions.items():
        run = dict(base, task=data.name, method=method, seed=seed if method.startswith("cache") else 0)
        if method.startswith("alone"):
            run["bridge"] = ""
        rows += rows_for(run, predicted, labels, seconds[(method, variant)], variant,
                         examples=[e.example for e in examples], split=data.split)
        if variant == "":
            rows += [dict(run, variant="", n=n, metric=metric, value=value)
                     for metric, value in flops[method].items()]
    return rows


def example_flops(transform, data: TaskData, receiver: Receiver, ends: Ends, modes) -> dict[str, dict]:
    """Mean analytic FLOPs per example (compute.py) of each method: {method: {metric: value}}. The cache path:
    the sender reads the input, the transformation maps the aligned positions, the receiver reads its prompt
    after them and its sink; no communication: the receiver's prompt after its sink."""
    s_config, r_config = ends.sender_config, receiver.model.config
    classes = len(data.task["verbalizers"])
    out = {}
    for mode in modes:
        parts = [cache_transfer_flops(s_config, r_config, transform, sender_tokens=e.sender_tokens,
                                      transferred=int(e.positions.numel()), prompt_tokens=len(e.prompt_ids[mode]),
                                      classes=classes) for e in data.examples]
        mean = lambda key: sum(p[key] for p in parts) / len(parts)  # noqa: E731
        out[f"cache_{mode}"] = {"flops_per_example": mean("total"), "sender_flops_per_example": mean("sender"),
                                "transform_flops_per_example": mean("transform"),
                                "receiver_flops_per_example": mean("receiver")}
        alone = [forward_flops(r_config, len(e.prompt_ids[mode]), 1, classes) for e in data.examples]
        out[f"alone_{mode}"] = {"flops_per_example": sum(alone) / len(alone)}
    return out
