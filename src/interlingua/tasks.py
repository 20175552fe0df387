"""Task registry: a config entry says where a task's data lives and how to prompt for it.

Rows are read from the local mirror (`<datasets>/<mirror with {split}>`), else from the
hub dataset id. Materializing a split validates every row, takes the seeded subsample,
and writes `data/tasks/<task>/<role>.jsonl` plus a meta file with its content hash.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

from .errors import DataError
from .fingerprint import file_sha256

ROLES = ("train", "eval")


def mirror_path(task: dict, datasets_dir: str | Path, role: str) -> Path:
    return Path(datasets_dir) / task["mirror"].format(split=task["splits"][role])


def read_jsonl(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{number}: malformed JSON line ({exc.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
    return rows


def _read_hub(task: dict, role: str, missing: Path) -> list[dict]:
    import datasets

    split = task["splits"][role]
    try:
        data = datasets.load_dataset(task["hub_id"], task.get("hub_config"), split=split)
    except Exception as exc:  # offline, unknown id, unknown split ...
        raise DataError(f"dataset file not found: {missing}, and the fallback hub dataset "
                        f"'{task['hub_id']}' split '{split}' could not be loaded: {exc}") from None
    # Hub copies may name fields differently from the mirror (SST-2: sentence vs text).
    renames = {hub: ours for ours, hub in task.get("hub_fields", {}).items()}
    return [{renames.get(k, k): v for k, v in row.items()} for row in data]


def load_rows(name: str, task: dict, datasets_dir: str | Path, role: str) -> tuple[list[dict], str]:
    """Rows of one split role and a description of where they came from."""
    path = mirror_path(task, datasets_dir, role)
    if path.exists():
        rows, origin = read_jsonl(path), str(path)
    elif task.get("hub_id"):
        rows, origin = _read_hub(task, role, path), f"hub:{task['hub_id']}"
    else:
        raise DataError(
            f"task '{name}': dataset file not found: {path} (set paths.datasets or "
            f"INTERLINGUA_DATASETS to the mirror directory, or give tasks.{name}.hub_id)"
        )
    validate_rows(name, task, rows, origin)
    return rows, origin


def validate_rows(name: str, task: dict, rows: list[dict], origin: str) -> None:
    if not rows:
        raise DataError(f"task '{name}': split is empty: {origin}")
    n_labels = len(task["label_names"])
    for index, row in enumerate(rows):
        where = f"{origin}:{index + 1}" if not origin.startswith("hub:") else f"{origin} row {index}"
        for field in (task["text_field"], task["label_field"]):
            if field not in row:
                raise DataError(f"{where}: missing field '{field}'")
        label = row[task["label_field"]]
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < n_labels:
            raise DataError(
                f"{where}: label {label!r} is outside the label list {task['label_names']} "
                f"(expected an integer 0..{n_labels - 1})"
            )
        if not isinstance(row[task["text_field"]], str) or not row[task["text_field"]].strip():
            raise DataError(f"{where}: field '{task['text_field']}' is empty or not a string")


def subsample(rows: list[dict], size: int | None, seed: int) -> list[int]:
    """Indices of a seeded subset, kept in the original order (all rows when size is None)."""
    if size is None or size >= len(rows):
        return list(range(len(rows)))
    return sorted(random.Random(seed).sample(range(len(rows)), size))


def materialize_split(name: str, task: dict, datasets_dir: str | Path, role: str, out_path: str | Path,
                      request: dict | None = None) -> dict:
    """Write the validated, subsampled split as {index, text, label} lines; return its meta."""
    rows, origin = load_rows(name, task, datasets_dir, role)
    keep = subsample(rows, task["subsample"].get(role), task["subsample_seed"])
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        for index in keep:
            row = rows[index]
            record = {"index": index, "text": row[task["text_field"]], "label": row[task["label_field"]]}
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    tmp.replace(out_path)
    meta = {"task": name, "role": role, "split": task["splits"][role], "origin": origin,
            "rows": len(keep), "source_rows": len(rows), "content_sha256": file_sha256(out_path)}
    if request is not None:
        meta["request"] = request  # lets the workflow tell a current split from a stale one
    meta_path(out_path).write_text(json.dumps(meta, indent=2))
    return meta


def meta_path(split_path: str | Path) -> Path:
    return Path(split_path).with_suffix(".meta.json")


def read_split(split_path: str | Path) -> tuple[list[dict], dict]:
    """A materialized split and its meta (content hash)."""
    split_path = Path(split_path)
    return read_jsonl(split_path), json.loads(meta_path(split_path).read_text())


def prompt_spec(task: dict) -> dict:
    """The parts of a task that decide what models see (part of every downstream fingerprint)."""
    return {k: task[k] for k in ("label_names", "verbalizers", "prompts")}
