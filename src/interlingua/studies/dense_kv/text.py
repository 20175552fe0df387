"""Text communication beside the cache transfer: study 1's text relay of the same direction and task, priced
in the same analytic FLOPs (compute.py) as the cache path.

The relay is study 1's (`results/relay/text_relay/<sender>/<receiver>/<task>.csv`, its messages in
`data/relay/text_relay/<sender>/<task>.jsonl`): the sender, under its chat template, greedily writes a message
of at most `relay.max_new_tokens` tokens, ending at its first complete answer; the receiver reads it after 5
demonstrations. Same eval rows as every study-3 method (the task's materialized eval split).
Per example the compute is the sender's generation (its prompt's forward, then one forward per generated
token, each scored over the vocabulary) plus the receiver's forward of the message in its prompt, scoring the
classes. The demonstrations the receiver reads first are left out (their cache is shared by every row), which
counts text's compute low: the ratio text / cache is conservative.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ... import zoo
from ...few_shot import SEPARATOR
from ...relay import receiver_text
from .compute import forward_flops, generation_flops


def text_rows(relay_messages, relay_result, sender_dir, receiver_dir, task: dict) -> pd.DataFrame:
    """Study 1's relay result rows with `flops_per_example` (and its sender and receiver parts) and the mean
    generated tokens added."""
    messages = [json.loads(line) for line in Path(relay_messages).read_text(encoding="utf-8").splitlines() if line]
    if not messages:
        raise ValueError(f"{relay_messages} holds no relay messages")
    result = pd.read_csv(relay_result)
    accuracy = result[result.metric == "accuracy"]
    if accuracy.empty:
        raise ValueError(f"{relay_result} has no accuracy row")
    s_config, r_config = zoo.load_config(sender_dir), zoo.load_config(receiver_dir)
    tokenizer = zoo.load_tokenizer(receiver_dir)
    classes = len(task["verbalizers"])
    prefix = len(tokenizer("", add_special_tokens=True)["input_ids"])   # the receiver's own <bos>, if any
    sender, receiver = 0.0, 0.0
    for row in messages:
        sender += generation_flops(s_config, row["input_tokens"], max(row["generated_tokens"], 1))
        query = tokenizer(SEPARATOR + receiver_text(task, row["relay"]), add_special_tokens=False)["input_ids"]
        receiver += forward_flops(r_config, prefix + len(query), 0, classes)
    n = len(messages)
    base = accuracy.iloc[0].to_dict()
    extra = [dict(base, metric="flops_per_example", value=(sender + receiver) / n),
             dict(base, metric="sender_flops_per_example", value=sender / n),
             dict(base, metric="receiver_flops_per_example", value=receiver / n),
             dict(base, metric="generated_tokens", value=sum(r["generated_tokens"] for r in messages) / n)]
    return pd.concat([result, pd.DataFrame(extra)], ignore_index=True)
