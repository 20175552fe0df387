"""What a bridge costs at serving time, and what its soft tokens look like to the receiver.

Serving is end to end from the raw text, with no activation store:
  bridge      tokenize -> sender blocks up to the bridge's source layer only -> bridge -> receiver
              scores the classes, continuing from the cached KV of the instruction's fixed part
  text_relay  the sender reads the whole input through its chat template and writes a summary
              (greedy, relay.py's prompt and generation) -> the receiver classifies from the summary,
              after the same k demonstrations as in evaluation (`relay.shots`; their KV cache is
              computed once, as the evaluation does)
  zero_shot   the receiver reads the text itself (the zero-shot prompt)
The receiver's text prompts get the same treatment as the soft-token prompt: the template's fixed
head (e.g. "<bos>Review:") is read from a cached KV prefix whenever every row starts with its tokens,
so the baselines are as fast as the prompt allows (tokens identical to `Receiver.text_prompt`).

`measure_latency` times each path at batch 1 per example (paths interleaved example by example, so
load bursts on a shared machine hit both alike) and reports medians per stage;
`measure_throughput` reports samples/s per batch size. Both write tidy rows (evaluate.COLUMNS).
`soft_token_neighbours` writes the nearest receiver-vocabulary tokens of each soft token and the
pairwise cosine of the soft tokens (figures/soft_token_neighbours.{md,png}).
"""
from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from . import zoo
from .evaluate import write_rows
from .extract import decoder_of, sender_states
from .fingerprint import fingerprint
from .receiver import Prompt, Receiver
from .few_shot import few_shot_scores, pick_demonstrations
from .relay import chat_ids, generate_batch, receiver_prompts, receiver_text, sender_message
from .store import ActivationStore
from .tasks import read_split
from .train import load_bridge

METHODS = ("bridge", "zero_shot", "text_relay")
STAGES = {"bridge": ("sender_encode", "bridge", "receiver"), "text_relay": ("relay_generate", "receiver"),
          "zero_shot": ("receiver",)}
_SLOT = "\x00"
clock = time.perf_counter  # what Laps reads (tests replace it with a fake clock)  # stands in for the relay when locating the fixed head of the relay prompt


class Laps:
    """Seconds per named stage of one call; on CUDA each lap waits for the queued kernels."""

    def __init__(self, device: torch.device, sync: bool = True):
        self.device_is_cuda = device.type == "cuda"
        self.sync = sync and self.device_is_cuda
        self.seconds: dict[str, float] = {}
        self.started = self.last = self._now()

    def _now(self) -> float:
        if self.sync:
            torch.cuda.synchronize()
        return clock()

    def lap(self, stage: str) -> None:
        now = self._now()
        self.seconds[stage] = now - self.last
        self.last = now

    def total(self) -> float:
        return self.last - self.started

    def finish(self) -> float:
        """Total seconds, waiting once at the end for queued kernels (throughput: no waits in between)."""
        self.sync = self.device_is_cuda
        self.lap("end")
        return self.total()


