"""Accuracy of a frozen receiver: from the text (zero-shot), from bridge soft tokens
(plus shuffled-source and zero-source controls), and from a prompt-tuned soft prompt.
Trained methods also report their trainable parameter count (metric `trainable_parameters`).

Each evaluation writes tidy rows (one per run x metric) to a CSV under results/, and beside it its
per-example predictions (`<name>.predictions.csv`, see PREDICTION_COLUMNS) for paired tests.
"""
from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from . import zoo
from .errors import DataError
from .receiver import Receiver
from .runtime import derangement
from .store import ActivationStore
from .tasks import fit_examples, read_split
from .train import load_bridge, make_prompt_embedding

COLUMNS = ["task", "method", "variant", "sender", "receiver", "bridge", "seed", "metric", "value", "n", "fingerprint"]


@torch.inference_mode()
def predict(receiver: Receiver, prompts, n: int, batch_size: int, desc: str, order=None) -> torch.Tensor:
    """Predicted class per example (in example order); prompts(rows) -> Prompt. `order` batches the
    examples in that order instead (e.g. by length, so a batch pads little)."""
    order = list(range(n)) if order is None else list(order)
    predictions = torch.empty(n, dtype=torch.long)
    for start in tqdm(range(0, n, batch_size), desc=desc, leave=False):
        rows = order[start:start + batch_size]
        predictions[rows] = receiver.class_scores(prompts(rows)).argmax(-1).cpu()
    return predictions


def predict_texts(receiver: Receiver, texts: list[str], batch_size: int, desc: str) -> torch.Tensor:
    """Predicted class per text prompt, batched by length: long inputs (BoolQ passages: 60 to 3,100
    characters) padded to their batch's longest cost twice the compute in input order."""
    order = sorted(range(len(texts)), key=lambda i: (len(texts[i]), i))
    return predict(receiver, lambda rows: receiver.text_prompt([texts[r] for r in rows]), len(texts), batch_size,
                   desc, order=order)


# Per-example predictions, written beside each result CSV (`<result stem>.predictions.csv`) so that
# methods can be compared row by row (paired tests, paired.py). `split`: the eval split's content hash
# (16 hex digits); `example`: the row's position in that materialized split (the store's example_index).
PREDICTION_COLUMNS = ["task", "method", "variant", "sender", "receiver", "bridge", "seed", "fingerprint", "split",
                      "example", "label", "predicted"]
PER_EXAMPLE = "per_example"  # key of an accuracy row that carries its predictions to write_rows


def predictions_path(result_path) -> Path:
    """results/x/y.csv -> results/x/y.predictions.csv"""
    result_path = Path(result_path)
    return result_path.with_name(result_path.stem + ".predictions.csv")


def rows_for(base: dict, predictions: torch.Tensor, labels: torch.Tensor, seconds: float, variant="", *,
             examples, split: str) -> list[dict]:
    """Accuracy and time rows of one run; the accuracy row also carries the per-example predictions
    (`examples`: each prediction's position in the eval split whose content hash is `split`), which
    write_rows writes to the predictions file (the results CSV does not show them)."""
    examples = [int(e) for e in (examples.tolist() if hasattr(examples, "tolist") else examples)]
    if len(examples) != len(labels) or len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions, {len(labels)} labels, {len(examples)} example ids")
    accuracy = int((predictions == labels).sum()) / len(labels)  # exact correct / n, not a float32 mean
    common = dict(base, variant=variant, n=len(labels))
    per_example = pd.DataFrame({"split": str(split)[:16], "example": examples, "label": labels.tolist(),
                                "predicted": predictions.tolist()})
    return [dict(common, metric="accuracy", value=accuracy, **{PER_EXAMPLE: per_example}),
            dict(common, metric="seconds_per_example", value=seconds / len(labels))]


def parameters_row(base: dict, count: int, n: int) -> dict:
    """The number of trained parameters behind a result (Table 4); n = examples of its evaluation."""
    return dict(base, variant="", n=n, metric="trainable_parameters", value=count)


def write_rows(rows: list[dict], out_path) -> Path:
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    per_example = [row[PER_EXAMPLE].assign(**{key: row[key] for key in PREDICTION_COLUMNS[:8]})
                   for row in rows if PER_EXAMPLE in row]
    if per_example:  # written first: a result file never exists without its predictions
        _write_csv(pd.concat(per_example, ignore_index=True).reindex(columns=PREDICTION_COLUMNS),
                   predictions_path(out_path))
    _write_csv(pd.DataFrame(rows).reindex(columns=COLUMNS), out_path)
    return out_path


def fit_for_receiver(receiver: Receiver, task: dict, examples: list[dict], frame: str, slots: int = 1):
    """The examples cut to the task's max_tokens for this receiver (`tasks.fit_examples`; room is kept for
    `slots` texts in `frame` and the longest verbalizer), and how many were cut."""
    return fit_examples(task, receiver.tokenizer, receiver.model.config, examples, frame=frame, slots=slots,
                        extra=max(len(ids) for ids in receiver.verbalizer_ids))


