"""Two-phase training of one direction's cache transformation, from cached tensors only.

Phase 1 (reconstruction): the transformation's maps are fitted, in closed form, to the receiver's own
cache of the same strings at the aligned positions (the receiver's store), on the training rows of every
training task but a held-out slice, whose relative error (1 = a zero cache) is reported.
Phase 2 (generation): the receiver's cross-entropy over the task's labels, with the transferred cache
before its prompt; tasks take turns, and with mode "joint" so do the two prompts (unaware, aware).
The sender never runs: its caches come from the store. Resumable every `checkpoint_every` steps.
"""
from __future__ import annotations

import math
import random
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ...channels.kv.cache import KVBlock
from ...channels.kv.dense import DenseTransform, Phase1, pool, position_free, transfer
from ...channels.kv.rotary import rotary_specs
from ...channels.kv.transfer import Endpoint
from ...channels.kv.translators import CacheShape
from ...errors import DataError
from ...fingerprint import fingerprint
from ...receiver import Prompt, Receiver
from ...runtime import atomic_save, lr_lambda, seed_everything
from ...store import ActivationStore
from .configs import DenseRunConfig
from .data import TaskData

PHASE1_BATCH = 16


class Ends:
    """The two ends of a direction: the sender's rotary specs (it never runs) and the receiver, whose own
    first-token cache (its sink) is looked up per first token (a <bos>, or each task's frame word)."""

    def __init__(self, sender_config, receiver_model, receiver_tokenizer):
        self.sender = Endpoint(None, rotary_specs(sender_config), None)
        self.sender_config = sender_config
        self.model, self.tokenizer = receiver_model, receiver_tokenizer
        self._receivers: dict[int, Endpoint] = {}

    def receiver(self, first_token: int) -> Endpoint:
        if first_token not in self._receivers:
            self._receivers[first_token] = Endpoint.of(self.model, first_token)
        return self._receivers[first_token]


def shapes(data: TaskData, receiver_store: ActivationStore | None, receiver_model) -> tuple[CacheShape, CacheShape]:
    source = CacheShape.of(KVBlock.from_store(data.store, [0]))
    if receiver_store is not None:
        return source, CacheShape.of(KVBlock.from_store(receiver_store, [0]))
    config = receiver_model.config
    heads = config.num_key_value_heads or config.num_attention_heads
    dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return source, CacheShape(config.num_hidden_layers, heads, dim)


def transferred(transform, data: TaskData, examples, ends: Ends, device="cpu") -> KVBlock:
    """The receiver's cache for a batch of examples: its sink, then the transformed aligned positions."""
    block = KVBlock.from_store(data.store, [e.row for e in examples], device=device)
    return transfer(transform, block, [e.weights for e in examples], [e.positions for e in examples],
                    ends.sender, ends.receiver(data.first_token))


def after(receiver: Receiver, block: KVBlock, ids: list[list[int]]) -> Prompt:
    """The receiver's prompt tokens (right-padded) after a per-row cache block."""
    longest = max(len(row) for row in ids)
    pad = receiver.tokenizer.pad_token_id or 0
    padded = torch.tensor([row + [pad] * (longest - len(row)) for row in ids], device=receiver.device)
    mask = torch.tensor([[1] * len(row) + [0] * (longest - len(row)) for row in ids], device=receiver.device)
    return Prompt(receiver.embed(padded), mask, block)


def own_aligned(store: ActivationStore, rows_by_example: dict, examples, end: Endpoint) -> KVBlock:
    """The receiver's own cache of the same strings at the aligned positions, rotary removed."""
    own = KVBlock.from_store(store, [rows_by_example[e.example] for e in examples]).at([e.positions for e in examples])
    keys, values = position_free(own, end)
    return KVBlock(keys, values, own.mask, own.positions)