@dataclass
class Serving:
    """The models of one sender -> receiver pair, loaded once, and the task's prompts."""
    sender: torch.nn.Module        # the whole causal LM (the relay generates with it)
    sender_tokenizer: object
    receiver: Receiver
    bridge: torch.nn.Module
    source_layer: int              # sender layer the bridge reads: the sender stops there
    task: dict
    max_new_tokens: int
    device: torch.device
    dtype: torch.dtype
    relay_demonstrations: list[dict] = field(default_factory=list)  # what the relay's receiver reads first

    def __post_init__(self):
        self.decoder = decoder_of(self.sender)

    # -- the three paths; each returns predictions (B,) and fills `laps` -----------------------
    @torch.inference_mode()
    def bridge_path(self, texts: list[str], laps: Laps):
        prompts = self.task["prompts"]
        ids = [self.sender_tokenizer(prompts["sender"].format(text=t), add_special_tokens=True)["input_ids"]
               for t in texts]
        states, _ = sender_states(self.decoder, ids, [self.source_layer], self.sender_tokenizer.pad_token_id,
                                  self.device, self.dtype)                                     # {L: (B, T, d_s)}
        lengths = torch.tensor([len(row) for row in ids], device=self.device)
        mask = torch.arange(int(lengths.max()), device=self.device) < lengths[:, None]          # (B, T) right-padded
        laps.lap("sender_encode")
        soft = self.bridge(states[self.source_layer].float(), mask)                             # (B, M, d_r)
        laps.lap("bridge")
        scores = self.receiver.class_scores(self.receiver.soft_prompt(soft, prompts["instruction"]))  # (B, C)
        predictions = scores.argmax(-1)
        laps.lap("receiver")
        return predictions

    @torch.inference_mode()
    def relay_path(self, texts: list[str], laps: Laps):
        prompts = [chat_ids(self.sender_tokenizer, sender_message(self.task, t, "summary")) for t in texts]
        relays = generate_batch(self.sender, self.sender_tokenizer, prompts, self.max_new_tokens, "summary",
                                self.task["verbalizers"])  # ends at its first complete message, as in evaluation
        laps.lap("relay_generate")
        if self.relay_demonstrations:  # as relay.evaluate_relay reads it: demonstrations from their KV cache
            prefix, queries = receiver_prompts(self.task, [r["relay"] for r in relays], self.relay_demonstrations)
            tokenize = lambda text: self.receiver.tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
            predictions = few_shot_scores(self.receiver, self.receiver.prefix_ids + tokenize(prefix),
                                          [tokenize(q) for q in queries], len(queries), desc="relay").argmax(-1)
        else:
            head = receiver_text(self.task, _SLOT).partition(_SLOT)[0]
            prompt = cached_text_prompt(self.receiver, head, [receiver_text(self.task, r["relay"]) for r in relays])
            predictions = self.receiver.class_scores(prompt).argmax(-1)
        laps.lap("receiver")
        return predictions, [r["generated_tokens"] for r in relays]

    @torch.inference_mode()
    def direct_path(self, texts: list[str], laps: Laps):
        template = self.task["prompts"]["text"]
        prompt = cached_text_prompt(self.receiver, template.partition("{text}")[0],
                                    [template.format(text=t) for t in texts])
        predictions = self.receiver.class_scores(prompt).argmax(-1)
        laps.lap("receiver")
        return predictions

    def run(self, method: str, texts: list[str], laps: Laps) -> list[int]:
        """Run one path; returns the relay's generated tokens per row (empty for the other paths)."""
        if method == "text_relay":
            return self.relay_path(texts, laps)[1]
        (self.bridge_path if method == "bridge" else self.direct_path)(texts, laps)
        return []


def cached_text_prompt(receiver: Receiver, head: str, texts: list[str]) -> Prompt:
    """The prompt `receiver.text_prompt(texts)` builds (same tokens), with the tokens every row shares
    with the template's fixed `head` read from the receiver's cached KV prefix."""
    ids = [receiver.tokenizer(t, add_special_tokens=True)["input_ids"] for t in texts]
    head_ids = receiver.tokenizer(head, add_special_tokens=True)["input_ids"]
    shared = min(_common_prefix(row, head_ids) for row in ids)
    shared = min(shared, min(len(row) for row in ids) - 1)     # every row keeps a token to read out
    rest = [row[shared:] for row in ids]
    window = getattr(receiver.model.config, "sliding_window", None)
    if shared <= 0 or (window and shared + max(len(r) for r in rest) > window):
        # Left padding between the prefix and the text would push the prefix out of a sliding window.
        return receiver.text_prompt(texts)
    embeds, mask = receiver._left_pad([receiver.ids_embeds(row) for row in rest])  # (B, T', d), (B, T')
    return Prompt(embeds, mask, receiver.prefix_cache(head_ids[:shared]))


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def load_serving(sender_dir, receiver_dir, checkpoint, *, task: dict, max_new_tokens: int, device,
                 dtype, relay_demonstrations: list[dict] = ()) -> tuple[Serving, dict]:
    """The loaded pair and the bridge checkpoint's payload."""
    sender = zoo.load_model(sender_dir, device, dtype)
    receiver = Receiver(zoo.load_model(receiver_dir, device, dtype), zoo.load_tokenizer(receiver_dir),
                        task["verbalizers"])
    bridge, payload = load_bridge(checkpoint, device)
    serving = Serving(sender, zoo.load_tokenizer(sender_dir), receiver, bridge, payload["config"]["source_layer"],
                      task, max_new_tokens, torch.device(device), dtype, list(relay_demonstrations))
    return serving, payload