def truncated_rows(base: dict, count: int, n: int) -> list[dict]:
    """A `truncated_inputs` row (texts cut to max_tokens) when there were any; none otherwise."""
    return [dict(base, variant="", n=n, metric="truncated_inputs", value=count)] if count else []


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    frame.to_csv(tmp, index=False)
    tmp.replace(path)


def _receiver(model_dir, task, device, dtype) -> Receiver:
    return Receiver(zoo.load_model(model_dir, device, dtype), zoo.load_tokenizer(model_dir), task["verbalizers"])


def evaluate_zero_shot(split_path, model_dir, out_path, *, task_name: str, task: dict, model_alias: str,
                       batch_size: int, device, dtype) -> Path:
    examples, meta = read_split(split_path)
    receiver = _receiver(model_dir, task, device, dtype)
    examples, truncated = fit_for_receiver(receiver, task, examples, task["prompts"]["text"].format(text=""))
    labels = torch.tensor([e["label"] for e in examples])
    texts = [task["prompts"]["text"].format(text=e["text"]) for e in examples]
    started = time.perf_counter()
    predictions = predict_texts(receiver, texts, batch_size, desc=f"zero-shot {model_alias}")
    base = {"task": task_name, "method": "zero_shot", "sender": "", "receiver": model_alias, "bridge": "",
            "seed": "", "fingerprint": zoo.read_manifest(model_dir)["fingerprint"] + ":" + meta["content_sha256"][:16]}
    rows = rows_for(base, predictions, labels, time.perf_counter() - started, examples=range(len(labels)),
                    split=meta["content_sha256"])
    return write_rows(rows + truncated_rows(base, truncated, len(labels)), out_path)


def evaluate_random(split_path, out_path, *, task_name: str, task: dict, seeds: list[int]) -> Path:
    """Chance level, measured: uniform random labels (one draw per seed) against the eval labels."""
    examples, meta = read_split(split_path)
    labels = torch.tensor([e["label"] for e in examples])
    rows = []
    for seed in seeds:
        guesses = torch.randint(len(task["label_names"]), (len(labels),), generator=torch.Generator().manual_seed(seed))
        base = {"task": task_name, "method": "random", "sender": "", "receiver": "", "bridge": "", "seed": seed,
                "fingerprint": meta["content_sha256"][:16]}
        rows += rows_for(base, guesses, labels, 0.0, examples=range(len(labels)), split=meta["content_sha256"])[:1]
    return write_rows(rows, out_path)


def majority_label(labels, num_labels: int) -> int:
    """The most frequent label; a tie goes to the lowest label index (deterministic)."""
    counts = torch.bincount(torch.as_tensor(list(labels), dtype=torch.long), minlength=num_labels)
    return int(counts.argmax())  # argmax returns the first maximum


def evaluate_majority(train_path, split_path, out_path, *, task_name: str, task: dict) -> Path:
    """The majority-class baseline: every eval row gets the most frequent label of the *training* rows."""
    train, train_meta = read_split(train_path)
    examples, meta = read_split(split_path)
    label = majority_label([e["label"] for e in train], len(task["label_names"]))
    labels = torch.tensor([e["label"] for e in examples])
    base = {"task": task_name, "method": "majority", "sender": "", "receiver": "", "bridge": "", "seed": "",
            "fingerprint": train_meta["content_sha256"][:16] + ":" + meta["content_sha256"][:16]}
    return write_rows(rows_for(base, torch.full_like(labels, label), labels, 0.0, examples=range(len(labels)),
                               split=meta["content_sha256"])[:1], out_path)


@torch.inference_mode()
def soft_tokens(store: ActivationStore, bridge, source: torch.Tensor, layer: int, batch_size: int, device,
                zero: bool = False) -> torch.Tensor:
    """(N, M, d_r) soft tokens for every row; row i reads the states of row source[i] (zeros if `zero`)."""
    out = []
    for start in range(0, len(source), batch_size):
        states, mask, _ = store.batch(source[start:start + batch_size].tolist(), layer, torch.float32, device)
        out.append(bridge(torch.zeros_like(states) if zero else states, mask))
    return torch.cat(out)


