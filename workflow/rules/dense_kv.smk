# Study 3, dense heterogeneous KV transfer: KV stores -> two-phase transformations -> scored runs -> report.
# What runs is planned by interlingua/studies/dense_kv/plan.py from the `dense_kv` config section.
from types import SimpleNamespace

from interlingua.studies.dense_kv import plan as dense_plan

DENSE = config.get("dense_kv") or {}


def dense_store_request(model, task, role):
    """What decides a study-3 store: as extract_request, with the KV cache and layer 0 only."""
    return {"model": model_request(model), "task": task_request(task, role), "runtime": runtime(),
            "sender_prompt": config["tasks"][task]["prompts"]["sender"], "code": code("extract"),
            "max_tokens": config["tasks"][task]["max_tokens"],
            "extract": {"layers": [0], "storage_dtype": config["extract"]["storage_dtype"], "kv_cache": True,
                        **({"rows": DENSE["train_rows"]} if role == "train" and DENSE.get("train_rows") else {})}}


def dense_store(model, task, role):
    return f"{dense_plan.STORES_DIR}/{model}/{task}/{split_name(task, role)}"


def dense_store_input(model, task, role):
    path = dense_store(model, task, role) + ".manifest.json"
    return unless_stale(path, path, "request", dense_store_request(model, task, role))


rule dense_extract:
    """A model's KV cache of every example of a split, with each token's character span (token alignment)."""
    input:
        model=lambda w: model_input(w.model),
        split=lambda w: task_input(w.task, task_role(w)),
    wildcard_constraints:
        model=ALIAS,
    output:
        manifest=f"{dense_plan.STORES_DIR}/{{model}}/{{task}}/{{split}}.manifest.json",
    params:
        store=f"{dense_plan.STORES_DIR}/{{model}}/{{task}}/{{split}}.zarr",
        spec=lambda w: spec(**dense_store_request(w.model, w.task, task_role(w))),
        code=code("extract"),
    log:
        "logs/dense_kv/extract/{model}/{task}/{split}.log",
    benchmark:
        "results/benchmarks/dense_kv/extract/{model}/{task}/{split}.tsv"
    shell:
        "{CLI} extract --alias {wildcards.model} --model-dir {input.model} --split {input.split} "
        "--spec {params.spec:q} --threads {threads} --out {params.store} --receipt {output.manifest} "
        "--batch-size {config[extract][batch_size]} --shard-tokens {config[extract][shard_tokens]} "
        "--chunk-tokens {config[extract][chunk_tokens]} > {log} 2>&1"


def dense_direction(name):
    return dense_plan.directions(config)[name]


def dense_train_request(w):
    d = dense_direction(w.direction)
    return {"runtime": runtime(), "train": dense_plan.run_config(config, w.variant), "seed": int(w.seed),
            "prompts": DENSE.get("prompts", {}), "code": code("dense-train"),
            "tasks": {t: {"task": prompt_spec(config["tasks"][t]),
                          "sender_store": dense_store_request(d["sender"], t, "train"),
                          "receiver_store": dense_store_request(d["receiver"], t, "train")}
                      for t in dense_plan.train_tasks(config)}}


def dense_train_inputs(w):
    d = dense_direction(w.direction)
    inputs = {"sender": model_input(d["sender"]), "receiver": model_input(d["receiver"])}
    for t in dense_plan.train_tasks(config):
        inputs[f"split_{t}"] = task_input(t, "train")
        inputs[f"sender_{t}"] = dense_store_input(d["sender"], t, "train")
        inputs[f"receiver_{t}"] = dense_store_input(d["receiver"], t, "train")
    return inputs


def dense_task_args(w):
    d = dense_direction(w.direction)
    return " ".join(f"--task {t}={task_input(t, 'train')}={dense_store(d['sender'], t, 'train')}.zarr="
                    f"{dense_store(d['receiver'], t, 'train')}.zarr" for t in dense_plan.train_tasks(config))


