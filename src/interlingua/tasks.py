"""Task registry: a config entry says where a task's data lives and how to prompt for it.

Rows are read from the local mirror (`<datasets>/<mirror with {split}>`), else from the
hub dataset id. A task whose source has one labelled file only (BoolQ, PIQA) names that file
in `mirror` and sets `holdout`, which partitions it deterministically into train and eval rows.
Materializing a split validates every row, renders its text (`text_field`, or `text_template`
over the raw row), maps its label (an index, or through `label_values`), takes the seeded
subsample, and writes `data/tasks/<task>/<split>.jsonl` as {index, text, label} lines (index =
row number in the source file; `parts` too when the task names some, e.g. BoolQ's question alone)
plus a meta file with its content hash.

A train row whose text is also an eval text of the task (after lower-casing and collapsing
whitespace, `normalise`) is dropped before the subsample, against the whole eval split (not only
its subsample), so no eval row can ever be a training row; the meta file counts them.

Model jobs read at most `max_tokens` tokens of a row's text (in the reading model's tokenizer,
bounded by the model's positions): `fit_texts` cuts longer texts and counts them.
"""
from __future__ import annotations

import hashlib
import json
import random
import re
import string
from pathlib import Path

from .errors import DataError
from .fingerprint import file_sha256

ROLES = ("train", "eval")
DEFAULT_MAX_TOKENS = 2048  # tasks.<t>.max_tokens when a task dict was not validated (the schema's default)
_FORMATTER = string.Formatter()


def mirror_path(task: dict, datasets_dir: str | Path, role: str) -> Path:
    return Path(datasets_dir) / task["mirror"].format(split=task["splits"][role])


def read_jsonl(path: Path) -> list[dict]:
    rows = []
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"{path}:{number}: not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column "
                                f"{exc.start + 1}); re-encode the file as UTF-8") from None
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
    """Every source row of one split role as {text, label}, and a description of where they came from."""
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
    return examples(name, task, rows, origin), origin


def examples(name: str, task: dict, rows: list[dict], origin: str) -> list[dict]:
    """Validate every row and turn it into {text, label}; errors name the row and the field."""
    if not rows:
        raise DataError(f"task '{name}': split is empty: {origin}")
    out = []
    for index, row in enumerate(rows):
        where = f"{origin}:{index + 1}" if not origin.startswith("hub:") else f"{origin} row {index}"
        example = {"text": row_text(task, row, where), "label": row_label(task, row, where)}
        if task.get("parts"):
            example["parts"] = {name: render_template(template, row, where, f"parts.{name}")
                                for name, template in task["parts"].items()}
        out.append(example)
    return out


# --- text: one field, or a str.format template over the raw row ---------------------------------

def template_fields(template: str) -> list[str]:
    """Replacement fields of a str.format template, e.g. ['question', 'choices[text][0]'].

    Raises ValueError when the template is malformed (an unmatched brace).
    """
    return [field for _, field, _, _ in _FORMATTER.parse(template) if field is not None]


def field_root(field: str) -> str:
    """The row key a template field starts from: 'choices[text][0]' -> 'choices'."""
    return re.split(r"[.\[]", field, maxsplit=1)[0]


def _is_text(value) -> bool:
    return isinstance(value, str) and bool(value.strip())


def row_text(task: dict, row: dict, where: str) -> str:
    if "text_template" not in task:
        field = task["text_field"]
        if field not in row:
            raise DataError(f"{where}: missing field '{field}'")
        if not _is_text(row[field]):
            raise DataError(f"{where}: field '{field}' is empty or not a string")
        return row[field]
    return render_template(task["text_template"], row, where)


def render_template(template: str, row: dict, where: str, key: str = "text_template") -> str:
    """A str.format template over a raw row (text_template, or a part); every field a non-empty string."""
    # Check each field first, so a bad row names the field rather than failing inside format().
    for field in template_fields(template):
        if field_root(field) not in row:
            raise DataError(f"{where}: missing field '{field_root(field)}' (used by {key} as {{{field}}})")
        try:
            value, _ = _FORMATTER.get_field(field, (), row)
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            raise DataError(f"{where}: {key} field '{field}' cannot be looked up in this row "
                            f"({type(exc).__name__}: {exc})") from None
        if not _is_text(value):
            raise DataError(f"{where}: field '{field}' is empty or not a string")
    return template.format_map(row)


