"""Load, validate and resolve the one config (params.yaml plus optional overrides).

Validation fills the schema defaults, then checks what a schema cannot express
(aliases referenced by the study exist, bridge layers were extracted, a task's lists
agree in length and its text template is usable), so every
mistake is reported before any heavy work, with the key that is wrong.
"""
from __future__ import annotations

import copy
import functools
import json
import os
import struct
from importlib.resources import files
from pathlib import Path

import jsonschema
import yaml

from .errors import ConfigError
from .tasks import field_root, template_fields

SCHEMA_PATH = Path(str(files("interlingua").joinpath("schemas/config.schema.yaml")))
DATASETS_ENV = "INTERLINGUA_DATASETS"


def _with_defaults(validator_class):
    """A validator that also writes `default` values into the instance (as Snakemake's validate does)."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


_Validator = _with_defaults(jsonschema.Draft202012Validator)


def load_schema() -> dict:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def _key_path(error: jsonschema.ValidationError) -> str:
    parts = [f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path]
    return "".join(parts).lstrip(".") or "<top level>"


def deep_merge(base: dict, override: dict) -> dict:
    """Dicts merge recursively, everything else is replaced (Snakemake's --configfile semantics)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return data


def load_config(*paths: str | Path, base_dir: str | Path | None = None) -> dict:
    """Read and merge config files in order, then validate (see `validate_config`)."""
    merged: dict = {}
    for path in paths:
        merged = deep_merge(merged, read_yaml(path))
    return validate_config(merged, base_dir=base_dir or Path(paths[0]).resolve().parent)


def validate_config(config: dict, base_dir: str | Path = ".") -> dict:
    """Return a validated copy with defaults filled and paths resolved; raise ConfigError otherwise."""
    config = copy.deepcopy(dict(config))
    errors = sorted(_Validator(load_schema()).iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        first = errors[0]
        more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        raise ConfigError(f"config key '{_key_path(first)}': {first.message}{more}")
    _check_references(config)
    _check_depths(config, base_dir)
    config["paths"]["datasets"] = str(resolve_datasets_dir(config, base_dir))
    return config


def resolve_datasets_dir(config: dict, base_dir: str | Path) -> Path:
    mirror = os.environ.get(DATASETS_ENV) or config["paths"]["datasets"]
    path = Path(mirror)
    return path if path.is_absolute() else (Path(base_dir) / path).resolve()


def _require(kind: str, name: str, known: dict, key: str) -> None:
    if name not in known:
        choices = ", ".join(sorted(known)) or "none defined"
        raise ConfigError(f"config key '{key}': unknown {kind} '{name}' (known: {choices})")


def _check_references(config: dict) -> None:
    study = config["study"]
    models, tasks, bridges = config["models"], config["tasks"], config["bridges"]
    for i, task in enumerate(study["tasks"]):
        _require("task", task, tasks, f"study.tasks[{i}]")
    for i, pair in enumerate(study["pairs"]):
        for role in ("sender", "receiver"):
            _require("model alias", pair[role], models, f"study.pairs[{i}].{role}")
        for j, task in enumerate(pair.get("tasks", [])):
            _require("task of study.tasks", task, dict.fromkeys(study["tasks"]), f"study.pairs[{i}].tasks[{j}]")
    config["few_shot"].setdefault("seeds", list(study["seeds"]))
    for i, name in enumerate(study["bridges"]):
        _require("bridge", name, bridges, f"study.bridges[{i}]")
    study.setdefault("zero_shot", sorted({m for p in study["pairs"] for m in (p["sender"], p["receiver"])}))
    study.setdefault("few_shot", list(study["zero_shot"]))
    study.setdefault("prompt_tuning", sorted({p["receiver"] for p in study["pairs"]}))
    for key in ("zero_shot", "few_shot", "prompt_tuning"):
        for i, model in enumerate(study[key]):
            _require("model alias", model, models, f"study.{key}[{i}]")
    for i, name in enumerate(study["ablation"]["bridges"] if study["ablation"]["tasks"] else []):
        _require("bridge", name, bridges, f"study.ablation.bridges[{i}]")
    for section in ("ablation", "token_scaling", "hyperparameters", "same_model", "finetune", "speed", "neighbours"):
        for i, task in enumerate(study[section]["tasks"]):
            _require("task", task, tasks, f"study.{section}.tasks[{i}]")
    for name, task in tasks.items():
        _check_task(name, task)
    _check_runs(config)


def _check_runs(config: dict) -> None:
    """Every bridge run resolves to a valid bridge config (sweep values and task overrides included)."""
    from .bridges import bridge_config
    from .study import bridge_runs, run_settings

    for run in bridge_runs(config):
        spec, _ = run_settings(config, run["bridge"], run["task"])
        bridge_config(run["bridge"], spec, sender_dim=1, receiver_dim=1)  # unknown options are named


def _check_task(name: str, task: dict) -> None:
    key = f"tasks.{name}"
    n_labels = len(task["label_names"])
    for list_key in ("verbalizers", "label_values"):
        if list_key in task and len(task[list_key]) != n_labels:
            raise ConfigError(f"config key '{key}.{list_key}': {len(task[list_key])} {list_key} "
                              f"for {n_labels} label_names")
    duplicates = sorted({v for v in task["verbalizers"] if task["verbalizers"].count(v) > 1})
    if duplicates:
        raise ConfigError(f"config key '{key}.verbalizers': {duplicates} appear more than once "
                          "(the receiver could not tell those labels apart)")
    if ("text_field" in task) == ("text_template" in task):
        raise ConfigError(f"config key '{key}': give exactly one of text_field (one field of the row) "
                          "or text_template (a str.format template over the row)")
    if "text_template" in task:
        _check_template(f"{key}.text_template", task["text_template"])
    _check_splits(key, task)


def _check_template(key: str, template: str) -> None:
    try:
        fields = template_fields(template)
    except ValueError as exc:
        raise ConfigError(f"config key '{key}': not a valid str.format template ({exc}); "
                          "write a literal brace as {{ or }}") from None
    if not fields:
        raise ConfigError(f"config key '{key}': the template names no field, e.g. {{question}}")
    for field in fields:
        if not field_root(field) or field_root(field).isdigit():
            raise ConfigError(f"config key '{key}': field {{{field}}} is positional; name a field of the row")
        if "." in field:  # attribute access would reach Python objects, not the JSON row
            raise ConfigError(f"config key '{key}': field {{{field}}} uses attribute access; "
                              "index instead, e.g. {choices[text][0]}")


def _check_splits(key: str, task: dict) -> None:
    """Each role needs its own split name (files are named by it) and its own rows."""
    splits = task["splits"]
    if splits["train"] == splits["eval"]:
        raise ConfigError(f"config key '{key}.splits': train and eval are both '{splits['train']}'; "
                          "materialized files are named by split, so give the roles distinct names")
    per_split = "{split}" in task["mirror"]
    if "holdout" in task and per_split:
        raise ConfigError(f"config key '{key}.mirror': with holdout, mirror names the one source file "
                          f"that is split in two; drop {{split}} from '{task['mirror']}'")
    if "holdout" not in task and not per_split:
        raise ConfigError(f"config key '{key}.mirror': '{task['mirror']}' has no {{split}}, so train and "
                          "eval would read the same rows; add {split} or set holdout to split the file")
    if "holdout" in task and "hub_id" in task:
        raise ConfigError(f"config key '{key}.hub_id': the hub fallback reads hub splits by name, which "
                          "cannot reproduce a holdout of the mirror file; remove hub_id or holdout")


# --- layers within the sender's depth, checked before any model is built ---------------------------

def _check_depths(config: dict, base_dir: str | Path) -> None:
    """Every layer a sender is asked for (extract.layers, each bridge run's source_layer) exists, for
    each sender whose depth is knowable without loading it (`model_depth`); extraction checks the
    others from the model's config before the model runs."""
    from .study import bridge_runs, parse_variant, run_settings, senders

    depths = {alias: model_depth(alias, config["models"][alias], base_dir) for alias in senders(config)}
    for alias, depth in depths.items():
        for i, layer in enumerate(config["extract"]["layers"]):
            if depth is not None and layer > depth:
                raise ConfigError(f"config key 'extract.layers[{i}]': layer {layer} is beyond sender '{alias}', "
                                  f"which has {depth} blocks (layers 0 = embeddings to {depth})")
    for run in bridge_runs(config):
        depth = depths.get(run["sender"])
        spec, _ = run_settings(config, run["bridge"], run["task"])
        layer = spec.get("source_layer")
        if depth is None or layer is None or layer <= depth:
            continue
        base, changes = parse_variant(run["bridge"])
        if "source_layer" in changes:
            key = "study.hyperparameters.sweep.source_layer"
        elif "source_layer" in config["tasks"][run["task"]].get("overrides", {}).get("bridge", {}):
            key = f"tasks.{run['task']}.overrides.bridge.source_layer"
        else:
            key = f"bridges.{base}.source_layer"
        raise ConfigError(f"config key '{key}': layer {layer} is beyond sender '{run['sender']}' (bridge run "
                          f"{run['bridge']} on {run['task']}), which has {depth} blocks (layers 0 to {depth})")


def model_depth(alias: str, spec: dict, base_dir: str | Path = ".") -> int | None:
    """A model's number of blocks when knowable without loading it: a random model's config, a
    materialized copy of the same source (data/models/<alias>), or a GGUF package's header. None else."""
    if "random" in spec:
        depth = spec["random"].get("num_hidden_layers")
        if depth is None:
            from transformers import AutoConfig
            depth = AutoConfig.for_model(spec["random"]["model_type"]).num_hidden_layers
        return depth
    for root in dict.fromkeys([Path(base_dir), Path.cwd()]):
        model_dir = root / "data/models" / alias
        try:
            manifest = json.loads((model_dir / "interlingua_model.json").read_text())
            model_config = json.loads((model_dir / "config.json").read_text())
        except (OSError, ValueError):
            continue
        if manifest.get("source") == spec:
            depth = model_config.get("num_hidden_layers") or model_config.get("text_config", {}).get("num_hidden_layers")
            if depth:
                return depth
    if "gguf_package" in spec:
        return _gguf_depth(spec["gguf_package"], spec.get("gguf_file"))
    return None


@functools.lru_cache(maxsize=None)
def _gguf_depth(package: str, filename: str | None) -> int | None:
    from .zoo import locate_gguf
    try:
        return gguf_block_count(locate_gguf(package, filename))
    except Exception:  # not installed, unreadable: extraction checks the depth before the model runs
        return None


_GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


def gguf_block_count(path: str | Path) -> int | None:
    """`<architecture>.block_count` from a GGUF file's key-value header, read up to that key only
    (the model parameters come before the tokenizer's long arrays): a fraction of a millisecond."""
    with open(path, "rb") as handle:
        def read(fmt):
            return struct.unpack("<" + fmt, handle.read(struct.calcsize("<" + fmt)))[0]

        def skip_value(kind):
            if kind in _GGUF_SCALARS:
                handle.seek(struct.calcsize("<" + _GGUF_SCALARS[kind]), 1)
            elif kind == 8:
                handle.seek(read("Q"), 1)
            elif kind == 9:
                item, count = read("I"), read("Q")
                if item in _GGUF_SCALARS:
                    handle.seek(struct.calcsize("<" + _GGUF_SCALARS[item]) * count, 1)
                else:
                    for _ in range(count):
                        skip_value(item)
            else:
                raise ValueError(f"unknown GGUF value type {kind}")

        if handle.read(4) != b"GGUF":
            return None
        read("I"), read("Q")  # version, tensor count
        for _ in range(read("Q")):
            key = handle.read(read("Q")).decode("utf-8", "replace")
            kind = read("I")
            if key.endswith(".block_count") and kind in _GGUF_SCALARS:
                return int(read(_GGUF_SCALARS[kind]))
            skip_value(kind)
    return None