def relay_reading(train_split, shots: int, seed: int) -> tuple[list[dict], dict]:
    """The relay receiver's demonstrations (evaluate_relay's draw for `seed`) and what decides them."""
    if not shots:
        return [], {"relay_shots": 0}
    if train_split is None:
        raise ValueError(f"relay.shots = {shots}: the relay's demonstrations need the train split")
    train, meta = read_split(train_split)
    return pick_demonstrations(train, shots, seed), {"relay_shots": shots, "relay_seed": seed,
                                                     "train": meta["content_sha256"]}


def method_base(base: dict, method: str) -> dict:
    """Row fields per method from the measurement's base (task, sender, receiver, bridge, seed, fingerprint):
    only the bridge has a bridge and a seed; the receiver reading the text has no sender."""
    row = dict(base, method=method)
    if method != "bridge":
        row.update(bridge="", seed="")
    if method == "zero_shot":
        row["sender"] = ""
    return row


# -- latency -----------------------------------------------------------------------------------
def latency_rows(serving: Serving, texts: list[str], base: dict, warmup: int = 2,
                 methods=("bridge", "text_relay")) -> list[dict]:
    """Batch-1 latency per example, paths interleaved; medians per stage, in seconds."""
    for text in texts[:warmup]:
        for method in methods:
            serving.run(method, [text], Laps(serving.device))
    stages = {m: {s: [] for s in ("total",) + STAGES[m]} for m in methods}
    generated = []
    for text in texts:
        for method in methods:
            laps = Laps(serving.device)
            generated += serving.run(method, [text], laps)
            stages[method]["total"].append(laps.total())
            for stage, seconds in laps.seconds.items():
                stages[method][stage].append(seconds)
    rows = []
    for method in methods:
        common = dict(method_base(base, method), variant="batch1", n=len(texts))
        for stage, values in stages[method].items():
            metric = "latency_seconds" if stage == "total" else f"latency_{stage}_seconds"
            rows.append(dict(common, metric=metric, value=statistics.median(values)))
        if method == "text_relay":
            rows.append(dict(common, metric="generated_tokens", value=sum(generated) / len(generated)))
    return rows


def measure_latency(split_path, sender_dir, receiver_dir, checkpoint, out_path, *, task_name: str, task: dict,
                    sender_alias: str, receiver_alias: str, bridge_name: str, max_new_tokens: int, examples: int,
                    warmup: int, device, dtype, train_split=None, relay_shots: int = 0, relay_seed: int = 0) -> Path:
    """Table 3 / Fig. 3: end-to-end latency at batch 1 over the first `examples` rows of the eval split."""
    rows, meta = read_split(split_path)
    demonstrations, reading = relay_reading(train_split, relay_shots, relay_seed)
    serving, payload = load_serving(sender_dir, receiver_dir, checkpoint, task=task, max_new_tokens=max_new_tokens,
                                    device=device, dtype=dtype, relay_demonstrations=demonstrations)
    base = _base(task_name, sender_alias, receiver_alias, bridge_name, payload, sender_dir, receiver_dir, meta,
                 {"kind": "latency", "max_new_tokens": max_new_tokens, "examples": examples, **reading})
    texts = [row["text"] for row in rows[:examples]]
    return write_rows(latency_rows(serving, texts, base, warmup), out_path)


def _base(task_name, sender_alias, receiver_alias, bridge_name, payload, sender_dir, receiver_dir, meta, request):
    content = {"bridge": payload["fingerprint"], "sender": zoo.read_manifest(sender_dir)["fingerprint"],
               "receiver": zoo.read_manifest(receiver_dir)["fingerprint"], "split": meta["content_sha256"],
               **request}
    return {"task": task_name, "sender": sender_alias, "receiver": receiver_alias, "bridge": bridge_name,
            "seed": payload["seed"], "fingerprint": fingerprint(content)}


# -- throughput --------------------------------------------------------------------------------
def throughput_rows(serving: Serving, texts: list[str], base: dict, batch_sizes=(1, 4, 16), batches: int = 2,
                    methods=METHODS) -> list[dict]:
    """Samples/s per method and batch size over `batches` batches of consecutive rows (cycling through
    `texts` if there are too few), after one warm-up batch; methods interleaved batch by batch."""
    rows = []
    for size in batch_sizes:
        plan = [[texts[(b * size + i) % len(texts)] for i in range(size)] for b in range(batches)]
        for method in methods:
            serving.run(method, plan[0], Laps(serving.device, sync=False))  # warm-up
        seconds = dict.fromkeys(methods, 0.0)
        generated = []
        for batch in plan:
            for method in methods:
                laps = Laps(serving.device, sync=False)
                generated += serving.run(method, batch, laps)
                seconds[method] += laps.finish()
        for method in methods:
            common = dict(method_base(base, method), variant=f"batch{size}", n=size * batches)
            rows.append(dict(common, metric="samples_per_second", value=size * batches / seconds[method]))
            if method == "text_relay":
                rows.append(dict(common, metric="generated_tokens", value=sum(generated) / len(generated)))
    return rows