# --- label: an integer index, or a raw value looked up in label_values --------------------------

def row_label(task: dict, row: dict, where: str) -> int:
    field = task["label_field"]
    if field not in row:
        raise DataError(f"{where}: missing field '{field}'")
    label = row[field]
    if "label_values" in task:
        return _label_index(task["label_values"], label, field, where)
    n_labels = len(task["label_names"])
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < n_labels:
        raise DataError(
            f"{where}: label {label!r} is outside the label list {task['label_names']} "
            f"(expected an integer 0..{n_labels - 1})"
        )
    return label


def _label_index(values: list, label, field: str, where: str) -> int:
    for index, value in enumerate(values):
        if type(value) is type(label) and value == label:  # type too: JSON true is not 1
            return index
    raise DataError(f"{where}: label {json.dumps(label, default=repr)} in field '{field}' is not one of "
                    f"label_values {json.dumps(values)}")


# --- which source rows a role gets ---------------------------------------------------------------

def holdout_order(n_rows: int, seed: int) -> list[int]:
    """Row numbers ranked by sha256("<seed>:<row>"): the same on every machine and Python version."""
    return sorted(range(n_rows), key=lambda row: hashlib.sha256(f"{seed}:{row}".encode()).digest())


def holdout_rows(name: str, holdout: dict, n_rows: int, role: str) -> list[int]:
    """Rows of `role` when one file serves both roles: the first eval_rows of the ranking are eval."""
    eval_rows = holdout["eval_rows"]
    if not 0 < eval_rows < n_rows:
        raise DataError(f"task '{name}': holdout.eval_rows = {eval_rows} must be between 1 and "
                        f"{n_rows - 1} (the source has {n_rows} rows; the rest are training rows)")
    order = holdout_order(n_rows, holdout.get("seed", 0))
    return sorted(order[:eval_rows] if role == "eval" else order[eval_rows:])


def subsample(rows: list, size: int | None, seed: int) -> list[int]:
    """Indices of a seeded subset, kept in the original order (all rows when size is None)."""
    if size is None or size >= len(rows):
        return list(range(len(rows)))
    return sorted(random.Random(seed).sample(range(len(rows)), size))


def role_candidates(name: str, task: dict, n_rows: int, role: str) -> list[int]:
    """Source row numbers of `role` before the subsample: its holdout part, or the whole file."""
    return holdout_rows(name, task["holdout"], n_rows, role) if "holdout" in task else list(range(n_rows))


def role_rows(name: str, task: dict, n_rows: int, role: str, exclude=()) -> list[int]:
    """Source row numbers materialized for `role`: its holdout part (if any) without the rows in
    `exclude`, then the subsample."""
    excluded = set(exclude)
    candidates = [i for i in role_candidates(name, task, n_rows, role) if i not in excluded]
    picked = subsample(candidates, task["subsample"].get(role), task["subsample_seed"])
    return [candidates[i] for i in picked]


def normalise(text: str) -> str:
    """What two texts must share to count as the same example: lower case, whitespace collapsed."""
    return " ".join(text.lower().split())


def eval_texts(name: str, task: dict, datasets_dir: str | Path, rows: list[dict] | None = None) -> set[str]:
    """Normalised texts of the task's whole eval split (`rows`: the already loaded file, with holdout)."""
    if "holdout" in task:
        if rows is None:
            rows, _ = load_rows(name, task, datasets_dir, "eval")
        return {normalise(rows[i]["text"]) for i in role_candidates(name, task, len(rows), "eval")}
    rows, _ = load_rows(name, task, datasets_dir, "eval")
    return {normalise(row["text"]) for row in rows}


def eval_overlap(name: str, task: dict, datasets_dir: str | Path, rows: list[dict]) -> list[int]:
    """Train-role row numbers of `rows` whose normalised text is also an eval text (to be dropped)."""
    texts = eval_texts(name, task, datasets_dir, rows)
    return [i for i in role_candidates(name, task, len(rows), "train") if normalise(rows[i]["text"]) in texts]


