rule train_bridge:
    """Fit a bridge from cached sender states into the frozen receiver (the sender is not loaded)."""
    input:
        store=store("train"),
        receiver="data/models/{receiver}",
    output:
        checkpoint="data/checkpoints/{bridge}/{sender}/{receiver}/{task}/seed{seed}.pt",
    params:
        spec=lambda w: spec(runtime=runtime(), bridge=config["bridges"][w.bridge], train=config["train"],
                            task=prompt_spec(config["tasks"][w.task])),
    log:
        "logs/train_bridge/{bridge}/{sender}/{receiver}/{task}/seed{seed}.log",
    benchmark:
        "results/benchmarks/train_bridge/{bridge}/{sender}/{receiver}/{task}/seed{seed}.tsv"
    shell:
        "{CLI} train-bridge --bridge {wildcards.bridge} --store {input.store} --receiver-dir {input.receiver} "
        "--seed {wildcards.seed} --spec {params.spec:q} --threads {threads} --out {output.checkpoint} > {log} 2>&1"


rule train_prompt_tuning:
    """Baseline: peft prompt tuning of the receiver alone (no sender), same step budget as the bridge."""
    input:
        split=task_split("train"),
        receiver="data/models/{receiver}",
    output:
        checkpoint="data/checkpoints/prompt_tuning/{receiver}/{task}/seed{seed}.pt",
    params:
        spec=lambda w: spec(runtime=runtime(), train=config["train"], prompt_tuning=config["prompt_tuning"],
                            task=prompt_spec(config["tasks"][w.task])),
    log:
        "logs/train_prompt_tuning/{receiver}/{task}/seed{seed}.log",
    benchmark:
        "results/benchmarks/train_prompt_tuning/{receiver}/{task}/seed{seed}.tsv"
    shell:
        "{CLI} train-prompt-tuning --split {input.split} --receiver-dir {input.receiver} --seed {wildcards.seed} "
        "--spec {params.spec:q} --threads {threads} --out {output.checkpoint} > {log} 2>&1"