def measure_throughput(split_path, sender_dir, receiver_dir, checkpoint, out_path, *, task_name: str, task: dict,
                       sender_alias: str, receiver_alias: str, bridge_name: str, max_new_tokens: int,
                       batch_sizes=(1, 4, 16), batches: int = 2, device, dtype, train_split=None,
                       relay_shots: int = 0, relay_seed: int = 0) -> Path:
    """Table 5: samples/s of the bridge, the receiver reading the text, and the text relay."""
    rows, meta = read_split(split_path)
    demonstrations, reading = relay_reading(train_split, relay_shots, relay_seed)
    serving, payload = load_serving(sender_dir, receiver_dir, checkpoint, task=task, max_new_tokens=max_new_tokens,
                                    device=device, dtype=dtype, relay_demonstrations=demonstrations)
    base = _base(task_name, sender_alias, receiver_alias, bridge_name, payload, sender_dir, receiver_dir, meta,
                 {"kind": "throughput", "max_new_tokens": max_new_tokens, "batch_sizes": list(batch_sizes),
                  "batches": batches, **reading})
    texts = [row["text"] for row in rows]
    return write_rows(throughput_rows(serving, texts, base, batch_sizes, batches), out_path)


# -- soft-token neighbours -------------------------------------------------------------------
def pick_rows(store: ActivationStore, examples_per_class: int, classes: int) -> list[int]:
    """Store rows of the first `examples_per_class` examples (split order) of each class, class by class."""
    order = sorted(range(len(store)), key=lambda r: int(store.example_index[r]))
    labels = store.labels.tolist()
    return [r for c in range(classes) for r in [r for r in order if labels[r] == c][:examples_per_class]]


@torch.inference_mode()
def vocabulary_neighbours(soft: torch.Tensor, embeddings: torch.Tensor, top_k: int, chunk: int = 32768):
    """Top-k cosine (M, k) and token ids (M, k) of soft tokens (M, d) among embedding rows (V, d),
    in chunks of the vocabulary (no normalised copy of the whole matrix)."""
    soft = F.normalize(soft.float(), dim=-1)
    best_scores, best_ids = None, None
    for start in range(0, embeddings.shape[0], chunk):
        block = F.normalize(embeddings[start:start + chunk].float(), dim=-1)      # (c, d)
        scores = soft @ block.T                                                    # (M, c)
        ids = torch.arange(start, start + block.shape[0]).expand_as(scores)
        if best_scores is not None:
            scores, ids = torch.cat([best_scores, scores], 1), torch.cat([best_ids, ids], 1)
        best_scores, picked = scores.topk(min(top_k, scores.shape[1]), dim=-1)
        best_ids = ids.gather(1, picked)
    return best_scores, best_ids


def _md_token(text: str) -> str:
    quoted = json.dumps(text, ensure_ascii=False).replace("|", "\\|")  # whitespace visible, no table breaks
    return f"`` {quoted} ``" if "`" in quoted else f"`{quoted}`"


def _token_text(tokenizer, token_id: int) -> str:
    """The token as text; a byte piece that decodes to nothing readable is shown raw (e.g. <0xE2>)."""
    text = tokenizer.decode([token_id])
    return tokenizer.convert_ids_to_tokens(token_id) if "\ufffd" in text or not text else text


