# Baselines beside the bridges: chance, majority class, k-shot, text/CoT relay,
# receiver fine-tuning (LoRA, last N blocks).


rule eval_random:
    """Chance level, measured on the eval labels (one uniform draw per seed)."""
    input:
        split=lambda w: task_input(w.task, "eval"),
    output:
        result="results/random/{task}.csv",
        predictions="results/random/{task}.predictions.csv",
    params:
        spec=lambda w: spec(task=prompt_spec(config["tasks"][w.task]), seeds=STUDY["seeds"],
                            data=task_request(w.task, "eval")),
        code=code("eval-random"),
    log:
        "logs/eval_random/{task}.log",
    shell:
        "{CLI} eval-random --task {wildcards.task} --split {input.split} --spec {params.spec:q} "
        "--out {output.result} > {log} 2>&1"


rule eval_majority:
    """The majority class of the training rows, predicted for every eval row (ties: lowest label index)."""
    input:
        train=lambda w: task_input(w.task, "train"),
        split=lambda w: task_input(w.task, "eval"),
    output:
        result="results/majority/{task}.csv",
        predictions="results/majority/{task}.predictions.csv",
    params:
        spec=lambda w: spec(task=prompt_spec(config["tasks"][w.task]),
                            data=[task_request(w.task, "train"), task_request(w.task, "eval")]),
        code=code("eval-majority"),
    log:
        "logs/eval_majority/{task}.log",
    shell:
        "{CLI} eval-majority --task {wildcards.task} --train-split {input.train} --split {input.split} "
        "--spec {params.spec:q} --out {output.result} > {log} 2>&1"


rule eval_few_shot:
    """A model reading k balanced training demonstrations (drawn per seed) before each eval text."""
    input:
        train=lambda w: task_input(w.task, "train"),
        split=lambda w: task_input(w.task, "eval"),
        model=lambda w: model_input(w.model),
    output:
        result="results/few_shot/{model}/{task}/seed{seed}.csv",
        predictions="results/few_shot/{model}/{task}/seed{seed}.predictions.csv",
    params:
        spec=lambda w: eval_request(w, model=model_request(w.model), few_shot=config["few_shot"],
                                    data=[task_request(w.task, "train"), task_request(w.task, "eval")]),
        code=code("eval-few-shot"),
    log:
        "logs/eval_few_shot/{model}/{task}/seed{seed}.log",
    benchmark:
        "results/benchmarks/eval_few_shot/{model}/{task}/seed{seed}.tsv"
    shell:
        "{CLI} eval-few-shot --task {wildcards.task} --alias {wildcards.model} --train-split {input.train} "
        "--split {input.split} --model-dir {input.model} --seed {wildcards.seed} --spec {params.spec:q} "
        "--threads {threads} --out {output.result} > {log} 2>&1"


RELAY_MODES = {"text_relay": "summary", "cot_relay": "cot"}


rule generate_relay:
    """The sender writes a summary (text relay) or its reasoning (CoT relay) of each eval input; resumable."""
    input:
        split=lambda w: task_input(w.task, "eval"),
        sender=lambda w: model_input(w.sender),
    output:
        "data/relay/{mode}/{sender}/{task}.jsonl",
    params:
        mode=lambda w: RELAY_MODES[w.mode],
        spec=lambda w: spec(**relay_request(w)),
        code=code("generate-relay"),
    log:
        "logs/generate_relay/{mode}/{sender}/{task}.log",
    benchmark:
        "results/benchmarks/generate_relay/{mode}/{sender}/{task}.tsv"
    shell:
        "{CLI} generate-relay --mode {params.mode} --sender-dir {input.sender} --split {input.split} "
        "--spec {params.spec:q} --threads {threads} --out {output} > {log} 2>&1"


def relay_seeds():
    """The k-shot baseline's demonstration draws (few_shot.seeds, default study.seeds): the relay's
    receiver reads the same demonstrations per seed as the receiver's own k-shot run."""
    return config["few_shot"]["seeds"]  # set by config validation


