rule materialize_task:
    """Validate every row of a split, take the seeded subsample, record its content hash."""
    input:
        # The mirror file when there is one (else the hub id is tried inside the job).
        lambda w: [p] if (p := mirror_path(config["tasks"][w.task], config["paths"]["datasets"], task_role(w))).exists() else [],
    output:
        split="data/tasks/{task}/{split}.jsonl",
        meta="data/tasks/{task}/{split}.meta.json",
    params:
        role=task_role,
        spec=lambda w: spec(task=task_source_spec(config["tasks"][w.task], task_role(w)),
                            datasets=config["paths"]["datasets"]),
    # Runs first: bad data stops the run before any model is loaded.
    priority: 100
    log:
        "logs/materialize_task/{task}/{split}.log",
    shell:
        "{CLI} materialize-task --task {wildcards.task} --role {params.role} --spec {params.spec:q} "
        "--out {output.split} > {log} 2>&1"