def check_bridge_fits(checkpoint, payload: dict, store: ActivationStore, receiver_manifest: dict, task: dict) -> None:
    """A DataError naming every way the checkpoint does not fit this receiver, eval store and task."""
    from .train import sender_identity

    problems = []
    if payload.get("receiver") != receiver_manifest["fingerprint"]:
        problems.append(f"receiver: trained for fingerprint {payload.get('receiver')}, given "
                        f"'{receiver_manifest['alias']}' with fingerprint {receiver_manifest['fingerprint']}")
    trained = payload.get("sender")
    if trained is None:
        problems.append("the checkpoint records no sender store (written by an older version): retrain it")
    else:
        given = sender_identity(store.manifest)
        names = {"model_fingerprint": "sender model", "sender_prompt": "sender prompt", "task": "task",
                 "storage_dtype": "storage dtype", "compute_dtype": "compute dtype", "code": "extraction code"}
        problems += [f"{names[key]}: trained on {trained[key]!r}, eval store has {given[key]!r}"
                     for key in names if trained.get(key) != given.get(key)]
    layer = payload["config"]["source_layer"]
    if layer not in store.layers:
        problems.append(f"source layer: the bridge reads layer {layer}, the eval store has {store.layers}")
    if "verbalizers" in payload and list(payload["verbalizers"]) != list(task["verbalizers"]):
        problems.append(f"verbalizers: trained with {payload['verbalizers']}, given {task['verbalizers']}")
    if problems:
        raise DataError(f"{checkpoint} does not fit {store.path}: " + "; ".join(problems))


def evaluate_bridge(store_path, receiver_dir, checkpoint, out_path, *, task_name: str, task: dict, sender: str,
                    receiver_alias: str, bridge_name: str, batch_size: int, device, dtype,
                    store_request: dict | None = None) -> Path:
    """Bridge accuracy, and the same bridge fed another example's states or zeros (controls).
    The checkpoint must have been trained for this receiver and verbalizers, from a store of the same
    sender model, prompt and task as `store_path` holding its source layer (DataError naming what differs)."""
    store = ActivationStore(store_path, request=store_request)
    bridge, payload = load_bridge(checkpoint, device)
    check_bridge_fits(checkpoint, payload, store, zoo.read_manifest(receiver_dir), task)
    receiver = _receiver(receiver_dir, task, device, dtype)
    layer, instruction = payload["config"]["source_layer"], task["prompts"]["instruction"]
    labels = store.labels
    sources = {"": torch.arange(len(store)), "shuffled_source": derangement(len(store), payload["seed"])}
    base = {"task": task_name, "method": "bridge", "sender": sender, "receiver": receiver_alias,
            "bridge": bridge_name, "seed": payload["seed"], "fingerprint": payload["fingerprint"]}
    results = []
    for variant in ("", "shuffled_source", "zero_source"):
        source = sources.get(variant, sources[""])
        started = time.perf_counter()
        soft = soft_tokens(store, bridge, source, layer, batch_size, device,
                           zero=variant == "zero_source")  # (N, M, d_r)
        # Identical soft tokens get identical predictions: the receiver reads each distinct one once
        # (zero-source: usually one for the whole split). Exact, whatever the bridge.
        distinct, which = torch.unique(soft.flatten(1), dim=0, return_inverse=True)
        distinct = distinct.view(len(distinct), *soft.shape[1:])
        predicted = predict(receiver, lambda rows: receiver.soft_prompt(distinct[rows], instruction), len(distinct),
                            batch_size, desc=f"bridge {variant or 'eval'}")
        results += rows_for(base, predicted[which], labels, time.perf_counter() - started, variant,
                            examples=store.example_index, split=store.manifest["task_sha256"])
    learned = {name for name, _ in bridge.named_parameters()}  # parameters only: not the buffers (alpha, fixed maps)
    count = sum(tensor.numel() for name, tensor in payload["state_dict"].items() if name in learned)
    return write_rows(results + [parameters_row(base, count, len(labels))], out_path)


def evaluate_prompt_tuning(split_path, receiver_dir, checkpoint, out_path, *, task_name: str, task: dict,
                           receiver_alias: str, batch_size: int, device, dtype) -> Path:
    examples, meta = read_split(split_path)
    receiver = _receiver(receiver_dir, task, device, dtype)
    payload = torch.load(checkpoint, map_location=device, weights_only=False)
    prompt = make_prompt_embedding(receiver.model, payload["num_virtual_tokens"], payload["seed"])
    prompt.load_state_dict(payload["state_dict"])
    indices = torch.arange(payload["num_virtual_tokens"], device=receiver.device)
    labels = torch.tensor([e["label"] for e in examples])
    started = time.perf_counter()
    # The receiver sees the same prompt for every example (no sender): one prediction is everyone's.
    single = predict(receiver, lambda rows: receiver.soft_prompt(prompt(indices).unsqueeze(0),
                                                                 task["prompts"]["instruction"]),
                     1, 1, desc="prompt tuning eval")
    predictions = single.expand(len(examples))
    base = {"task": task_name, "method": "prompt_tuning", "sender": "", "receiver": receiver_alias, "bridge": "",
            "seed": payload["seed"], "fingerprint": payload["fingerprint"]}
    count = sum(tensor.numel() for tensor in payload["state_dict"].values())  # the M x d learned embeddings
    rows = rows_for(base, predictions, labels, time.perf_counter() - started, examples=range(len(labels)),
                    split=meta["content_sha256"])
    return write_rows(rows + [parameters_row(base, count, len(labels))], out_path)
