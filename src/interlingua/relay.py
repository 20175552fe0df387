"""Text relays: the sender reads the whole input and writes text; the receiver classifies from it.

  summary  the sender summarises the input so that the label can still be told (the label words
           are named in the request); the receiver reads the summary.
  cot      the sender reasons step by step about which label applies; the receiver reads the reasoning.

Generation goes through the sender's chat template with greedy decoding (deterministic, so it
has no seed), batched with left padding, and the input is cut only at `tasks.<t>.max_tokens` (as in every model job). Every eval row gets a relay,
so the relay is scored on the same rows as every other method. A relay ends at its first complete
message (`complete_end`): a summary at the end of its first paragraph, a reasoning at the end of the
first paragraph that names a label; or at the sender's end-of-turn token; `max_new_tokens` caps the
rest, and each row records whether it ended by itself (`finished`) and how many tokens it generated.
A row that ends leaves its batch, so it costs nothing while the others go on (`generate_batch`).

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

import inspect
import json
import re
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import zoo
from .errors import ConfigError
from .evaluate import _receiver, predict_texts, rows_for, write_rows
from .few_shot import SEPARATOR, demonstration_block, few_shot_scores, fit_prompt_texts, pick_demonstrations
from .fingerprint import fingerprint
from .tasks import fit_examples, max_tokens, read_jsonl, read_split

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


STOP_RULE = {"summary": "first paragraph", "cot": "first paragraph naming a label"}
# What a complete relay is (the relay ends at the first of: the sender's end-of-turn token, this, max_new_tokens):
#   summary  the first paragraph: a summary is one message, and what SmolLM2 writes after a blank line is
#            extra (notes, rephrasings); most summaries end by themselves within it anyway.
#   cot      the first paragraph that names a label (a verbalizer word): the reasoning up to and including
#            the paragraph where it commits to an answer. Without this, greedy reasoning often loops
#            ("The text is not negative, but ...") until the cap.
# A paragraph ends at a blank line; blank lines before any text are not a paragraph.
BLANK_LINE = re.compile(r"\n[ \t]*\n")


def complete_end(text: str, mode: str, labels: Sequence[str] = ()) -> int | None:
    """Character offset where the first complete relay of `text` ends (None: not complete yet)."""
    if mode not in MODES:
        raise ValueError(f"relay mode must be one of {MODES}, got {mode!r}")
    words = [re.compile(r"\b" + re.escape(w.strip()) + r"\b", re.IGNORECASE) for w in labels if w.strip()]
    start = 0
    for blank in BLANK_LINE.finditer(text):
        paragraph = text[start:blank.start()]
        if paragraph.strip() and (mode == "summary" or any(w.search(paragraph) for w in words)):
            return blank.start()
        start = blank.end()
    return None


def generate_batch(model, tokenizer, prompts: list[list[int]], max_new_tokens: int, mode: str | None = None,
                   labels: Sequence[str] = ()) -> list[dict]:
    """Greedy continuations of left-padded prompts, each up to its first complete relay (`complete_end` of
    `mode`; None: up to the end-of-turn token only): {relay, generated_tokens, finished} per prompt.

    The same tokens as `model.generate(do_sample=False)` up to each row's end, but a row that ends leaves
    the batch (its KV cache rows are dropped), so finished rows cost nothing while the others go on; the
    prompt's logits are computed at its last position only, and the tokens every prompt of the batch starts
    with (the chat template's head, e.g. its system prompt) are read once and their KV cache shared.
    `generated_tokens` counts the tokens the sender generated for the row (the end-of-turn token excluded)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = model.device
    cache_name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    # Left padding after a shared prefix would shift a sliding window: share only with global attention.
    shared = 0 if len(prompts) < 2 or getattr(model.config, "sliding_window", None) else \
        min(_common_prefix(prompts), min(len(p) for p in prompts) - 1)
    with torch.inference_mode():
        if shared:
            model(input_ids=torch.tensor([prompts[0][:shared]], device=device), use_cache=True, logits_to_keep=1,
                  **{cache_name: cache})
            cache.batch_repeat_interleave(len(prompts))
    rest = [p[shared:] for p in prompts]
    longest = max(len(p) for p in rest)
    ids = torch.tensor([[pad] * (longest - len(p)) + p for p in rest], device=device)              # (B, T)
    tail = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in rest], device=device)     # (B, T)
    positions = shared + (tail.cumsum(-1) - 1).clamp(min=0)                                         # (B, T)
    mask = torch.cat([tail.new_ones(len(prompts), shared), tail], dim=1)                            # (B, P + T)
    stops = stop_ids(model, tokenizer)
    rows = list(range(len(prompts)))           # prompt index of each live batch row
    tokens: list[list[int]] = [[] for _ in prompts]
    results: list[dict | None] = [None] * len(prompts)
    with torch.inference_mode():
        for step in range(max_new_tokens):
            logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                           logits_to_keep=1, **{cache_name: cache}).logits[:, -1]                      # (B', V)
            chosen = logits.argmax(-1)                                                               # (B',)
            keep = []
            for b, token in enumerate(chosen.tolist()):
                row = rows[b]
                if token in stops:
                    results[row] = _relay(tokenizer, tokens[row], len(tokens[row]), True)
                    continue
                tokens[row].append(token)
                if mode is not None:  # decoding the row so far costs microseconds beside a forward pass
                    text = tokenizer.decode(tokens[row], skip_special_tokens=True)
                    end = complete_end(text, mode, labels)
                    if end is not None:
                        results[row] = {"relay": text[:end].strip(), "generated_tokens": len(tokens[row]),
                                        "finished": True}
                        continue
                if step == max_new_tokens - 1:
                    results[row] = _relay(tokenizer, tokens[row], len(tokens[row]), False)
                    continue
                keep.append(b)
            if not keep:
                break
            if len(keep) < len(rows):  # finished rows leave the batch
                index = torch.tensor(keep, device=device)
                cache.batch_select_indices(index)
                chosen, mask, positions = chosen[index], mask[index], positions[index]
                rows = [rows[b] for b in keep]
            ids = chosen[:, None]                                                                    # (B', 1)
            mask = torch.cat([mask, mask.new_ones(len(rows), 1)], dim=1)                             # (B', T + s)
            positions = positions[:, -1:] + 1
    return results


