rule train_bridge:
    """Fit a bridge from cached sender states into the frozen receiver (the sender is not loaded)."""
    input:
        store=lambda w: store_input(w.sender, w.task, "train"),
        receiver=lambda w: model_input(w.receiver),
    output:
        checkpoint="data/checkpoints/{bridge}/{sender}/{receiver}/{task}/seed{seed}.pt",
    params:
        store=store_dir("train"),
        spec=lambda w: spec(**bridge_request(w)),
    log:
        "logs/train_bridge/{bridge}/{sender}/{receiver}/{task}/seed{seed}.log",
    benchmark:
        "results/benchmarks/train_bridge/{bridge}/{sender}/{receiver}/{task}/seed{seed}.tsv"
    shell:
        "{CLI} train-bridge --bridge {wildcards.bridge} --store {params.store} --receiver-dir {input.receiver} "
        "--seed {wildcards.seed} --spec {params.spec:q} --threads {threads} --out {output.checkpoint} > {log} 2>&1"


rule train_prompt_tuning:
    """Baseline: peft prompt tuning of the receiver alone (no sender), same step budget as the bridge."""
    input:
        split=lambda w: task_input(w.task, "train"),
        receiver=lambda w: model_input(w.receiver),
    output:
        checkpoint="data/checkpoints/prompt_tuning/{receiver}/{task}/seed{seed}.pt",
    params:
        spec=lambda w: spec(**prompt_tuning_request(w)),
    log:
        "logs/train_prompt_tuning/{receiver}/{task}/seed{seed}.log",
    benchmark:
        "results/benchmarks/train_prompt_tuning/{receiver}/{task}/seed{seed}.tsv"
    shell:
        "{CLI} train-prompt-tuning --split {input.split} --receiver-dir {input.receiver} --seed {wildcards.seed} "
        "--spec {params.spec:q} --threads {threads} --out {output.checkpoint} > {log} 2>&1"