rule dense_train:
    """One direction's cache transformation: phase 1 (reconstruction, closed form) and/or phase 2 (generation)."""
    input:
        unpack(dense_train_inputs),
    wildcard_constraints:
        direction=ALIAS,
        variant="|".join(dense_plan.VARIANTS),
    output:
        directory(f"{dense_plan.RUNS_DIR}/{{direction}}/{{variant}}/seed{{seed}}/transform"),
    params:
        spec=lambda w: spec(request=dense_train_request(w)),
        code=code("dense-train"),
        tasks=dense_task_args,
    log:
        "logs/dense_kv/train/{direction}/{variant}/seed{seed}.log",
    benchmark:
        "results/benchmarks/dense_kv/train/{direction}/{variant}/seed{seed}.tsv"
    shell:
        "{CLI} dense-train --spec {params.spec:q} --threads {threads} --sender-dir {input.sender} "
        "--receiver-dir {input.receiver} --seed {wildcards.seed} {params.tasks} --out {output} > {log} 2>&1"


def dense_eval_request(w):
    d = dense_direction(w.direction)
    return {"runtime": runtime(), "run": dense_train_request(w), "task": prompt_spec(config["tasks"][w.task]),
            "prompts": DENSE.get("prompts", {}),
            **dense_plan.eval_options(config, w.direction, w.variant, w.seed, w.task),
            "store": dense_store_request(d["sender"], w.task, "eval"), "batch_size": config["evaluate"]["batch_size"],
            **({"receiver_store": dense_store_request(d["receiver"], w.task, "eval")} if w.variant == "fuser" else {}),
            "code": code("dense-evaluate")}


def dense_eval_inputs(w):
    d = dense_direction(w.direction)
    run = f"{dense_plan.run_dir(w.direction, w.variant, w.seed)}/transform"
    return {"sender": model_input(d["sender"]), "receiver": model_input(d["receiver"]),
            "split": task_input(w.task, "eval"), "store": dense_store_input(d["sender"], w.task, "eval"),
            "run": unless_rerun(run, spec(request=dense_train_request(w))),
            **({"own": dense_store_input(d["receiver"], w.task, "eval")} if w.variant == "fuser" else {})}


rule dense_evaluate:
    """A trained direction on one task: both modes, the controls, the kept-fraction sweep, no communication."""
    input:
        unpack(dense_eval_inputs),
    wildcard_constraints:
        direction=ALIAS,
        variant="|".join(dense_plan.VARIANTS),
        task=ALIAS,
    output:
        result=f"{dense_plan.RUNS_DIR}/{{direction}}/{{variant}}/seed{{seed}}/{{task}}.csv",
        predictions=f"{dense_plan.RUNS_DIR}/{{direction}}/{{variant}}/seed{{seed}}/{{task}}.predictions.csv",
    params:
        spec=lambda w: spec(request=dense_eval_request(w)),
        code=code("dense-evaluate"),
        store=lambda w: dense_store(dense_direction(w.direction)["sender"], w.task, "eval") + ".zarr",
        own=lambda w: (f"--receiver-store {dense_store(dense_direction(w.direction)['receiver'], w.task, 'eval')}.zarr"
                       if w.variant == "fuser" else ""),
    log:
        "logs/dense_kv/evaluate/{direction}/{variant}/seed{seed}/{task}.log",
    benchmark:
        "results/benchmarks/dense_kv/evaluate/{direction}/{variant}/seed{seed}/{task}.tsv"
    shell:
        "{CLI} dense-evaluate --spec {params.spec:q} --threads {threads} --task {wildcards.task} "
        "--direction {wildcards.direction} --variant {wildcards.variant} --seed {wildcards.seed} "
        "--sender-dir {input.sender} --receiver-dir {input.receiver} --split {input.split} --store {params.store} "
        "--run {input.run} {params.own} --out {output.result} > {log} 2>&1"


