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

Shorter limits (`dense_kv.text_limits`): greedy generation capped at L tokens writes the first L tokens of the
uncapped message, so each message is cut to its first L sender tokens (re-tokenized from the relay text) and
the receiver reads it as study 1's relay is read (`limit_job`, same demonstrations and seeds).
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ... import zoo
from ...evaluate import predictions_path
from ...few_shot import SEPARATOR
from ...relay import evaluate_relay, receiver_text
from ...tasks import read_jsonl
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


def truncated(rows: list[dict], tokenizer, limit: int) -> list[dict]:
    """Each relay as if generation had stopped after `limit` tokens: its first `limit` sender tokens (the relay
    text re-tokenized), generated_tokens capped, unfinished where cut, generation seconds scaled down."""
    out = []
    for row in rows:
        ids = tokenizer(row["relay"], add_special_tokens=False)["input_ids"]
        if row["generated_tokens"] <= limit and len(ids) <= limit:
            out.append(dict(row))
            continue
        cut = tokenizer.decode(ids[:limit], skip_special_tokens=True).strip()
        scale = limit / max(row["generated_tokens"], 1)
        out.append(dict(row, relay=cut, generated_tokens=min(limit, row["generated_tokens"]), finished=False,
                        seconds=row.get("seconds", 0.0) * min(1.0, scale)))
    return out


def limit_job(relay_messages, split, train_split, sender_dir, receiver_dir, out_dir, *, task_name: str, task: dict,
              limits, shots: int, seeds, batch_size: int, device, dtype) -> list[Path]:
    """Study 1's relay at shorter limits: per limit L, limit<L>.jsonl (the cut messages) and limit<L>.csv (the
    receiver's accuracy on them, read as study 1's relay is; variant `limit_<L>`)."""
    rows = read_jsonl(Path(relay_messages))
    tokenizer = zoo.load_tokenizer(sender_dir)
    sender, receiver = zoo.read_manifest(sender_dir)["alias"], zoo.read_manifest(receiver_dir)["alias"]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for limit in limits:
        messages = out_dir / f"limit{limit}.jsonl"
        messages.write_text("".join(json.dumps(r) + "\n" for r in truncated(rows, tokenizer, int(limit))),
                            encoding="utf-8")
        result = out_dir / f"limit{limit}.csv"
        evaluate_relay(messages, split, receiver_dir, result, task_name=task_name, task=task, mode="summary",
                       sender_alias=sender, receiver_alias=receiver, batch_size=batch_size, device=device,
                       dtype=dtype, shots=shots, seeds=seeds, train_split=train_split)
        for path in (predictions_path(result), result):   # predictions first: a result never without them
            frame = pd.read_csv(path, keep_default_na=False)
            frame["variant"] = f"limit_{limit}"
            frame.to_csv(path, index=False)
        written.append(result)
    return written