def sender_aligned(data: TaskData, examples, ends: Ends) -> KVBlock:
    block = KVBlock.from_store(data.store, [e.row for e in examples])
    keys, values = position_free(block, ends.sender)
    return pool(KVBlock(keys, values, block.mask, block.positions), [e.weights for e in examples],
                [e.positions for e in examples])


def phase1(transform: DenseTransform, tasks: dict[str, TaskData], receiver_stores: dict[str, ActivationStore],
           ends: Ends, config: DenseRunConfig, generator: random.Random) -> dict:
    """Fit every map to the receiver's own cache; the held-out relative error per task (keys, values)."""
    fit = Phase1(transform)
    held: dict[str, list] = {}
    indexes = {}
    for name, data in tasks.items():
        store = receiver_stores[name]
        indexes[name] = {int(e): r for r, e in enumerate(store.example_index)}
        missing = [e.example for e in data.examples if e.example not in indexes[name]]
        if missing:
            raise DataError(f"{store.path} lacks examples {missing[:5]} of task {name}: the receiver's store is of "
                            f"another split")
        order = list(data.examples)
        generator.shuffle(order)
        cut = max(1, math.ceil(config.holdout_fraction * len(order)))
        held[name], train = order[:cut], order[cut:]
        for start in tqdm(range(0, len(train), PHASE1_BATCH), desc=f"phase 1 {name}", leave=False):
            batch = train[start:start + PHASE1_BATCH]
            src = sender_aligned(data, batch, ends)
            tgt = own_aligned(store, indexes[name], batch, ends.receiver(data.first_token))
            fit.add((src.keys, src.values), (tgt.keys, tgt.values), src.mask)
    fit.fit()
    return {name: reconstruction_error(transform, data, held[name], receiver_stores[name], indexes[name], ends)
            for name, data in tasks.items()}


@torch.no_grad()
def reconstruction_error(transform, data: TaskData, examples, store, rows_by_example, ends: Ends) -> dict:
    """Squared error of the transformed cache against the receiver's own, relative to the own cache's squared
    norm (a zero cache scores 1), keys and values apart, over `examples`' aligned positions."""
    sums = {"key": [0.0, 0.0], "value": [0.0, 0.0]}
    for start in range(0, len(examples), PHASE1_BATCH):
        batch = examples[start:start + PHASE1_BATCH]
        src = sender_aligned(data, batch, ends)
        tgt = own_aligned(store, rows_by_example, batch, ends.receiver(data.first_token))
        keys, values = transform(src.keys, src.values)
        keep = src.mask[:, None, :, None].bool()
        for kind, got, want in (("key", keys, tgt.keys), ("value", values, tgt.values)):
            for a, b in zip(got, want):
                sums[kind][0] += float(((a - b) ** 2 * keep).sum())
                sums[kind][1] += float((b ** 2 * keep).sum())
    return {f"{kind}_relative_error": err / max(norm, 1e-30) for kind, (err, norm) in sums.items()} | {"rows": len(examples)}


