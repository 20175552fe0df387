# Config validation, target lists and wildcard constraints. Logic lives in src/interlingua.
import functools
from pathlib import Path
import json
import sys

from interlingua.config import validate_config
from interlingua.errors import InterlinguaError
from interlingua.fingerprint import file_sha256
from interlingua.tasks import mirror_path, prompt_spec


try:
    VALID = validate_config(config, base_dir=workflow.basedir)
except InterlinguaError as error:
    raise WorkflowError(f"interlingua: {error}") from None
config.update(VALID)

CLI = f"{sys.executable} -m interlingua"
STUDY = config["study"]
ALIAS = "[A-Za-z0-9][A-Za-z0-9_.-]*"


wildcard_constraints:
    model=ALIAS,
    sender=ALIAS,
    receiver=ALIAS,
    task=ALIAS,
    bridge=ALIAS,
    split="[A-Za-z0-9_-]+",
    seed="[0-9]+",


def spec(**sections):
    """JSON handed to the CLI: Snakemake reruns a job when the sections it reads change."""
    return json.dumps(sections, sort_keys=True)


def runtime():
    return config["runtime"]


def task_role(wildcards):
    """train or eval: which role a split name plays for its task."""
    splits = config["tasks"][wildcards.task]["splits"]
    for role in ("train", "eval"):
        if splits[role] == wildcards.split:
            return role
    raise WorkflowError(f"task '{wildcards.task}' has no split '{wildcards.split}' (splits: {splits})")


def task_source_spec(task, role):
    """Only what decides a split's rows: prompt edits must not re-materialize (and re-extract)."""
    keep = ("mirror", "hub_id", "hub_config", "hub_fields", "text_field", "label_field", "label_names", "subsample_seed")
    source = {key: task[key] for key in keep if key in task}
    source_file = mirror_path(task, config["paths"]["datasets"], role)
    return dict(source, splits={role: task["splits"][role]}, subsample={role: task["subsample"][role]},
                source_sha256=source_sha256(str(source_file)))


@functools.cache
def source_sha256(path):
    """Content of a mirror file, so an edited dataset reruns its task (timestamps are not triggers)."""
    return file_sha256(path) if Path(path).exists() else None


def split_name(task, role):
    return config["tasks"][task]["splits"][role]


def task_split(role):
    return lambda w: f"data/tasks/{w.task}/{split_name(w.task, role)}.jsonl"


def store(role):
    return lambda w: f"data/activations/{w.sender}/{w.task}/{split_name(w.task, role)}.zarr"


def study_results():
    """Every tidy result file the study asks for."""
    out = []
    for task in STUDY["tasks"]:
        out += [f"results/zero_shot/{model}/{task}.csv" for model in STUDY["zero_shot"]]
        for seed in STUDY["seeds"]:
            out += [f"results/prompt_tuning/{r}/{task}/seed{seed}.csv" for r in STUDY["prompt_tuning"]]
            for pair in STUDY["pairs"]:
                out += [f"results/bridge/{b}/{pair['sender']}/{pair['receiver']}/{task}/seed{seed}.csv"
                        for b in STUDY["bridges"]]
    return out
