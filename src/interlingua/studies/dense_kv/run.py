"""One job of study 3: train a direction's transformation, or evaluate it on a task (the CLI calls these)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ... import zoo
from ...evaluate import parameters_row, write_rows
from ...receiver import Receiver
from ...store import ActivationStore
from .configs import DenseRunConfig
from .data import MODES, load_task
from .evaluate import evaluate_task
from .train import Ends, load_transform, train_direction


def _models(sender_dir, receiver_dir, device):
    receiver_model = zoo.load_model(receiver_dir, device, torch.float32)
    receiver_tokenizer = zoo.load_tokenizer(receiver_dir)
    sender = (zoo.load_tokenizer(sender_dir), zoo.load_config(sender_dir))   # the sender never runs
    return sender, receiver_model, receiver_tokenizer


def train_job(sender_dir, receiver_dir, tasks: dict, prompts: dict, config: dict, seed: int, out, *,
              device=torch.device("cpu"), run_key: str = "") -> Path:
    """tasks: name -> {"task": config entry, "split": train split, "sender_store": .., "receiver_store": ..}."""
    sender, receiver_model, receiver_tokenizer = _models(sender_dir, receiver_dir, device)
    run = DenseRunConfig.from_dict(config)
    data = {name: load_task(name, t["task"], t["split"], t["sender_store"], sender, receiver_tokenizer, prompts)
            for name, t in tasks.items()}
    stores = {name: ActivationStore(t["receiver_store"]) for name, t in tasks.items() if t.get("receiver_store")}
    ends = Ends(sender[1], receiver_model, receiver_tokenizer)
    record = train_direction(data, stores, ends, run, seed, out, run_key=run_key)
    out = Path(out)
    (out / "record.json").write_text(json.dumps(record, indent=2))
    return out


def evaluate_job(transform_dir, sender_dir, receiver_dir, task_name: str, task: dict, split, sender_store,
                 prompts: dict, out, *, base: dict, seed: int, keep_fractions=(), modes=MODES, alone: bool = True,
                 zero: bool = True, device=torch.device("cpu"), batch_size: int = 16,
                 receiver_store=None) -> Path:
    """Tidy rows (and predictions) of one task for a trained direction: both modes, controls, baselines.
    With `receiver_store` (the receiver's own cache of the eval split): the fuser baseline (fuse.py)."""
    sender, receiver_model, receiver_tokenizer = _models(sender_dir, receiver_dir, device)
    transform, record = load_transform(transform_dir)
    data = load_task(task_name, task, split, sender_store, sender, receiver_tokenizer, prompts)
    receiver = Receiver(receiver_model, receiver_tokenizer, task["verbalizers"])
    ends = Ends(sender[1], receiver_model, receiver_tokenizer)
    if receiver_store is not None:
        from .fuse import METHOD, evaluate_fuser

        rows = evaluate_fuser(transform, data, receiver, ActivationStore(receiver_store), ends, base=base, seed=seed,
                              batch_size=batch_size)
        rows.append(parameters_row(dict(base, task=task_name, method=METHOD, seed=seed),
                                   record["trainable_parameters"], len(data.examples)))
        return write_rows(rows, out)
    rows = evaluate_task(transform, data, receiver, ends, base=base, seed=seed, keep_fractions=keep_fractions,
                         modes=modes, batch_size=batch_size, alone=alone, zero=zero)
    rows.append(parameters_row(dict(base, task=task_name, method=f"cache_{modes[0]}", seed=seed),
                               record["trainable_parameters"], len(data.examples)))
    return write_rows(rows, out)