def relay_eval_request(w):
    """eval_relay's spec. With relay.shots > 0 the receiver reads demonstrations drawn from the train
    split once per seed (as eval_few_shot does): the seeds and that split's data decide the result."""
    demonstrations = {}
    if config["relay"]["shots"]:
        demonstrations = {"seeds": relay_seeds(), "train_data": task_request(w.task, "train")}
    return eval_request(w, relay=config["relay"], receiver=model_request(w.receiver), upstream=relay_request(w),
                        **demonstrations)


rule eval_relay:
    """The receiver classifies from the sender's relay text, after relay.shots training demonstrations
    (drawn per seed as for the k-shot baseline; 0 = zero-shot)."""
    input:
        # ancient() unless rewritten now (unless_rerun): its request (and code) is in params (relay_eval_request)
        relay=lambda w: unless_rerun(f"data/relay/{w.mode}/{w.sender}/{w.task}.jsonl", spec(**relay_request(w))),
        train=lambda w: task_input(w.task, "train"),
        split=lambda w: task_input(w.task, "eval"),
        receiver=lambda w: model_input(w.receiver),
    output:
        result="results/relay/{mode}/{sender}/{receiver}/{task}.csv",
        predictions="results/relay/{mode}/{sender}/{receiver}/{task}.predictions.csv",
    params:
        mode=lambda w: RELAY_MODES[w.mode],
        spec=relay_eval_request,
        code=code("eval-relay"),
    log:
        "logs/eval_relay/{mode}/{sender}/{receiver}/{task}.log",
    shell:
        "{CLI} eval-relay --task {wildcards.task} --mode {params.mode} --sender {wildcards.sender} "
        "--receiver {wildcards.receiver} --relay {input.relay} --train-split {input.train} --split {input.split} "
        "--receiver-dir {input.receiver} --spec {params.spec:q} --threads {threads} --out {output.result} "
        "> {log} 2>&1"


rule train_finetune:
    """The receiver reading the text, fine-tuned (LoRA, or its last N blocks) with the bridge's step budget."""
    input:
        split=lambda w: task_input(w.task, "train"),
        receiver=lambda w: model_input(w.receiver),
    output:
        checkpoint="data/checkpoints/finetune/{method}/{receiver}/{task}/seed{seed}.pt",
    params:
        spec=lambda w: spec(**finetune_request(w)),
        code=code("train-finetune"),
    log:
        "logs/train_finetune/{method}/{receiver}/{task}/seed{seed}.log",
    benchmark:
        "results/benchmarks/train_finetune/{method}/{receiver}/{task}/seed{seed}.tsv"
    shell:
        "{CLI} train-finetune --split {input.split} --receiver-dir {input.receiver} --seed {wildcards.seed} "
        "--spec {params.spec:q} --threads {threads} --out {output.checkpoint} > {log} 2>&1"


rule eval_finetune:
    input:
        split=lambda w: task_input(w.task, "eval"),
        receiver=lambda w: model_input(w.receiver),
        # ancient() unless rewritten now (unless_rerun): its request (and code) is in params (finetune_request)
        checkpoint=lambda w: unless_rerun(
            f"data/checkpoints/finetune/{w.method}/{w.receiver}/{w.task}/seed{w.seed}.pt", spec(**finetune_request(w))),
    output:
        result="results/finetune/{method}/{receiver}/{task}/seed{seed}.csv",
        predictions="results/finetune/{method}/{receiver}/{task}/seed{seed}.predictions.csv",
    params:
        spec=lambda w: eval_request(w, data=task_request(w.task, "eval"), checkpoint=finetune_request(w)),
        code=code("eval-finetune"),
    log:
        "logs/eval_finetune/{method}/{receiver}/{task}/seed{seed}.log",
    shell:
        "{CLI} eval-finetune --task {wildcards.task} --receiver {wildcards.receiver} --split {input.split} "
        "--receiver-dir {input.receiver} --checkpoint {input.checkpoint} --spec {params.spec:q} "
        "--threads {threads} --out {output.result} > {log} 2>&1"
