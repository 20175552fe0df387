# Config validation, target lists and wildcard constraints. Logic lives in src/interlingua.
import functools
from pathlib import Path
import json
import sys

from interlingua.config import validate_config
from interlingua.errors import InterlinguaError
from interlingua.fingerprint import file_sha256, fingerprint
from interlingua.sources import code_hash
from interlingua import study as study_plan
from interlingua.studies.dense_kv import plan as dense_kv_plan
from interlingua.studies.kv_alignment import plan as kv_alignment_plan
from interlingua.tasks import mirror_path, prompt_spec
from interlingua.zoo import source_files


try:
    VALID = validate_config(config, base_dir=workflow.basedir)
    kv_alignment_plan.check(VALID)
    dense_kv_plan.check(VALID)
except InterlinguaError as error:
    raise WorkflowError(f"interlingua: {error}") from None
config.update(VALID)

CLI = f"{sys.executable} -m interlingua"
STUDY = config["study"]
ALIAS = "[A-Za-z0-9][A-Za-z0-9_.-]*"
# Reruns are decided by content, not timestamps (DVC does not keep them, so a teammate's
# `dvc pull` must not make anything look stale; Snakemake 9 compares input and output times whatever
# --rerun-triggers says). Each job's params carry everything upstream that decides its inputs (model
# files, data hashes, extraction and training requests) and the hash of the package code it runs
# (`code`, see code()); every input produced by the workflow is ancient() while it is current, so its
# timestamp cannot trigger anything. Current: a model, task split or store whose receipt records the
# current request (unless_stale); any other file whose writer's recorded params are today's or, on a
# fresh clone after `dvc pull`, not recorded (unless_rerun). A file about to be rewritten is a plain
# input, so its readers rerun in the same invocation (Snakemake does not check the params of jobs
# downstream of a rerun, and would skip them behind an ancient input).


wildcard_constraints:
    model=ALIAS,
    sender=ALIAS,
    receiver=ALIAS,
    task=ALIAS,
    # a bridge name or sweep variant (perceiver~num_queries=16); never a baseline's folder
    bridge="(?!(?:finetune|prompt_tuning)/)" + ALIAS + "(~[a-z_]+=[A-Za-z0-9_.+-]+)*",
    method="lora|finetune_last[0-9]+",
    mode="text_relay|cot_relay",
    split="[A-Za-z0-9_-]+",
    seed="[0-9]+",


def spec(**sections):
    """JSON handed to the CLI: Snakemake reruns a job when the sections it reads change."""
    return json.dumps(sections, sort_keys=True)


@functools.cache
def code(command):
    """The `code` param of a job running `interlingua <command>`: a hash of the package modules that
    command reaches (static analysis of names and imports, interlingua/sources.py). Editing
    bridges/perceiver.py changes it for bridge training, not for extraction or the text baselines."""
    return code_hash(command)


def config_fingerprint():
    """The whole validated config, as figures/README.md records it."""
    return fingerprint(json.loads(json.dumps(config, default=str)))


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
    keep = ("mirror", "hub_id", "hub_config", "hub_fields", "text_field", "text_template", "parts", "label_field",
            "label_values", "label_names", "holdout", "subsample_seed")
    source = {key: task[key] for key in keep if key in task}
    source_file = mirror_path(task, config["paths"]["datasets"], role)
    request = dict(source, splits={role: task["splits"][role]}, subsample={role: task["subsample"][role]},
                   source_sha256=source_sha256(str(source_file)), code=code("materialize-task"))
    if role == "train":  # train rows that are eval texts are dropped: the eval split decides them too
        request["splits"] = dict(task["splits"])
        if "holdout" not in task:
            request["eval_source_sha256"] = source_sha256(str(mirror_path(task, config["paths"]["datasets"], "eval")))
    return request


@functools.cache
def source_sha256(path):
    """Content of a mirror file, so an edited dataset reruns its task (timestamps are not triggers)."""
    return file_sha256(path) if Path(path).exists() else None


def mirror_input(wildcards):
    """The role's mirror file, and for the train role the eval file too (its texts are dropped from train)."""
    task, role = config["tasks"][wildcards.task], task_role(wildcards)
    paths = {mirror_path(task, config["paths"]["datasets"], r) for r in (["train", "eval"] if role == "train" else [role])}
    return sorted(str(path) for path in paths if path.exists())


