"""One task split as study 3 reads it: the sender's cached reading of each example, how the receiver's
tokens align to it, and the receiver's two prompts (context-unaware and context-aware).

The sender read `prompts.sender` (e.g. "Review: {text}") once, at extraction; its store holds each
token's character span in that string. The receiver tokenizes the same string (the sender computes the
alignment: it knows both tokenizers) and each receiver position after its own first one reads the mean
of the sender positions covering its characters (channels/kv/tokens.py). Then the receiver reads
  unaware: `dense_kv.prompts.<task>.unaware` (the question only; e.g. BoolQ's question, the passage private)
  aware:   the task's own text prompt (`prompts.text`: it reads the input itself), after the transferred cache.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ...channels.kv.dense import aligned_positions
from ...channels.kv.tokens import char_spans
from ...errors import ConfigError, DataError
from ...store import ActivationStore
from ...tasks import fit_examples, read_split

MODES = ("unaware", "aware")


@dataclass
class Example:
    row: int                 # the sender store's row
    example: int             # position in the materialized split (paired tests pair on it)
    label: int
    weights: torch.Tensor    # (R, S) pooling weights: receiver positions <- the row's sender entries
    positions: torch.Tensor  # (R,) receiver positions of the transferred entries
    prompt_ids: dict         # mode -> receiver token ids read after the cache
    text_chars: int          # characters of the sender string (compute accounting)
    sender_tokens: int       # tokens the sender read (compute accounting)


@dataclass
class TaskData:
    name: str
    task: dict
    split: str               # the eval split's content hash (16 hex digits)
    store: ActivationStore
    examples: list[Example]
    first_token: int         # the receiver's first token of every row (its <bos>, or the frame's first word)


def receiver_prompts(task_name: str, task: dict, prompts: dict) -> dict:
    """The two prompt templates for a task: unaware from study 3's config, aware the task's text prompt."""
    if task_name not in prompts or "unaware" not in prompts[task_name]:
        raise ConfigError(f"dense_kv.prompts.{task_name}.unaware is missing: the question the context-unaware "
                          f"receiver reads after the transferred cache (e.g. '\\nSentiment:')")
    return {"unaware": prompts[task_name]["unaware"],
            "aware": prompts[task_name].get("aware") or "\n" + task["prompts"]["text"]}


def load_task(task_name: str, task: dict, split_path, store_path, sender, receiver_tokenizer,
              prompts: dict) -> TaskData:
    """`sender`: (tokenizer, config) of the model that wrote the store, to cut texts as extraction did."""
    rows, meta = read_split(split_path)
    store = ActivationStore(store_path)
    manifest = store.manifest
    if manifest.get("task_sha256") != meta["content_sha256"]:
        raise DataError(f"{store_path} was extracted from another version of {split_path} "
                        f"(task sha256 {manifest.get('task_sha256')} vs {meta['content_sha256']}): re-extract it")
    sender_prompt = manifest["sender_prompt"]
    s_tok, s_config = sender
    fitted, _ = fit_examples({"max_tokens": manifest["max_tokens"]}, s_tok, s_config, rows,
                             frame=sender_prompt.format(text=""))
    templates = receiver_prompts(task_name, task, prompts)
    examples, firsts = [], set()
    for row in range(len(store)):
        index = int(store.example_index[row])
        example = fitted[index]
        string = sender_prompt.format(text=example["text"])
        s_spans = store.row_spans(row)
        if max(b for _, b in s_spans) != len(string):
            raise DataError(f"{store_path} row {row} (example {index}): its character spans end at "
                            f"{max(b for _, b in s_spans)}, the prompt string has {len(string)} characters: the "
                            f"store does not hold this split's texts")
        r_ids, r_spans = char_spans(receiver_tokenizer, string)
        weights, positions = aligned_positions(r_spans, s_spans)
        firsts.add(r_ids[0])
        fields = dict(example.get("parts", {}), text=example["text"])
        prompt_ids = {}
        for mode, template in templates.items():
            try:
                prompt = template.format(**fields)
            except KeyError as missing:
                raise ConfigError(f"prompt {template!r} for task {task_name} ({mode}) names {missing}, which the "
                                  f"split's rows do not have (their parts: {sorted(fields)})") from None
            prompt_ids[mode] = receiver_tokenizer(prompt, add_special_tokens=False)["input_ids"]
        examples.append(Example(row, index, int(example["label"]), weights, positions, prompt_ids, len(string),
                                len(s_spans)))
    if len(firsts) != 1:
        raise DataError(f"{task_name}: the receiver's first token differs between rows ({sorted(firsts)[:4]}); "
                        f"it is the receiver's own attention sink and must be the same (a <bos>, or a fixed frame)")
    examples.sort(key=lambda e: e.example)
    return TaskData(task_name, task, meta["content_sha256"][:16], store, examples, firsts.pop())
