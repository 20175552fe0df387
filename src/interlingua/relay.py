"""Text relays: the sender reads the whole input and writes text; the receiver classifies from it.

  summary  the sender summarises the input so that the label can still be told (the label words
           are named in the request); the receiver reads the summary.
  cot      the sender reasons step by step about which label applies; the receiver reads the reasoning.

Generation goes through the sender's chat template with greedy decoding (deterministic, so it
has no seed), batched with left padding, and the input is never truncated. The sender writes until
its end-of-turn token or `max_new_tokens`; each row records whether it stopped by itself.

Relays stream to `<out>.partial` (a header line with the request, then one JSON row per example)
and a rerun resumes from it: batches are fixed by the sorted input lengths, so a resumed run
generates exactly what an uninterrupted one does. When complete, the rows are written to `<out>` in
split order, with `<out stem>.meta.json` (request, fingerprint, summary numbers).

The receiver reads the relay with the same k demonstrations as its own k-shot baseline
(`relay.shots`, default 5): a small receiver is near chance zero-shot even on the raw text
(Gemma-3-270M on SST-2: 0.511 zero-shot, 0.850 5-shot), so a zero-shot reading of the relay would
measure the receiver's ignorance of the label format, not what the relay carries. The layout is
few_shot.py's, with the relay as the query:
    <bos> text(demo 1) + verbalizer(demo 1) \\n\\n ... text(demo k) + verbalizer(demo k) | \\n\\n relay text
The demonstrations are raw training texts answered by their verbalizers, so the receiver learns the
label format (`few_shot.pick_demonstrations` on the train split, `few_shot.demonstration_block`),
drawn per seed exactly as the k-shot baseline draws them (its seeds, by default the study's: same
seed, same demonstrations); the query is the relay in the receiver's template (`receiver_text`).
Everything before `|` is cached once per seed and scored with `few_shot.few_shot_scores` (batches
that never pad past a sliding window). One row set per seed, so the tables report mean ± std over
seeds as they do for k-shot. `shots: 0` is the old zero-shot reading: the relay text alone, one row
set with an empty seed.
"""
from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import zoo
from .errors import ConfigError
from .evaluate import _receiver, predict_texts, rows_for, write_rows
from .few_shot import SEPARATOR, demonstration_block, few_shot_scores, pick_demonstrations
from .fingerprint import fingerprint
from .tasks import read_jsonl, read_split, subsample

MODES = ("summary", "cot")
METHODS = {"summary": "text_relay", "cot": "cot_relay"}
# What the sender is asked, after the input (the task's `prompts.sender` rendering of it).
REQUESTS = {
    "summary": "Summarize the text above. Keep everything someone would need to tell whether it is {labels}.",
    # Reasoning first: "Think ... whether it is negative or positive" made SmolLM2 open every answer
    # with "The text is negative." (the first label named) and rationalise it afterwards.
    "cot": "Let's think step by step about the text above: what does it say, and does that make it {labels}? "
           "End with your answer.",
}


def label_words(task: dict) -> str:
    """The label set in words, as the receiver scores it: 'negative or positive'."""
    words = [v.strip() for v in task["verbalizers"]]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def sender_message(task: dict, text: str, mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"relay mode must be one of {MODES}, got {mode!r}")
    return task["prompts"]["sender"].format(text=text) + "\n\n" + REQUESTS[mode].format(labels=label_words(task))


def chat_ids(tokenizer, message: str) -> list[int]:
    """Token ids of one user turn and the start of the assistant's answer."""
    if tokenizer.chat_template:
        text = tokenizer.apply_chat_template([{"role": "user", "content": message}], add_generation_prompt=True,
                                             tokenize=False)
        return tokenizer(text, add_special_tokens=False)["input_ids"]  # the template writes its own specials
    # Base models and the tiny test tokenizers have no chat template: a plain two-role transcript.
    return tokenizer(f"User: {message}\nAssistant:", add_special_tokens=True)["input_ids"]


def stop_ids(model, tokenizer) -> set[int]:
    configured = model.generation_config.eos_token_id
    ids = set(configured if isinstance(configured, list) else [configured] if configured is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def generate_batch(model, tokenizer, prompts: list[list[int]], max_new_tokens: int) -> list[dict]:
    """Greedy continuations of left-padded prompts: {relay, generated_tokens, finished} per prompt."""
    longest = max(len(p) for p in prompts)
    pad = tokenizer.pad_token_id
    device = model.device
    ids = torch.tensor([[pad] * (longest - len(p)) + p for p in prompts], device=device)           # (B, T)
    mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in prompts], device=device)  # (B, T)
    stops = stop_ids(model, tokenizer)
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=pad, eos_token_id=sorted(stops))                        # (B, T + G)
    results = []
    for row in out[:, longest:].tolist():
        end = next((i for i, token in enumerate(row) if token in stops), None)
        text_ids = row if end is None else row[:end]  # tokens before the end-of-turn token
        results.append({"relay": tokenizer.decode(text_ids, skip_special_tokens=True).strip(),
                        "generated_tokens": len(text_ids), "finished": end is not None})
    return results


