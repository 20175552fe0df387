# Each trained method is evaluated by its training job, in the same process: the receiver is loaded
# once, which saves ~10 s of start-up (imports, model, tokenizer) per run. The CLI's eval-bridge and
# eval-prompt-tuning evaluate an existing checkpoint on their own.


def bridge_spec(w):
    return spec(**bridge_request(w), evaluate=evaluate_request(store=extract_request(w.sender, w.task, "eval")))


rule train_bridge:
    """Fit a bridge from cached sender states into the frozen receiver (the sender is not loaded), then
    its accuracy on the eval split, with shuffled-source and zero-source controls."""
    input:
        store=lambda w: store_input(w.sender, w.task, "train"),
        eval_store=lambda w: store_input(w.sender, w.task, "eval"),
        # the splits the stores hold: their content hashes are checked against the stores'
        split=lambda w: task_input(w.task, "train"),
        eval_split=lambda w: task_input(w.task, "eval"),
        receiver=lambda w: model_input(w.receiver),
    output:
        checkpoint="data/checkpoints/{bridge}/{sender}/{receiver}/{task}/seed{seed}.pt",
        result="results/bridge/{bridge}/{sender}/{receiver}/{task}/seed{seed}.csv",
        predictions="results/bridge/{bridge}/{sender}/{receiver}/{task}/seed{seed}.predictions.csv",
    params:
        store=store_dir("train"),
        eval_store=store_dir("eval"),
        spec=lambda w: bridge_spec(w),
        code=code("train-bridge"),
    log:
        "logs/train_bridge/{bridge}/{sender}/{receiver}/{task}/seed{seed}.log",
    benchmark:
        "results/benchmarks/train_bridge/{bridge}/{sender}/{receiver}/{task}/seed{seed}.tsv"
    shell:
        "{CLI} train-bridge --bridge {wildcards.bridge} --store {params.store} --receiver-dir {input.receiver} "
        "--seed {wildcards.seed} --spec {params.spec:q} --threads {threads} --out {output.checkpoint} "
        "--task {wildcards.task} --sender {wildcards.sender} --receiver {wildcards.receiver} "
        "--eval-store {params.eval_store} --eval-out {output.result} --split {input.split} "
        "--eval-split {input.eval_split} > {log} 2>&1"


rule train_prompt_tuning:
    """Baseline: peft prompt tuning of the receiver alone (no sender), same step budget as the bridge;
    then its accuracy on the eval split."""
    input:
        split=lambda w: task_input(w.task, "train"),
        eval_split=lambda w: task_input(w.task, "eval"),
        receiver=lambda w: model_input(w.receiver),
    output:
        checkpoint="data/checkpoints/prompt_tuning/{receiver}/{task}/seed{seed}.pt",
        result="results/prompt_tuning/{receiver}/{task}/seed{seed}.csv",
        predictions="results/prompt_tuning/{receiver}/{task}/seed{seed}.predictions.csv",
    params:
        spec=lambda w: spec(**prompt_tuning_request(w), evaluate=evaluate_request(data=task_request(w.task, "eval"))),
        code=code("train-prompt-tuning"),
    log:
        "logs/train_prompt_tuning/{receiver}/{task}/seed{seed}.log",
    benchmark:
        "results/benchmarks/train_prompt_tuning/{receiver}/{task}/seed{seed}.tsv"
    shell:
        "{CLI} train-prompt-tuning --split {input.split} --receiver-dir {input.receiver} --seed {wildcards.seed} "
        "--spec {params.spec:q} --threads {threads} --out {output.checkpoint} "
        "--task {wildcards.task} --receiver {wildcards.receiver} --eval-split {input.eval_split} "
        "--eval-out {output.result} > {log} 2>&1"
