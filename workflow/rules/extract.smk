rule extract:
    """Sender hidden states of every example of a split -> sharded Zarr store."""
    input:
        model="data/models/{sender}",
        split="data/tasks/{task}/{split}.jsonl",
    output:
        store=directory("data/activations/{sender}/{task}/{split}.zarr"),
    params:
        spec=lambda w: spec(runtime=runtime(), sender_prompt=config["tasks"][w.task]["prompts"]["sender"],
                            extract={k: config["extract"][k] for k in ("layers", "storage_dtype")}),
    log:
        "logs/extract/{sender}/{task}/{split}.log",
    benchmark:
        "results/benchmarks/extract/{sender}/{task}/{split}.tsv"
    shell:
        "{CLI} extract --alias {wildcards.sender} --model-dir {input.model} --split {input.split} "
        "--spec {params.spec:q} --threads {threads} --out {output.store} "
        # Batch and shard sizes do not change the contents: not params, so no rerun trigger.
        "--batch-size {config[extract][batch_size]} --shard-tokens {config[extract][shard_tokens]} "
        "--chunk-tokens {config[extract][chunk_tokens]} > {log} 2>&1"