@functools.cache
def _model_request(alias):
    entry = config["models"][alias]
    if "continued" in entry:   # the base's whole request and the corpus files' hashes decide it
        from interlingua.continued import corpus_files

        base = entry["continued"]["base"]
        if base not in config["models"] or base == alias:
            raise WorkflowError(f"models.{alias}.continued.base: '{base}' is not another model alias")
        mirror = Path(config["paths"]["datasets"])
        files = {"base": _model_request(base),
                 "corpus": {rel: file_sha256(mirror / rel) if (mirror / rel).is_file() else None
                            for rel in corpus_files(entry["continued"].get("corpus", "wikitext"))}}
        return {**entry, "files": files, "code": code("materialize-model")}
    return {**entry, "files": source_files(entry), "code": code("materialize-model")}


def model_request(alias):
    """A model's config entry, what it loads (package RECORD hashes, hub commit, directory hash: a new
    package version rematerializes it) and the loading code. Recorded as the model's `source`."""
    return json.loads(json.dumps(_model_request(alias)))


def task_request(task, role):
    return task_source_spec(config["tasks"][task], role)


def extract_request(sender, task, role):
    """What decides a store's contents (batch and shard sizes do not)."""
    ex = config["extract"]
    return {"model": model_request(sender), "task": task_request(task, role), "runtime": runtime(),
            "sender_prompt": config["tasks"][task]["prompts"]["sender"], "code": code("extract"),
            "max_tokens": config["tasks"][task]["max_tokens"],
            "extract": {"layers": study_plan.extract_layers(config, sender, task),
                        **{k: ex[k] for k in ("storage_dtype", "kv_cache")}}}


def bridge_request(w):
    bridge, train = study_plan.run_settings(config, w.bridge, w.task)
    return {"runtime": runtime(), "bridge": bridge, "train": train,
            "task": prompt_spec(config["tasks"][w.task]), "receiver": model_request(w.receiver),
            "store": extract_request(w.sender, w.task, "train"), "seed": w.seed, "code": code("train-bridge")}


def prompt_tuning_request(w):
    return {"runtime": runtime(), "train": study_plan.task_train(config, w.task),
            "prompt_tuning": config["prompt_tuning"], "task": prompt_spec(config["tasks"][w.task]),
            "receiver": model_request(w.receiver), "data": task_request(w.task, "train"), "seed": w.seed,
            "code": code("train-prompt-tuning")}


def finetune_request(w):
    return {"runtime": runtime(), "train": study_plan.task_train(config, w.task),
            "finetune": study_plan.finetune_spec(config, w.method), "task": prompt_spec(config["tasks"][w.task]),
            "receiver": model_request(w.receiver), "data": task_request(w.task, "train"), "seed": w.seed,
            "code": code("train-finetune")}


def relay_request(w):
    """What decides a relay file: the sender, the eval rows, the prompts and the generation budget."""
    return {"runtime": runtime(), "task": prompt_spec(config["tasks"][w.task]), "model": model_request(w.sender),
            "data": task_request(w.task, "eval"), "relay": relay_generation(),
            "batch_size": config["evaluate"]["batch_size"], "code": code("generate-relay")}


def relay_generation():
    """The relay settings of generation (not `shots`: how the receiver reads it, see eval_relay)."""
    return {key: value for key, value in config["relay"].items() if key != "shots"}


def evaluate_request(**upstream):
    """What an evaluation adds to its run's request: the batch size and the eval data's request."""
    return {"batch_size": config["evaluate"]["batch_size"], **upstream}


def eval_request(w, **upstream):
    return spec(runtime=runtime(), task=prompt_spec(config["tasks"][w.task]),
                batch_size=config["evaluate"]["batch_size"], **upstream)


def unless_stale(path, receipt, key, request):
    """ancient(path) when `receipt` exists and its `key` equals `request` (the artifact is current)."""
    try:
        recorded = json.loads(Path(receipt).read_text()).get(key)
    except (OSError, ValueError):
        recorded = None
    return ancient(path) if recorded == json.loads(json.dumps(request)) else path


def model_input(alias):
    return unless_stale(f"data/models/{alias}", f"data/models/{alias}/interlingua_model.json", "source",
                        model_request(alias))