def _md_matrix(matrix: torch.Tensor, names: list[str]) -> list[str]:
    lines = ["| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(f"{v:.3f}" for v in row) + " |" for name, row in zip(names, matrix.tolist())]
    return lines


def soft_token_neighbours(store, receiver_dir, checkpoint, out_prefix, *, task: dict, examples_per_class: int = 2,
                          top_k: int = 5, split_path=None, store_request: dict | None = None,
                          device=torch.device("cpu")) -> tuple[Path, Path]:
    """For a few eval examples per class: each soft token's top-k receiver input-vocabulary tokens by
    cosine, and the pairwise cosine of the M soft tokens. Writes <out_prefix>.md and .png."""
    import matplotlib.pyplot as plt

    from .report import STYLE  # shared plot style (and the Agg backend)

    store = ActivationStore(store, request=store_request)
    texts = [row["text"] for row in read_split(split_path)[0]] if split_path else None
    tokenizer = zoo.load_tokenizer(receiver_dir)
    model = zoo.load_model(receiver_dir, device, torch.float32)
    bridge, payload = load_bridge(checkpoint, device)
    layer = payload["config"]["source_layer"]
    embeddings = model.get_input_embeddings().weight[:len(tokenizer)]                   # (V, d_r)
    names = task.get("label_names") or [str(c) for c in range(len(task["verbalizers"]))]
    rows = pick_rows(store, examples_per_class, len(names))
    with torch.inference_mode():
        states, mask, labels = store.batch(rows, layer, torch.float32, device)
        soft = bridge(states, mask).float()                                             # (E, M, d_r)
    unit = F.normalize(soft, dim=-1)
    pairwise = unit @ unit.transpose(1, 2)                                              # (E, M, M)
    flat = F.normalize(soft.flatten(1), dim=-1)
    across = flat @ flat.T                                                              # (E, E)
    slots = [str(i) for i in range(soft.shape[1])]
    titles = [f"{names[int(y)]} #{int(store.example_index[r])}" for r, y in zip(rows, labels)]

    out_prefix = Path(out_prefix)
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    receiver_alias = zoo.read_manifest(receiver_dir)["alias"]
    lines = ["# Soft-token neighbours", "",
             f"Bridge `{Path(checkpoint).name}` ({payload['type']}, M = {soft.shape[1]}, sender layer {layer}, "
             f"seed {payload['seed']}, fingerprint `{payload['fingerprint']}`) into {receiver_alias}; "
             f"{examples_per_class} evaluation example(s) per class, the first of each class in split order "
             f"(`#` = row of the split).", "",
             f"For each soft token: the {top_k} {receiver_alias} input-vocabulary tokens (of {len(embeddings)}) "
             "with the highest cosine similarity to it (decoded, JSON-quoted; cosine after the arrow). "
             "Then the pairwise cosine of the example's soft tokens.", ""]
    for e, (row, title) in enumerate(zip(rows, titles)):
        scores, ids = vocabulary_neighbours(soft[e], embeddings, top_k)
        lines += [f"## {title}", ""]
        if texts is not None:
            lines += ["> " + texts[int(store.example_index[row])].replace("\n", " "), ""]
        lines += ["| soft token | " + " | ".join(str(k + 1) for k in range(ids.shape[1])) + " |",
                  "|---" * (ids.shape[1] + 1) + "|"]
        for slot in range(ids.shape[0]):
            cells = [f"{_md_token(_token_text(tokenizer, t))} → {s:.3f}"
                     for t, s in zip(ids[slot].tolist(), scores[slot].tolist())]
            lines.append(f"| {slot} | " + " | ".join(cells) + " |")
        off = pairwise[e][~torch.eye(len(slots), dtype=torch.bool)]
        lines += ["", f"Pairwise cosine of the soft tokens (mean off-diagonal {off.mean().item():.3f}):", ""]
        lines += _md_matrix(pairwise[e], slots) + [""]
    lines += ["## Across examples", "", "Cosine between the examples' flattened soft tokens (M x d):", ""]
    lines += _md_matrix(across, titles) + [""]
    md_path = Path(f"{out_prefix}.md")
    md_path.write_text("\n".join(lines), encoding="utf-8")

    with plt.rc_context(STYLE):
        count = len(rows)
        fig, axes = plt.subplots(1, count, figsize=(2.2 * count + 0.8, 2.6), squeeze=False, constrained_layout=True)
        for ax, matrix, title in zip(axes[0], pairwise, titles):
            image = ax.imshow(matrix.numpy(), cmap="RdBu_r", vmin=-1, vmax=1)
            ax.set_title(title)
            ax.set_xticks(range(len(slots)), slots, fontsize=6)
            ax.set_yticks(range(len(slots)), slots, fontsize=6)
        fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label="cosine")
        fig.suptitle("Pairwise cosine of the soft tokens")
        png_path = Path(f"{out_prefix}.png")
        fig.savefig(png_path, metadata={"Software": None})
        plt.close(fig)
    return md_path, png_path