def dense_shared_space_request(w):
    d, space = dense_direction(w.direction), dense_plan.shared_space(config)[w.direction]
    return {"runtime": runtime(), "translator": kv_run_request(space["run"], space["seed"]),
            "members": {"sender": space["sender"], "receiver": space["receiver"]},
            "task": prompt_spec(config["tasks"][w.task]), "prompts": DENSE.get("prompts", {}),
            "store": dense_store_request(d["sender"], w.task, "eval"), "batch_size": config["evaluate"]["batch_size"],
            "code": code("dense-shared-space")}


def dense_shared_space_inputs(w):
    d, space = dense_direction(w.direction), dense_plan.shared_space(config)[w.direction]
    run = f"{kv_alignment_plan.RUNS_DIR}/{space['run']}/seed{space['seed']}"
    return {"sender": model_input(d["sender"]), "receiver": model_input(d["receiver"]),
            "split": task_input(w.task, "eval"), "store": dense_store_input(d["sender"], w.task, "eval"),
            "run": unless_rerun(run, spec(request=kv_run_request(space["run"], space["seed"])))}


if dense_plan.shared_space(config):   # a rule needs outputs; none without a shared-space baseline

    rule dense_shared_space:
        """Study 2's shared space as a direction's baseline on one task (one tokenizer), with its shuffled control."""
        input:
            unpack(dense_shared_space_inputs),
        wildcard_constraints:
            direction=ALIAS,
            task=ALIAS,
        output:
            result=f"{dense_plan.RUNS_DIR}/{{direction}}/shared_space/seed{{seed}}/{{task}}.csv",
            predictions=f"{dense_plan.RUNS_DIR}/{{direction}}/shared_space/seed{{seed}}/{{task}}.predictions.csv",
        params:
            spec=lambda w: spec(request=dense_shared_space_request(w)),
            code=code("dense-shared-space"),
            store=lambda w: dense_store(dense_direction(w.direction)["sender"], w.task, "eval") + ".zarr",
        log:
            "logs/dense_kv/shared_space/{direction}/seed{seed}/{task}.log",
        benchmark:
            "results/benchmarks/dense_kv/shared_space/{direction}/seed{seed}/{task}.tsv"
        shell:
            "{CLI} dense-shared-space --spec {params.spec:q} --threads {threads} --task {wildcards.task} "
            "--direction {wildcards.direction} --seed {wildcards.seed} --sender-dir {input.sender} "
            "--receiver-dir {input.receiver} --split {input.split} --store {params.store} "
            "--translator {input.run}/translator.pt --out {output.result} > {log} 2>&1"


def dense_text_spec(w):
    """What decides the relay at shorter limits: study 1's relay file and how its receiver reads it
    (eval_relay's spec), and the limits."""
    d = dense_direction(w.direction)
    relay = SimpleNamespace(mode="text_relay", sender=d["sender"], receiver=d["receiver"], task=w.task)
    return spec(**json.loads(relay_eval_request(relay)), limits=dense_plan.text_limits(config))


def dense_text_inputs(w):
    d = dense_direction(w.direction)
    return {"relay": dense_relay(w.direction, w.task, dense_plan.relay_messages),
            "split": task_input(w.task, "eval"), "train": task_input(w.task, "train"),
            "sender": model_input(d["sender"]), "receiver": model_input(d["receiver"])}


if dense_plan.text_limits(config):   # a rule needs outputs; none without shorter limits

    rule dense_text:
        """Study 1's text relay of a direction and task cut to each shorter limit, read by the receiver as there."""
        input:
            unpack(dense_text_inputs),
        wildcard_constraints:
            direction=ALIAS,
            task=ALIAS,
        output:
            [f"{dense_plan.RUNS_DIR}/{{direction}}/text/{{task}}/limit{limit}.csv" for limit in dense_plan.text_limits(config)],
        params:
            spec=dense_text_spec,
            code=code("dense-text"),
            out=f"{dense_plan.RUNS_DIR}/{{direction}}/text/{{task}}",
        log:
            "logs/dense_kv/text/{direction}/{task}.log",
        benchmark:
            "results/benchmarks/dense_kv/text/{direction}/{task}.tsv"
        shell:
            "{CLI} dense-text --task {wildcards.task} --relay {input.relay} --split {input.split} "
            "--train-split {input.train} --sender-dir {input.sender} --receiver-dir {input.receiver} "
            "--spec {params.spec:q} --threads {threads} --out-dir {params.out} > {log} 2>&1"


