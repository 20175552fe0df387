rule materialize_task:
    """Validate every row of a split, take the seeded subsample, record its content hash."""
    input:
        # The mirror file when there is one (else the hub id is tried inside the job); its content
        # hash is in params, so it is ancient() like every input.
        ancient(mirror_input),
    output:
        split="data/tasks/{task}/{split}.jsonl",
        meta="data/tasks/{task}/{split}.meta.json",
    params:
        role=task_role,
        spec=lambda w: spec(task=task_source_spec(config["tasks"][w.task], task_role(w)),
                            datasets=config["paths"]["datasets"]),
        code=code("materialize-task"),
    # Runs first: bad data stops the run before any model is loaded.
    priority: 100
    log:
        "logs/materialize_task/{task}/{split}.log",
    shell:
        "{CLI} materialize-task --task {wildcards.task} --role {params.role} --spec {params.spec:q} "
        "--out {output.split} > {log} 2>&1"
