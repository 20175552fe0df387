# Serving measurements of the first pair's main bridge (tables 3 and 5) and its soft tokens' neighbours.


from types import SimpleNamespace


def main_bridge_run(sender, receiver, task):
    """The run whose bridge is served: the main bridge, first sweep seed."""
    return SimpleNamespace(bridge=STUDY["bridges"][0], sender=sender, receiver=receiver, task=task,
                           seed=str(STUDY["sweep_seeds"][0]))  # a string, as the training job's wildcard


def first_bridge_checkpoint(w):
    run = main_bridge_run(w.sender, w.receiver, w.task)
    return f"data/checkpoints/{run.bridge}/{run.sender}/{run.receiver}/{run.task}/seed{run.seed}.pt"


def relay_reading(w):
    """How the relay's receiver reads (as in eval_relay): its demonstrations, drawn with the first k-shot seed."""
    shots = config["relay"]["shots"]
    return {"shots": shots, "seed": config["few_shot"]["seeds"][0], "train_data": task_request(w.task, "train")} \
        if shots else {"shots": 0}


def speed_request(w):
    return spec(runtime=runtime(), task=prompt_spec(config["tasks"][w.task]), relay=relay_generation(),
                relay_reading=relay_reading(w),
                speed=config["speed"], data=task_request(w.task, "eval"),
                models=[model_request(w.sender), model_request(w.receiver)],
                bridge_run=bridge_request(main_bridge_run(w.sender, w.receiver, w.task)))


NEIGHBOURS = SimpleNamespace(sender=STUDY["pairs"][0]["sender"], receiver=STUDY["pairs"][0]["receiver"],
                             task=(STUDY["neighbours"]["tasks"] or STUDY["tasks"])[0])


rule measure_speed:
    """End-to-end latency at batch 1 (per stage) or throughput at several batch sizes: bridge vs text relay."""
    input:
        split=lambda w: task_input(w.task, "eval"),
        train_split=lambda w: task_input(w.task, "train"),
        sender=lambda w: model_input(w.sender),
        receiver=lambda w: model_input(w.receiver),
        # ancient() unless rewritten now (unless_rerun): its request (and code) is in params (bridge_run)
        bridge=lambda w: unless_rerun(first_bridge_checkpoint(w), bridge_spec(main_bridge_run(w.sender, w.receiver, w.task))),
    output:
        "results/speed/{kind}/{sender}/{receiver}/{task}.csv",
    wildcard_constraints:
        kind="latency|throughput",
    params:
        bridge=STUDY["bridges"][0],
        spec=speed_request,
        code=lambda w: code(f"measure-{w.kind}"),
    log:
        "logs/measure_speed/{kind}/{sender}/{receiver}/{task}.log",
    shell:
        "{CLI} measure-{wildcards.kind} --task {wildcards.task} --sender {wildcards.sender} "
        "--receiver {wildcards.receiver} --bridge {params.bridge} --split {input.split} --sender-dir {input.sender} "
        "--receiver-dir {input.receiver} --checkpoint {input.bridge} --train-split {input.train_split} "
        "--spec {params.spec:q} --threads {threads} --out {output} > {log} 2>&1"


rule soft_token_neighbours:
    """Nearest receiver-vocabulary tokens of each soft token, and the soft tokens' pairwise cosine."""
    input:
        store=lambda w: store_input(NEIGHBOURS.sender, NEIGHBOURS.task, "eval"),
        split=lambda w: task_input(NEIGHBOURS.task, "eval"),
        receiver=lambda w: model_input(NEIGHBOURS.receiver),
        bridge=lambda w: unless_rerun(first_bridge_checkpoint(NEIGHBOURS), bridge_spec(main_bridge_run(
            NEIGHBOURS.sender, NEIGHBOURS.receiver, NEIGHBOURS.task))),  # its request is in params (bridge_run)
    output:
        multiext("figures/soft_token_neighbours", ".md", ".png"),
    params:
        store=f"data/activations/{NEIGHBOURS.sender}/{NEIGHBOURS.task}/{split_name(NEIGHBOURS.task, 'eval')}.zarr",
        spec=lambda w: spec(runtime=runtime(), task=prompt_spec(config["tasks"][NEIGHBOURS.task]),
                            store=extract_request(NEIGHBOURS.sender, NEIGHBOURS.task, "eval"),
                            bridge_run=bridge_request(main_bridge_run(NEIGHBOURS.sender, NEIGHBOURS.receiver,
                                                                      NEIGHBOURS.task))),
        code=code("soft-token-neighbours"),
    log:
        "logs/soft_token_neighbours.log",
    shell:
        "{CLI} soft-token-neighbours --store {params.store} --receiver-dir {input.receiver} "
        "--checkpoint {input.bridge} --split {input.split} --spec {params.spec:q} --threads {threads} "
        "--out figures/soft_token_neighbours > {log} 2>&1"
