rule extract:
    """Sender hidden states (and KV caches) of every example of a split -> sharded Zarr store.

    The output is the store's receipt, written once the store is complete. The store itself is
    managed by the job: an interrupted write resumes, and an intact store that already holds
    the request (same data, model and prompt; a superset of layers) is reused as it is.
    """
    input:
        model=lambda w: model_input(w.sender),
        split=lambda w: task_input(w.task, task_role(w)),
    output:
        manifest="data/activations/{sender}/{task}/{split}.manifest.json",
    params:
        store="data/activations/{sender}/{task}/{split}.zarr",
        spec=lambda w: spec(**extract_request(w.sender, w.task, task_role(w))),
        code=code("extract"),
    log:
        "logs/extract/{sender}/{task}/{split}.log",
    benchmark:
        "results/benchmarks/extract/{sender}/{task}/{split}.tsv"
    shell:
        "{CLI} extract --alias {wildcards.sender} --model-dir {input.model} --split {input.split} "
        "--spec {params.spec:q} --threads {threads} --out {params.store} --receipt {output.manifest} "
        # Batch and shard sizes do not change the contents: not params, so no rerun trigger.
        "--batch-size {config[extract][batch_size]} --shard-tokens {config[extract][shard_tokens]} "
        "--chunk-tokens {config[extract][chunk_tokens]} > {log} 2>&1"
