rule materialize_model:
    """Load a model from its source once (GGUF dequantization takes minutes) and save safetensors."""
    output:
        directory("data/models/{model}"),
    params:
        spec=lambda w: spec(model=model_request(w.model)),
        code=code("materialize-model"),
    log:
        "logs/materialize_model/{model}.log",
    benchmark:
        "results/benchmarks/materialize_model/{model}.tsv"
    shell:
        "{CLI} materialize-model --alias {wildcards.model} --spec {params.spec:q} --threads {threads} "
        "--out {output} > {log} 2>&1"
