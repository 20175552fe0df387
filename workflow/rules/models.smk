def plain_models():
    """Aliases materialized from their own source (not `continued` from another)."""
    return [alias for alias, entry in config["models"].items() if "continued" not in entry]


def continued_models():
    return [alias for alias, entry in config["models"].items() if "continued" in entry]


rule materialize_model:
    """Load a model from its source once (GGUF dequantization takes minutes) and save safetensors."""
    wildcard_constraints:
        model="|".join(plain_models()) or "^$",
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


rule continue_model:
    """A `continued` model: its base (materialized) trained further on a corpus of the datasets mirror."""
    input:
        base=lambda w: model_input(config["models"][w.model]["continued"]["base"]),
    wildcard_constraints:
        model="|".join(continued_models()) or "^$",
    output:
        directory("data/models/{model}"),
    params:
        spec=lambda w: spec(model=model_request(w.model)),
        code=code("continue-model"),
        datasets=config["paths"]["datasets"],
    log:
        "logs/continue_model/{model}.log",
    benchmark:
        "results/benchmarks/continue_model/{model}.tsv"
    shell:
        "{CLI} continue-model --alias {wildcards.model} --spec {params.spec:q} --threads {threads} "
        "--base-dir {input.base} --datasets {params.datasets:q} --out {output} > {log} 2>&1"