def sorted_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Positions grouped by input length (little padding); fixed by the inputs, so resumable."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def partial_path(out_path) -> Path:
    return Path(str(out_path) + ".partial")


def relay_meta_path(out_path) -> Path:
    return Path(out_path).with_suffix(".meta.json")


def read_partial(path: Path, request: dict) -> dict[int, dict]:
    """Rows of an interrupted run with the same request, keyed by index; a torn last line is dropped."""
    if not path.exists():
        return {}
    lines = path.read_text(encoding="utf-8").splitlines()
    try:
        header = json.loads(lines[0]) if lines else {}
    except json.JSONDecodeError:
        header = {}
    if header.get("request") != request:
        print(f"relay: {path} was written for another request; starting over")
        return {}
    done = {}
    for line in lines[1:]:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # the line being written when the job was killed
        done[row["index"]] = row
    return done


def relay_examples(examples: list[dict], eval_rows: int | None) -> list[dict]:
    """The rows a relay covers: all, or a seeded subset of `eval_rows` (generation is the slow part)."""
    return [examples[i] for i in subsample(examples, eval_rows, seed=0)]


def generate_relay(sender_dir, split_path, out_path, *, task: dict, mode: str, max_new_tokens: int,
                   batch_size: int, device, dtype, eval_rows: int | None = None) -> Path:
    """Write one relay per example of the split (or of a seeded subset of `eval_rows`) as JSON Lines
    {index, relay, generated_tokens, input_tokens, seconds, finished}; `seconds` is the batch's
    generation time / its size."""
    examples, meta = read_split(split_path)
    examples = relay_examples(examples, eval_rows)
    tokenizer = zoo.load_tokenizer(sender_dir)
    prompts = [chat_ids(tokenizer, sender_message(task, e["text"], mode)) for e in examples]
    request = {"sender": zoo.read_manifest(sender_dir)["fingerprint"], "split": meta["content_sha256"],
               "mode": mode, "message": sender_message(task, "{text}", mode), "max_new_tokens": max_new_tokens,
               "batch_size": batch_size, "dtype": str(dtype), "device": torch.device(device).type,
               "eval_rows": eval_rows}
    out_path, partial = Path(out_path), partial_path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    done = read_partial(partial, request)
    # Rewrite what survived (drops a torn last line), then append batch by batch.
    tmp = partial.with_name(partial.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(json.dumps({"request": request}) + "\n")
        handle.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in done.values())
    tmp.replace(partial)
    todo = [b for b in sorted_batches([len(p) for p in prompts], batch_size)
            if any(examples[i]["index"] not in done for i in b)]
    if todo:
        model = zoo.load_model(sender_dir, device, dtype)
        with open(partial, "a", encoding="utf-8") as handle:
            for batch in tqdm(todo, desc=f"{mode} relay", unit="batch"):
                started = time.perf_counter()
                results = generate_batch(model, tokenizer, [prompts[i] for i in batch], max_new_tokens)
                seconds = (time.perf_counter() - started) / len(batch)
                for i, result in zip(batch, results):
                    index = examples[i]["index"]
                    if index in done:
                        continue
                    row = {"index": index, "relay": result["relay"], "generated_tokens": result["generated_tokens"],
                           "input_tokens": len(prompts[i]), "seconds": seconds, "finished": result["finished"]}
                    done[index] = row
                    handle.write(json.dumps(row, ensure_ascii=False) + "\n")
                handle.flush()
    rows = [done[e["index"]] for e in examples]
    tmp = out_path.with_name(out_path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    tmp.replace(out_path)
    summary = {"rows": len(rows), "mean_generated_tokens": sum(r["generated_tokens"] for r in rows) / len(rows),
               "mean_seconds": sum(r["seconds"] for r in rows) / len(rows),
               "finished": sum(r["finished"] for r in rows) / len(rows)}
    relay_meta_path(out_path).write_text(json.dumps({"request": request, "fingerprint": fingerprint(request),
                                                     **summary}, indent=2))
    partial.unlink()
    return out_path


def receiver_text(task: dict, relay: str) -> str:
    """What the receiver reads: `prompts.relay` with {relay}, else `prompts.text` with the relay as {text}."""
    prompts = task["prompts"]
    return prompts["relay"].format(relay=relay) if "relay" in prompts else prompts["text"].format(text=relay)


def receiver_prompts(task: dict, relays: list[str], demonstrations: list[dict]) -> tuple[str, list[str]]:
    """What the receiver reads after its tokenizer prefix (<bos>), split as few_shot.py splits it: the
    shared prefix (the demonstration block; "" without demonstrations) and one query per relay (the
    separator, then the relay in the receiver's template). prefix + query is the whole prompt."""
    if not demonstrations:
        return "", [receiver_text(task, relay) for relay in relays]
    return demonstration_block(task, demonstrations), [SEPARATOR + receiver_text(task, relay) for relay in relays]


def receiver_predictions(receiver, task: dict, relays: list[str], demonstrations: list[dict], batch_size: int,
                         desc: str) -> torch.Tensor:
    """Predicted class per relay. Without demonstrations: each relay text alone (the zero-shot path of
    evaluate.py). With them: the demonstration block's KV cache computed once, every batch continues
    from it (few_shot.few_shot_scores)."""
    prefix, queries = receiver_prompts(task, relays, demonstrations)
    if not demonstrations:
        return predict_texts(receiver, queries, batch_size, desc=desc)
    tokenize = lambda text: receiver.tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    prefix_ids = receiver.prefix_ids + tokenize(prefix)
    scores = few_shot_scores(receiver, prefix_ids, [tokenize(q) for q in queries], batch_size, desc=desc)
    receiver._prefixes.pop(tuple(prefix_ids), None)  # one prefix per seed: do not keep the others' caches
    return scores.argmax(-1)


def evaluate_relay(relay_path, split_path, receiver_dir, out_path, *, task_name: str, task: dict, mode: str,
                   sender_alias: str, receiver_alias: str, batch_size: int, device, dtype, shots: int,
                   seeds: Sequence[int] = (), train_split=None, eval_rows: int | None = None) -> Path:
    """Receiver accuracy from the relays, plus the relay's cost: mean generated tokens, the fraction
    that hit max_new_tokens, and the sender's generation seconds per example.

    With `shots` > 0 the receiver first reads `shots` demonstrations of `train_split`, drawn per seed
    of `seeds` as the k-shot baseline draws them: one row set per seed (the cost rows repeated, so
    every seed's set is complete). With `shots` 0, one zero-shot row set with an empty seed."""
    if shots and (not seeds or train_split is None):
        raise ConfigError(f"relay.shots = {shots}: the receiver's demonstrations need the train split and a seed")
    examples, meta = read_split(split_path)
    position = {e["index"]: i for i, e in enumerate(examples)}  # the example ids of the predictions file
    examples = relay_examples(examples, eval_rows)
    relays = {row["index"]: row for row in read_jsonl(Path(relay_path))}
    missing = [e["index"] for e in examples if e["index"] not in relays]
    if missing:
        raise ValueError(f"{relay_path} has no relay for {len(missing)} rows of {split_path} (e.g. {missing[:3]})")
    rows = [relays[e["index"]] for e in examples]
    texts = [row["relay"] for row in rows]
    labels = torch.tensor([e["label"] for e in examples])
    relay_meta = relay_meta_path(relay_path)
    relay_fp = json.loads(relay_meta.read_text())["fingerprint"] if relay_meta.exists() else ""
    parts = [zoo.read_manifest(receiver_dir)["fingerprint"], relay_fp, meta["content_sha256"][:16]]
    train = []
    if shots:
        train, train_meta = read_split(train_split)
        parts.append(train_meta["content_sha256"][:16])
    receiver = _receiver(receiver_dir, task, device, dtype)
    n = len(rows)
    costs = [("generated_tokens", sum(r["generated_tokens"] for r in rows) / n),
             ("relay_at_token_limit", sum(not r.get("finished", True) for r in rows) / n),
             ("relay_seconds_per_example", sum(r["seconds"] for r in rows) / n)]
    result = []
    for seed in (seeds if shots else [""]):
        demonstrations = pick_demonstrations(train, shots, seed) if shots else []
        started = time.perf_counter()
        predictions = receiver_predictions(receiver, task, texts, demonstrations, batch_size,
                                           desc=f"{METHODS[mode]} {receiver_alias} {shots}-shot seed {seed}")
        seconds = time.perf_counter() - started
        base = {"task": task_name, "method": METHODS[mode], "sender": sender_alias, "receiver": receiver_alias,
                "bridge": "", "seed": seed, "fingerprint": ":".join(parts)}
        result += rows_for(base, predictions, labels, seconds, examples=[position[e["index"]] for e in examples],
                           split=meta["content_sha256"])
        result += [dict(base, variant="", n=n, metric=metric, value=value) for metric, value in costs]
    return write_rows(result, out_path)
