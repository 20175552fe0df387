"""k-shot baseline: a frozen model reads k labelled training examples, then the query text.

Layout (the task's `prompts.text` for every part, demonstrations answered by their verbalizer):
    <bos> text(demo 1) + verbalizer(demo 1) \\n\\n ... text(demo k) + verbalizer(demo k) | \\n\\n text(query)
Everything before `|` is the same for every query of a seed: its KV cache is computed once
(`Receiver.prefix_cache`) and every batch continues from it. The blank line that separates the
last demonstration from the query starts the query's tokens, so the pieces tokenize exactly as
the whole string does (SmolLM2 splits "\\n\\nReview" into "\\n" "\\n" "Review", not "\\n\\n" ...).

Demonstrations are balanced across classes: round-robin over a seeded shuffle of the classes,
a seeded choice within each class, then a seeded shuffle of their order (so the prompt does not
end on a fixed class pattern). With more classes than shots, k distinct classes. Each seed draws
other demonstrations, so seeds measure the variance that comes from the choice of examples.
"""
from __future__ import annotations

import random
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import zoo
from .errors import DataError
from .evaluate import _receiver, fit_for_receiver, rows_for, truncated_rows, write_rows
from .receiver import Prompt, Receiver
from .tasks import read_split

SEPARATOR = "\n\n"


def pick_demonstrations(examples: list[dict], shots: int, seed: int) -> list[dict]:
    """`shots` training rows balanced across the classes present, chosen and ordered by `seed`."""
    rng = random.Random(seed)
    by_class: dict[int, list[dict]] = {}
    for example in examples:
        by_class.setdefault(example["label"], []).append(example)
    classes = sorted(by_class)
    rng.shuffle(classes)
    pools = {label: rng.sample(by_class[label], len(by_class[label])) for label in classes}
    if shots > len(examples):
        raise DataError(f"{shots}-shot needs {shots} training rows; the split has {len(examples)}")
    picked, turn = [], 0
    while len(picked) < shots:
        label = classes[turn % len(classes)]
        if pools[label]:
            picked.append(pools[label].pop())
        turn += 1
    rng.shuffle(picked)
    return picked


def demonstration_block(task: dict, demonstrations: list[dict]) -> str:
    """The demonstrations, each answered by its verbalizer, separated by blank lines (no trailing one)."""
    template, verbalizers = task["prompts"]["text"], task["verbalizers"]
    return SEPARATOR.join(template.format(text=d["text"]) + verbalizers[d["label"]] for d in demonstrations)


def query_texts(task: dict, examples: list[dict], with_demonstrations: bool) -> list[str]:
    sep = SEPARATOR if with_demonstrations else ""
    return [sep + task["prompts"]["text"].format(text=e["text"]) for e in examples]


def fit_prompt_texts(receiver: Receiver, task: dict, demonstrations: list[dict], queries: list[dict]):
    """Demonstrations and queries cut to the task's max_tokens, each text bounded so that all of them fit the
    receiver's positions together (`evaluate.fit_for_receiver`); returns both and how many texts were cut."""
    empty = [dict(d, text="") for d in demonstrations]
    frame = demonstration_block(task, empty) + query_texts(task, [{"text": ""}], bool(demonstrations))[0]
    slots = len(demonstrations) + 1
    demonstrations, cut_demonstrations = fit_for_receiver(receiver, task, demonstrations, frame, slots)
    queries, cut_queries = fit_for_receiver(receiver, task, queries, frame, slots)
    return demonstrations, queries, cut_demonstrations + cut_queries


def sliding_window(model) -> int | None:
    """The smallest attention window of the model's sliding layers (None when all layers are global)."""
    window = getattr(model.config, "sliding_window", None)
    return int(window) if window else None


def batches(lengths: list[int], batch_size: int, prefix_length: int, window: int | None) -> list[list[int]]:
    """Query indices grouped into batches, sorted by length (little padding).

    Padding sits between the cached prefix and the query. A sliding window counts key slots, pads
    included, so a padded row would lose the oldest keys that one-by-one scoring keeps once the
    prefix plus the longest query exceeds the window: such batches hold queries of one length only.
    """
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    out: list[list[int]] = []
    for i in order:
        batch = out[-1] if out else None
        if batch is not None and len(batch) < batch_size:
            longest = max(lengths[batch[-1]], lengths[i])
            if window is None or prefix_length + longest <= window or lengths[batch[0]] == lengths[i]:
                batch.append(i)
                continue
        out.append([i])
    return out


def few_shot_scores(receiver: Receiver, prefix_ids: list[int], query_ids: list[list[int]], batch_size: int,
                    desc: str = "few-shot") -> torch.Tensor:
    """(N, C) class scores of every query read after the cached prefix, in the queries' order."""
    prefix = receiver.prefix_cache(prefix_ids)
    length = len(prefix_ids)
    scores: list[torch.Tensor | None] = [None] * len(query_ids)
    groups = batches([len(q) for q in query_ids], batch_size, length, sliding_window(receiver.model))
    with torch.inference_mode():
        for group in tqdm(groups, desc=desc, leave=False):
            embeds, mask = receiver._left_pad([receiver.ids_embeds(query_ids[i]) for i in group])
            result = receiver.class_scores(Prompt(embeds, mask, prefix)).float().cpu()   # (b, C)
            for row, i in enumerate(group):
                scores[i] = result[row]
    return torch.stack(scores)


def evaluate_few_shot(train_split, eval_split, model_dir, out_path, *, task_name: str, task: dict,
                      model_alias: str, shots: int = 5, seed: int, batch_size: int, device, dtype) -> Path:
    """Accuracy of `model_dir` reading `shots` balanced demonstrations (drawn with `seed`) and the query."""
    train, train_meta = read_split(train_split)
    examples, meta = read_split(eval_split)
    receiver = _receiver(model_dir, task, device, dtype)
    tokenize = lambda text: receiver.tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    demonstrations = pick_demonstrations(train, shots, seed) if shots else []
    demonstrations, examples, truncated = fit_prompt_texts(receiver, task, demonstrations, examples)
    prefix_ids = receiver.prefix_ids + tokenize(demonstration_block(task, demonstrations))
    query_ids = [tokenize(q) for q in query_texts(task, examples, with_demonstrations=bool(demonstrations))]
    labels = torch.tensor([e["label"] for e in examples])
    started = time.perf_counter()
    predictions = few_shot_scores(receiver, prefix_ids, query_ids, batch_size,
                                  desc=f"{shots}-shot {model_alias}").argmax(-1)
    fingerprint = ":".join([zoo.read_manifest(model_dir)["fingerprint"], meta["content_sha256"][:16],
                            train_meta["content_sha256"][:16]])
    base = {"task": task_name, "method": "few_shot", "sender": "", "receiver": model_alias, "bridge": "",
            "seed": seed, "fingerprint": fingerprint}
    rows = rows_for(base, predictions, labels, time.perf_counter() - started, variant=f"{shots}_shot",
                    examples=range(len(labels)), split=meta["content_sha256"])
    return write_rows(rows + truncated_rows(dict(base, variant=f"{shots}_shot"), truncated, len(labels)), out_path)