def materialize_split(name: str, task: dict, datasets_dir: str | Path, role: str, out_path: str | Path,
                      request: dict | None = None) -> dict:
    """Write the validated, subsampled split as {index, text, label} lines; return its meta. The train
    role needs `task["splits"]["eval"]` too: rows whose text is an eval text are dropped first."""
    rows, origin = load_rows(name, task, datasets_dir, role)
    overlap = eval_overlap(name, task, datasets_dir, rows) if role == "train" else []
    keep = role_rows(name, task, len(rows), role, exclude=overlap)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        for index in keep:
            record = {"index": index, "text": rows[index]["text"], "label": rows[index]["label"]}
            if "parts" in rows[index]:   # named pieces of the row (e.g. BoolQ's question), for study 3's prompts
                record["parts"] = rows[index]["parts"]
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    tmp.replace(out_path)
    meta = {"task": name, "role": role, "split": task["splits"][role], "origin": origin,
            "rows": len(keep), "source_rows": len(rows), "content_sha256": file_sha256(out_path)}
    if role == "train":
        # Dropped before the subsample, so the split keeps its size; counted among the source rows.
        meta["eval_overlap_dropped"] = len(overlap)
        meta["eval_overlap_rule"] = "text equal to an eval text after lower-casing and collapsing whitespace"
    if "holdout" in task:
        meta["holdout"] = task["holdout"]
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
    return {k: task[k] for k in ("label_names", "verbalizers", "prompts", "max_tokens") if k in task}


# --- how much of a text a model reads -------------------------------------------------------------

def token_budget(tokenizer, max_tokens: int, max_positions: int | None, frame: str | list[int] = "",
                 slots: int = 1, extra: int = 0, where: str = "") -> int:
    """Tokens of one input text a model job reads: `max_tokens` (tasks.<t>.max_tokens), bounded so that
    `slots` texts inside `frame` (the job's prompt with empty texts, specials included) plus `extra`
    tokens (verbalizer, generated tokens) fit the model's `max_positions`. `frame` may be token ids."""
    budget = max_tokens
    if max_positions:
        frame_tokens = len(frame if isinstance(frame, list) else tokenizer(frame, add_special_tokens=True)["input_ids"])
        budget = min(budget, (max_positions - frame_tokens - extra) // slots)
        if budget < 1:
            raise DataError(f"{where or 'prompt'}: the prompt around the text ({frame_tokens} tokens, +{extra}) "
                            f"leaves no room for it within the model's {max_positions} positions")
    return budget


def truncate_text(tokenizer, text: str, max_tokens: int) -> tuple[str, bool]:
    """The longest prefix of `text` the tokenizer reads as at most `max_tokens` tokens (no specials),
    and whether it was cut. Cut on a token boundary of the original string (offsets), never inside
    a character."""
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=tokenizer.is_fast)
    ids = encoded["input_ids"]
    if len(ids) <= max_tokens:
        return text, False
    if tokenizer.is_fast:
        cut = text[:encoded["offset_mapping"][max_tokens - 1][1]]
    else:
        cut = tokenizer.decode(ids[:max_tokens])
    # Tokens can merge differently at the new end: shorten until the prefix fits.
    while cut and len(tokenizer(cut, add_special_tokens=False)["input_ids"]) > max_tokens:
        cut = cut[:-1]
    return cut, True


def fit_texts(tokenizer, examples: list[dict], max_tokens: int) -> tuple[list[dict], int]:
    """The examples with each text cut to `max_tokens` tokens (`truncate_text`), and how many were cut."""
    if not examples:
        return [], 0
    lengths = [len(ids) for ids in tokenizer([e["text"] for e in examples], add_special_tokens=False)["input_ids"]]
    out, cut = [], 0
    for example, length in zip(examples, lengths):
        if length > max_tokens:
            example = dict(example, text=truncate_text(tokenizer, example["text"], max_tokens)[0])
            cut += 1
        out.append(example)
    return out, cut


def fit_examples(task: dict, tokenizer, model_config, examples: list[dict], frame: str | list[int] = "", slots: int = 1,
                 extra: int = 0, where: str = "tasks.<task>.max_tokens") -> tuple[list[dict], int]:
    """What every model job reading task texts calls: the examples cut to the job's token budget
    (`token_budget` with the task's max_tokens and the model's positions), and how many were cut."""
    budget = token_budget(tokenizer, max_tokens(task), max_positions(model_config), frame, slots, extra,
                          where=where)
    return fit_texts(tokenizer, examples, budget)


def max_tokens(task: dict) -> int:
    return task.get("max_tokens", DEFAULT_MAX_TOKENS)


def max_positions(model_config) -> int | None:
    """The positions a model reads (None when its config does not say)."""
    return getattr(model_config, "max_position_embeddings", None)
