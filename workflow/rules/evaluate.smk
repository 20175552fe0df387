rule eval_zero_shot:
    """A model reading the task text directly, no training."""
    input:
        split=lambda w: task_input(w.task, "eval"),
        model=lambda w: model_input(w.model),
    output:
        "results/zero_shot/{model}/{task}.csv",
    params:
        spec=lambda w: eval_request(w, model=model_request(w.model), data=task_request(w.task, "eval")),
    log:
        "logs/eval_zero_shot/{model}/{task}.log",
    benchmark:
        "results/benchmarks/eval_zero_shot/{model}/{task}.tsv"
    shell:
        "{CLI} eval-zero-shot --task {wildcards.task} --alias {wildcards.model} --split {input.split} "
        "--model-dir {input.model} --spec {params.spec:q} --threads {threads} --out {output} > {log} 2>&1"


rule eval_bridge:
    """Bridge accuracy on the eval split, with shuffled-source and zero-source controls."""
    input:
        store=lambda w: store_input(w.sender, w.task, "eval"),
        receiver=lambda w: model_input(w.receiver),
        checkpoint=rules.train_bridge.output.checkpoint,
    output:
        "results/bridge/{bridge}/{sender}/{receiver}/{task}/seed{seed}.csv",
    params:
        store=store_dir("eval"),
        spec=lambda w: eval_request(w, store=extract_request(w.sender, w.task, "eval"), checkpoint=bridge_request(w)),
    log:
        "logs/eval_bridge/{bridge}/{sender}/{receiver}/{task}/seed{seed}.log",
    benchmark:
        "results/benchmarks/eval_bridge/{bridge}/{sender}/{receiver}/{task}/seed{seed}.tsv"
    shell:
        "{CLI} eval-bridge --task {wildcards.task} --sender {wildcards.sender} --receiver {wildcards.receiver} "
        "--bridge {wildcards.bridge} --store {params.store} --receiver-dir {input.receiver} "
        "--checkpoint {input.checkpoint} --spec {params.spec:q} --threads {threads} --out {output} > {log} 2>&1"


rule eval_prompt_tuning:
    input:
        split=lambda w: task_input(w.task, "eval"),
        receiver=lambda w: model_input(w.receiver),
        checkpoint=rules.train_prompt_tuning.output.checkpoint,
    output:
        "results/prompt_tuning/{receiver}/{task}/seed{seed}.csv",
    params:
        spec=lambda w: eval_request(w, data=task_request(w.task, "eval"), checkpoint=prompt_tuning_request(w)),
    log:
        "logs/eval_prompt_tuning/{receiver}/{task}/seed{seed}.log",
    shell:
        "{CLI} eval-prompt-tuning --task {wildcards.task} --receiver {wildcards.receiver} --split {input.split} "
        "--receiver-dir {input.receiver} --checkpoint {input.checkpoint} --spec {params.spec:q} "
        "--threads {threads} --out {output} > {log} 2>&1"