def task_input(task, role):
    path = f"data/tasks/{task}/{split_name(task, role)}.jsonl"
    return unless_stale(path, path.replace(".jsonl", ".meta.json"), "request", task_request(task, role))


def store_input(sender, task, role):
    path = f"data/activations/{sender}/{task}/{split_name(task, role)}.manifest.json"
    return unless_stale(path, path, "request", extract_request(sender, task, role))


def split_name(task, role):
    return config["tasks"][task]["splits"][role]


def store_dir(role):
    return lambda w: f"data/activations/{w.sender}/{w.task}/{split_name(w.task, role)}.zarr"


def study_models():
    return study_plan.study_models(config)


def study_splits():
    return [f"data/tasks/{t}/{split_name(t, role)}.jsonl" for t in study_plan.study_tasks(config)
            for role in ("train", "eval")]


def study_stores():
    return [f"data/activations/{s}/{t}/{split_name(t, role)}.manifest.json"
            for s, t in study_plan.study_stores(config) for role in ("train", "eval")]


def study_checkpoints():
    return study_plan.study_checkpoints(config)


def study_results():
    """Every tidy result file the study asks for."""
    return study_plan.study_results(config)


def unless_rerun(path, producer_spec):
    """ancient(path) unless Snakemake's record of the job that wrote `path` holds another spec than
    `producer_spec` (that job reruns now, so its readers must too: Snakemake does not check the params of
    jobs downstream of a rerun, and would skip them behind an ancient input). Without a record (a fresh
    clone after `dvc pull`) the file is taken as pulled: the readers' params say what it must be."""
    from snakemake.io import IOFile

    try:
        recorded = workflow.persistence.params(IOFile(path))
    except Exception:  # no persistence (e.g. --lint): as without a record
        recorded = None
    if not recorded:
        return ancient(path)
    # the producer's spec, and its `code` param where the code is kept apart from the spec (reports)
    code = producer_code(path)
    stale = repr(producer_spec) not in recorded or (code is not None and repr(code) not in recorded)
    return path if stale else ancient(path)


def producer_code(path):
    """The `code` param of the job that writes `path`, or None (a rule without one)."""
    from snakemake.iocontainers import Wildcards

    producer = next((r for r in workflow.rules if not r.norun and r.is_producer(path)), None)
    value = dict(producer.params.items()).get("code") if producer is not None else None
    return value(Wildcards(fromdict=producer.get_wildcards(path))) if callable(value) else value


def producer_params(path):
    """{name: value} of the params of the job that writes `path` (the rule whose output matches it)."""
    from snakemake.iocontainers import Wildcards

    producer = next((r for r in workflow.rules if not r.norun and r.is_producer(path)), None)
    if producer is None:
        raise WorkflowError(f"no rule writes {path}")
    w = Wildcards(fromdict=producer.get_wildcards(path))
    return {name: (value(w) if callable(value) else str(value)) for name, value in producer.params.items()}


def result_inputs():
    return [unless_rerun(path, producer_params(path)["spec"]) for path in study_results()]


def prediction_inputs():
    """The per-example predictions beside the results; the job that writes a result writes them too, so
    they are current exactly when it is (looked up by the result's path: aliases may hold dots)."""
    from interlingua.evaluate import predictions_path

    result_of = {str(predictions_path(path)): path for path in study_results()}
    return [unless_rerun(path, producer_params(result_of[path])["spec"]) for path in study_plan.study_predictions(config)]


@functools.cache
def results_request():
    """What decides results/results.csv: a fingerprint of the params (requests and code) of the job that
    writes each result file of the study. Reports read results.csv as an ancient() input and carry this,
    so a result whose request changed reruns them, and a `dvc pull` (new timestamps) does not."""
    return fingerprint({path: producer_params(path) for path in study_results()})


def kv_zoo_models():
    """The zoo models study 2's runs read as members (`{model: <alias>}`): materialized by the models stage."""
    specs = kv_alignment_plan.section(config).get("members", {})
    return {specs[name]["model"] for name in {n for plan in kv_alignment_plan.runs(config).values()
                                               if isinstance(plan, dict) for n in plan["members"]}
            if "model" in specs.get(name, {})}
