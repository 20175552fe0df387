rule eval_zero_shot:
    """A model reading the task text directly, no training."""
    input:
        split=lambda w: task_input(w.task, "eval"),
        model=lambda w: model_input(w.model),
    output:
        result="results/zero_shot/{model}/{task}.csv",
        predictions="results/zero_shot/{model}/{task}.predictions.csv",
    params:
        spec=lambda w: eval_request(w, model=model_request(w.model), data=task_request(w.task, "eval")),
        code=code("eval-zero-shot"),
    log:
        "logs/eval_zero_shot/{model}/{task}.log",
    benchmark:
        "results/benchmarks/eval_zero_shot/{model}/{task}.tsv"
    shell:
        "{CLI} eval-zero-shot --task {wildcards.task} --alias {wildcards.model} --split {input.split} "
        "--model-dir {input.model} --spec {params.spec:q} --threads {threads} --out {output.result} > {log} 2>&1"