def dense_results():
    return [f"{dense_plan.run_dir(d, v, s)}/{t}.csv" for d, v, s in dense_plan.runs(config)
            for t in dense_plan.run_tasks(config, v, d, s)] + dense_plan.shared_space_results(config)


def dense_relay(direction, task, path_of):
    """A study-1 relay file of this direction and task, ancient() unless the study-1 job writing it reruns."""
    path = path_of(dense_direction(direction), task)
    return unless_rerun(path, producer_params(path)["spec"])


def dense_report_inputs(w):
    """Every scored run and study 1's baselines, ancient() unless the job writing them reruns now (its params
    differ from its record): a `dvc pull` restores them with new timestamps and must not rerun the report."""
    baselines = [f"results/{kind}/{t}.csv" for kind in ("majority", "random") for t in dense_plan.eval_tasks(config)]
    bridges = sorted({p for paths in dense_plan.bridge_results(config).values() for p in paths})
    return {"results": [unless_rerun(p, producer_params(p)["spec"]) for p in dense_results()],
            "baselines": [unless_rerun(p, producer_params(p)["spec"]) for p in baselines + bridges],
            "relays": [dense_relay(d, t, f) for d, t in dense_plan.text_runs(config)
                       for f in (dense_plan.relay_messages, dense_plan.relay_result)],
            "text_limits": [unless_rerun(p, producer_params(p)["spec"]) for p in dense_plan.text_limit_results(config)],
            "models": [model_input(m) for d in dense_plan.directions(config).values()
                       for m in (d["sender"], d["receiver"])],
            "alignment_split": dense_alignment_split()}


def dense_alignment_split():
    """The eval split of the alignment figure's example (the first trained task)."""
    return task_input(dense_plan.train_tasks(config)[0], "eval")


rule dense_report:
    """Every table and figure of study 3 from its scored runs (and study 1's majority and random baselines)."""
    input:
        unpack(dense_report_inputs),
    output:
        dense_plan.figures(config),
    params:
        spec=lambda w: spec(config={"dense_kv": DENSE, "tasks": {t: prompt_spec(config["tasks"][t])
                                                                  for t in dense_plan.eval_tasks(config)},
                                    "text_runs": dense_plan.text_runs(config),
                                    "relay": {"max_new_tokens": config["relay"]["max_new_tokens"]},
                                    "alignment_split": f"data/tasks/{dense_plan.train_tasks(config)[0]}/"
                                                       f"{split_name(dense_plan.train_tasks(config)[0], 'eval')}.jsonl",
                                    "bridge_results": [[d, t, paths] for (d, t), paths
                                                       in sorted(dense_plan.bridge_results(config).items())],
                                    "shared_space": dense_plan.shared_space(config)}),
        code=code("dense-report"),
    log:
        "logs/dense_kv/report.log",
    shell:
        "{CLI} dense-report --spec {params.spec:q} --out-dir {dense_plan.FIGURES_DIR} > {log} 2>&1"


rule dense_kv_runs:
    """Every trained transformation, its scored tasks and the text relay at shorter limits (what DVC's dense_kv
    stage caches; its two directories exist even when the config plans no study 3, so the stage's outputs
    always do)."""
    input:
        dense_results(),
        dense_plan.text_limit_results(config),
    shell:
        f"mkdir -p {dense_plan.STORES_DIR} {dense_plan.RUNS_DIR}"


rule figures_dense_kv:
    """Study 3, dense heterogeneous KV transfer: every table and figure its config asks for."""
    input:
        dense_plan.figures(config),