def train_direction(tasks: dict[str, TaskData], receiver_stores: dict[str, ActivationStore], ends: Ends,
                    config: DenseRunConfig, seed: int, out_dir: str | Path, run_key: str = "") -> dict:
    """Both phases (or the one asked for); writes out_dir/transform.pt and returns its record."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(seed)
    generator = random.Random(seed)
    first = next(iter(tasks.values()))
    source, target = shapes(first, next(iter(receiver_stores.values()), None), ends.model)
    transform = DenseTransform(source, target, config.dense)
    record = {"config": asdict(config) | {"dense": asdict(config.dense)}, "seed": seed,
              "source_shape": asdict(source), "target_shape": asdict(target), "tasks": sorted(tasks)}
    if "reconstruction" in config.phases:
        record["phase1"] = phase1(transform, tasks, receiver_stores, ends, config, generator)
    curve, module = [], transform
    if "generation" in config.phases and config.steps > 0:
        curve = phase2(transform, tasks, ends, config, seed, out_dir, run_key)
    if "fusion" in config.phases:
        from .fuse import GatedFuser, train_fuser

        module = GatedFuser(transform)
        curve = train_fuser(module, tasks, receiver_stores, ends, config, seed, out_dir, run_key)
    record["curve"] = curve
    record["trainable_parameters"] = sum(p.numel() for p in module.parameters())
    atomic_save(out_dir / "transform.pt", {"record": record, "state": module.state_dict()})
    return record


def phase2(transform: DenseTransform, tasks: dict[str, TaskData], ends: Ends, config: DenseRunConfig, seed: int,
           out_dir: Path, run_key: str) -> list[dict]:
    """The receiver's label loss with the transferred cache before its prompt (tasks in turn; with mode
    "joint" the two prompts in turn too)."""
    receivers = {name: Receiver(ends.model, ends.tokenizer, data.task["verbalizers"]) for name, data in tasks.items()}

    def loss(name, data, batch, mode):
        prompt = after(receivers[name], transferred(transform, data, batch, ends), [e.prompt_ids[mode] for e in batch])
        return receivers[name].label_loss(prompt, torch.tensor([e.label for e in batch]))

    return train_steps(transform, tasks, config, loss, out_dir, {"run": run_key, "seed": seed}, random.Random(seed + 1),
                       desc="phase 2")


def train_steps(module: torch.nn.Module, tasks: dict[str, TaskData], config: DenseRunConfig, loss_of, out_dir: Path,
                key: dict, picker: random.Random, desc: str, modes=None) -> list[dict]:
    """`config.steps` AdamW steps of `loss_of(name, data, batch, mode)` over `module`'s parameters: one task per
    step in turn, the mode `config.mode` (joint: unaware and aware in turn) unless `modes` fixes the turn.
    Resumable every `checkpoint_every` steps (out_dir/resume.pt, keyed by `key`, the config and the tasks)."""
    names = sorted(tasks)
    params = list(module.parameters())
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config.warmup, config.steps))
    modes = modes or ([config.mode] if config.mode != "joint" else ["unaware", "aware"])
    resume = out_dir / "resume.pt"
    key = fingerprint(dict(key, config=asdict(config), tasks=names, desc=desc))
    start, curve = 0, []
    if resume.exists():
        state = torch.load(resume, map_location="cpu", weights_only=False)
        if state["key"] == key:
            module.load_state_dict(state["module"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            picker.setstate(state["random"])
            torch.set_rng_state(state["rng"])
            start, curve = state["step"], state["curve"]
    bar = tqdm(range(start, config.steps), total=config.steps, initial=start, desc=desc)
    for step in bar:
        name = names[step % len(names)]
        data = tasks[name]
        mode = modes[(step // len(names)) % len(modes)]
        batch = picker.sample(data.examples, min(config.batch, len(data.examples)))
        loss = loss_of(name, data, batch, mode)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        optimizer.step()
        scheduler.step()
        curve.append({"step": step + 1, "task": name, "mode": mode, "loss": float(loss.detach())})
        bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
        done = step + 1
        if done % config.checkpoint_every == 0 and done < config.steps:
            atomic_save(resume, {"key": key, "step": done, "module": module.state_dict(),
                                 "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                                 "random": picker.getstate(), "rng": torch.get_rng_state(), "curve": curve})
    resume.unlink(missing_ok=True)
    return curve


def load_transform(path: str | Path) -> tuple[DenseTransform, dict]:
    from ...channels.kv.dense import DenseConfig

    saved = torch.load(Path(path) / "transform.pt", map_location="cpu", weights_only=False)
    record = saved["record"]
    transform = DenseTransform(CacheShape(**record["source_shape"]), CacheShape(**record["target_shape"]),
                               DenseConfig(**record["config"]["dense"]))
    if "fusion" in record["config"]["phases"]:   # the fuser baseline: the transformation inside its gates
        from .fuse import GatedFuser

        transform = GatedFuser(transform)
    transform.load_state_dict(saved["state"])
    transform.requires_grad_(False)
    return transform, record