def _common_prefix(rows: list[list[int]]) -> int:
    n = 0
    while all(len(row) > n and row[n] == rows[0][n] for row in rows):
        n += 1
    return n


def _relay(tokenizer, tokens: list[int], count: int, finished: bool) -> dict:
    return {"relay": tokenizer.decode(tokens, skip_special_tokens=True).strip(), "generated_tokens": count,
            "finished": finished}


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


def generate_relay(sender_dir, split_path, out_path, *, task: dict, mode: str, max_new_tokens: int,
                   batch_size: int, device, dtype) -> Path:
    """Write one relay per example of the split (every eval row: the relay is scored on the same rows as
    every other method) as JSON Lines {index, relay, generated_tokens, input_tokens, seconds, finished};
    `seconds` is the batch's generation time / its size (rows that end early leave the batch)."""
    examples, meta = read_split(split_path)
    tokenizer = zoo.load_tokenizer(sender_dir)
    # The input is cut to tasks.<t>.max_tokens of the sender's tokenizer, as extraction cuts it.
    examples, truncated = fit_examples(task, tokenizer, zoo.load_config(sender_dir), examples,
                                       frame=chat_ids(tokenizer, sender_message(task, "", mode)), extra=max_new_tokens)
    prompts = [chat_ids(tokenizer, sender_message(task, e["text"], mode)) for e in examples]
    request = {"sender": zoo.read_manifest(sender_dir)["fingerprint"], "split": meta["content_sha256"],
               "mode": mode, "message": sender_message(task, "{text}", mode), "max_new_tokens": max_new_tokens,
               "batch_size": batch_size, "dtype": str(dtype), "device": torch.device(device).type,
               "stop": STOP_RULE[mode], "max_tokens": max_tokens(task)}
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
                results = generate_batch(model, tokenizer, [prompts[i] for i in batch], max_new_tokens, mode,
                                         task["verbalizers"])
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
               "finished": sum(r["finished"] for r in rows) / len(rows), "truncated_inputs": truncated}
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
                   seeds: Sequence[int] = (), train_split=None) -> Path:
    """Receiver accuracy from the relays, plus the relay's cost: mean generated tokens, the fraction
    that hit max_new_tokens, and the sender's generation seconds per example.

    With `shots` > 0 the receiver first reads `shots` demonstrations of `train_split`, drawn per seed
    of `seeds` as the k-shot baseline draws them: one row set per seed (the cost rows repeated, so
    every seed's set is complete). With `shots` 0, one zero-shot row set with an empty seed."""
    if shots and (not seeds or train_split is None):
        raise ConfigError(f"relay.shots = {shots}: the receiver's demonstrations need the train split and a seed")
    examples, meta = read_split(split_path)
    position = {e["index"]: i for i, e in enumerate(examples)}  # the example ids of the predictions file
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
    costs = [("relay_generated_tokens", sum(r["generated_tokens"] for r in rows) / n),
             ("relay_at_token_limit", sum(not r.get("finished", True) for r in rows) / n),
             ("relay_seconds_per_example", sum(r["seconds"] for r in rows) / n)]
    result = []
    for seed in (seeds if shots else [""]):
        demonstrations = pick_demonstrations(train, shots, seed) if shots else []
        demonstrations = fit_prompt_texts(receiver, task, demonstrations, [])[0]  # as the k-shot baseline cuts them
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
