"""`interlingua` command line: the entry points Snakemake rules call.

Rules pass the config sections a step depends on as one JSON `--spec`, so Snakemake's
params tracking reruns exactly the steps whose inputs changed.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import InterlinguaError
from .runtime import resolve_device, resolve_dtype, set_threads


def _runtime(args):
    set_threads(args.threads)
    spec = json.loads(args.spec) if getattr(args, "spec", None) else {}
    runtime = spec.get("runtime", {"device": "auto", "dtype": "auto"})
    device = resolve_device(runtime["device"])
    return spec, device, resolve_dtype(runtime["dtype"], device)


def cmd_validate(args):
    from .config import load_config
    config = load_config(*args.config)
    print(f"config OK: {len(config['models'])} models, {len(config['tasks'])} tasks, "
          f"study = {config['study']['tasks']} x {len(config['study']['pairs'])} pair(s)")


def cmd_materialize_model(args):
    from .zoo import materialize
    spec, _, _ = _runtime(args)
    print(materialize(args.alias, spec["model"], args.out))


def cmd_continue_model(args):
    from .continued import materialize_continued
    spec, _, _ = _runtime(args)
    print(materialize_continued(args.alias, spec["model"], args.base_dir, args.datasets, args.out))


def cmd_materialize_task(args):
    from .tasks import materialize_split
    spec, _, _ = _runtime(args)
    meta = materialize_split(args.task, spec["task"], spec["datasets"], args.role, args.out, request=spec["task"])
    print(json.dumps(meta))


def cmd_extract(args):
    from .extract import extract
    spec, device, dtype = _runtime(args)
    from .store import write_receipt
    ex = spec["extract"]
    store = extract(args.model_dir, args.split, args.out, sender_prompt=spec["sender_prompt"], layers=ex["layers"],
                    storage_dtype=ex["storage_dtype"], kv_cache=ex.get("kv_cache", False),
                    batch_size=args.batch_size, shard_tokens=args.shard_tokens, chunk_tokens=args.chunk_tokens,
                    device=device, dtype=dtype, model_alias=args.alias, code=spec.get("code", ""),
                    limit=ex.get("rows"), **({"max_tokens": spec["max_tokens"]} if "max_tokens" in spec else {}))
    if args.receipt:
        write_receipt(store, args.receipt, request=spec)


def _evaluation(args, spec, **needed) -> dict | None:
    """The --eval-* options of a training command: evaluate the result in the same process (the receiver
    is already loaded). spec["evaluate"] holds the eval batch size (and the eval store's request).
    needed: the command's own eval inputs, {flag: value}. None without --eval-out."""
    if not args.eval_out:
        return None
    needed.update({"--task": args.task, "--receiver": args.receiver, "spec.evaluate": spec.get("evaluate")})
    missing = [flag for flag, value in needed.items() if not value]
    if missing:
        raise InterlinguaError(f"--eval-out needs {', '.join(missing)}")
    return spec["evaluate"]


def cmd_train_bridge(args):
    from .store import with_split
    from .train import train_bridge
    from .zoo import shared_frozen_models
    spec, device, dtype = _runtime(args)
    evaluation = _evaluation(args, spec, **{"--eval-store": args.eval_store, "--sender": args.sender})
    with shared_frozen_models():
        train_bridge(args.store, args.receiver_dir, args.out, bridge_name=args.bridge, bridge_spec=spec["bridge"],
                     task=spec["task"], train=spec["train"], seed=args.seed, device=device, dtype=dtype,
                     store_request=with_split(spec.get("store"), args.split), code=spec.get("code", ""))
        if evaluation is not None:
            from .evaluate import evaluate_bridge
            evaluate_bridge(args.eval_store, args.receiver_dir, args.out, args.eval_out, task_name=args.task,
                            task=spec["task"], sender=args.sender, receiver_alias=args.receiver,
                            bridge_name=args.bridge, batch_size=evaluation["batch_size"], device=device,
                            dtype=dtype, store_request=with_split(evaluation.get("store"), args.eval_split))


def cmd_train_prompt_tuning(args):
    from .train import train_prompt_tuning
    from .zoo import shared_frozen_models
    spec, device, dtype = _runtime(args)
    evaluation = _evaluation(args, spec, **{"--eval-split": args.eval_split})
    with shared_frozen_models():
        train_prompt_tuning(args.split, args.receiver_dir, args.out, task=spec["task"], train=spec["train"],
                            prompt_tuning=spec["prompt_tuning"], seed=args.seed, device=device, dtype=dtype,
                            code=spec.get("code", ""))
        if evaluation is not None:
            from .evaluate import evaluate_prompt_tuning
            evaluate_prompt_tuning(args.eval_split, args.receiver_dir, args.out, args.eval_out,
                                   task_name=args.task, task=spec["task"], receiver_alias=args.receiver,
                                   batch_size=evaluation["batch_size"], device=device, dtype=dtype)


def cmd_train_finetune(args):
    from .finetune import train_finetune
    spec, device, dtype = _runtime(args)
    train_finetune(args.split, args.receiver_dir, args.out, task=spec["task"], train=spec["train"],
                   finetune=spec["finetune"], seed=args.seed, device=device, dtype=dtype)


def cmd_eval_finetune(args):
    from .finetune import evaluate_finetune
    spec, device, dtype = _runtime(args)
    evaluate_finetune(args.split, args.receiver_dir, args.checkpoint, args.out, task_name=args.task,
                      task=spec["task"], receiver_alias=args.receiver, batch_size=spec["batch_size"],
                      device=device, dtype=dtype)


def cmd_eval_zero_shot(args):
    from .evaluate import evaluate_zero_shot
    spec, device, dtype = _runtime(args)
    evaluate_zero_shot(args.split, args.model_dir, args.out, task_name=args.task, task=spec["task"],
                       model_alias=args.alias, batch_size=spec["batch_size"], device=device, dtype=dtype)


def cmd_eval_random(args):
    from .evaluate import evaluate_random
    spec, _, _ = _runtime(args)
    evaluate_random(args.split, args.out, task_name=args.task, task=spec["task"], seeds=spec["seeds"])


def cmd_eval_majority(args):
    from .evaluate import evaluate_majority
    spec, _, _ = _runtime(args)
    evaluate_majority(args.train_split, args.split, args.out, task_name=args.task, task=spec["task"])


def cmd_eval_bridge(args):
    from .evaluate import evaluate_bridge
    from .store import with_split
    spec, device, dtype = _runtime(args)
    evaluate_bridge(args.store, args.receiver_dir, args.checkpoint, args.out, task_name=args.task, task=spec["task"],
                    sender=args.sender, receiver_alias=args.receiver, bridge_name=args.bridge,
                    batch_size=spec["batch_size"], device=device, dtype=dtype,
                    store_request=with_split(spec.get("store"), args.split))


def cmd_eval_prompt_tuning(args):
    from .evaluate import evaluate_prompt_tuning
    spec, device, dtype = _runtime(args)
    evaluate_prompt_tuning(args.split, args.receiver_dir, args.checkpoint, args.out, task_name=args.task,
                           task=spec["task"], receiver_alias=args.receiver, batch_size=spec["batch_size"],
                           device=device, dtype=dtype)


def cmd_eval_few_shot(args):
    from .few_shot import evaluate_few_shot
    spec, device, dtype = _runtime(args)
    evaluate_few_shot(args.train_split, args.split, args.model_dir, args.out, task_name=args.task, task=spec["task"],
                      model_alias=args.alias, shots=spec["few_shot"]["shots"], seed=args.seed,
                      batch_size=spec["batch_size"], device=device, dtype=dtype)


def cmd_generate_relay(args):
    from .relay import generate_relay
    spec, device, dtype = _runtime(args)
    generate_relay(args.sender_dir, args.split, args.out, task=spec["task"], mode=args.mode,
                   max_new_tokens=spec["relay"]["max_new_tokens"], batch_size=spec["batch_size"],
                   device=device, dtype=dtype)


def cmd_eval_relay(args):
    from .relay import evaluate_relay
    spec, device, dtype = _runtime(args)
    evaluate_relay(args.relay, args.split, args.receiver_dir, args.out, task_name=args.task, task=spec["task"],
                   mode=args.mode, sender_alias=args.sender, receiver_alias=args.receiver,
                   batch_size=spec["batch_size"], device=device, dtype=dtype, shots=spec["relay"]["shots"],
                   seeds=spec.get("seeds", []), train_split=args.train_split)


def _speed_kwargs(args, spec, device, dtype) -> dict:
    reading = spec.get("relay_reading", {})
    return dict(task_name=args.task, task=spec["task"], sender_alias=args.sender, receiver_alias=args.receiver,
                bridge_name=args.bridge, max_new_tokens=spec["relay"]["max_new_tokens"], device=device, dtype=dtype,
                train_split=args.train_split, relay_shots=reading.get("shots", 0), relay_seed=reading.get("seed", 0))


def cmd_measure_latency(args):
    from .speed import measure_latency
    spec, device, dtype = _runtime(args)
    speed = spec.get("speed", {})
    measure_latency(args.split, args.sender_dir, args.receiver_dir, args.checkpoint, args.out,
                    examples=speed.get("latency_examples", 32), warmup=speed.get("warmup", 2),
                    **_speed_kwargs(args, spec, device, dtype))


def cmd_measure_throughput(args):
    from .speed import measure_throughput
    spec, device, dtype = _runtime(args)
    speed = spec.get("speed", {})
    measure_throughput(args.split, args.sender_dir, args.receiver_dir, args.checkpoint, args.out,
                       batch_sizes=speed.get("batch_sizes", [1, 4, 16]), batches=speed.get("batches", 2),
                       **_speed_kwargs(args, spec, device, dtype))


def cmd_soft_token_neighbours(args):
    from .speed import soft_token_neighbours
    from .store import with_split
    spec, device, _ = _runtime(args)
    options = spec.get("soft_token_neighbours", {})
    print(*soft_token_neighbours(args.store, args.receiver_dir, args.checkpoint, args.out, task=spec["task"],
                                 examples_per_class=options.get("examples_per_class", 2),
                                 top_k=options.get("top_k", 5), split_path=args.split,
                                 store_request=with_split(spec.get("store"), args.split), device=device))


def cmd_pool_corpus(args):
    from .studies.kv_alignment.corpus import CorpusConfig, prepare_corpus, read_settings
    from .zoo import load_tokenizer
    _runtime(args)
    config = CorpusConfig(**read_settings(args.config, CorpusConfig)) if args.config else CorpusConfig()
    print(prepare_corpus(args.datasets, load_tokenizer(args.model_dir), args.out, config))


def cmd_pool_pretrain(args):
    from .studies.kv_alignment.pretrain import load_pretrain_config, pretrain
    _runtime(args)
    snapshots = {}
    for item in args.snapshot or []:
        step, sep, path = item.partition("=")
        if not sep or not step.isdigit():
            raise InterlinguaError(f"--snapshot takes STEP=DIR, got {item!r}")
        snapshots[int(step)] = path
    print(pretrain(load_pretrain_config(args.config), args.corpus, args.out, parent=args.parent,
                   snapshot_dirs=snapshots, resume_dir=args.resume_dir))


def _members(items: list[str], command: str) -> dict[str, str]:
    """NAME=DIR arguments as {name: dir}."""
    members = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep:
            raise InterlinguaError(f"{command} takes members as NAME=DIR, got {item!r}")
        members[name] = path
    return members


def cmd_kv_align(args):
    from .studies.kv_alignment.run import align_job
    spec, device, _ = _runtime(args)
    plan = json.loads(args.plan)
    members = _members(args.members, "kv-align")
    paths = [tuple(p) for p in plan["paths"]] if plan.get("paths") else None
    print(align_job(members, args.corpus, args.tokenizer_dir, plan["train"], args.seed, args.out,
                    train_members=plan.get("train_members"), paths=paths, start_from=args.start_from,
                    device=device, run_key=args.plan))


def cmd_kv_portability(args):
    from .studies.kv_alignment.portability import portability_job
    _, device, _ = _runtime(args)
    members = _members(args.members, "kv-portability")
    print(portability_job(members, args.corpus, args.tokenizer_dir, args.translator, args.config, args.seed,
                          args.out, device=device))


def cmd_kv_report(args):
    from .studies.kv_alignment.report import write_all
    spec, _, _ = _runtime(args)
    for path in write_all({"kv_alignment": spec["kv_alignment"]}, args.out_dir):
        print(path)


def _dense_tasks(items: list[str]) -> dict[str, list[str]]:
    """--task NAME=SPLIT=SENDER_STORE=RECEIVER_STORE arguments of dense-train."""
    out = {}
    for item in items:
        parts = item.split("=")
        if len(parts) != 4 or not all(parts):
            raise InterlinguaError(f"dense-train --task {item!r}: expected NAME=SPLIT=SENDER_STORE=RECEIVER_STORE")
        out[parts[0]] = parts[1:]
    return out


def cmd_dense_train(args):
    from .studies.dense_kv.run import train_job
    spec, device, _ = _runtime(args)
    request = spec["request"]
    tasks = {name: {"task": request["tasks"][name]["task"], "split": split, "sender_store": sender,
                    "receiver_store": receiver}
             for name, (split, sender, receiver) in _dense_tasks(args.task).items()}
    print(train_job(args.sender_dir, args.receiver_dir, tasks, request["prompts"], request["train"], args.seed,
                    args.out, device=device, run_key=args.spec))


def cmd_dense_evaluate(args):
    from . import zoo
    from .fingerprint import fingerprint
    from .studies.dense_kv.run import evaluate_job
    spec, device, _ = _runtime(args)
    request = spec["request"]
    base = {"sender": zoo.read_manifest(args.sender_dir)["alias"], "receiver": zoo.read_manifest(args.receiver_dir)["alias"],
            "bridge": args.variant, "fingerprint": f"{args.direction}:{fingerprint(request)[:16]}"}
    print(evaluate_job(args.run, args.sender_dir, args.receiver_dir, args.task, request["task"], args.split,
                       args.store, request["prompts"], args.out, base=base, seed=args.seed,
                       keep_fractions=request.get("keep_fractions", []), alone=request.get("alone", True),
                       zero=request.get("zero", True), receiver_store=args.receiver_store, device=device,
                       batch_size=request.get("batch_size", 16)))


def cmd_dense_shared_space(args):
    from . import zoo
    from .fingerprint import fingerprint
    from .studies.dense_kv.shared_space import VARIANT, shared_space_job
    spec, device, _ = _runtime(args)
    request = spec["request"]
    base = {"sender": zoo.read_manifest(args.sender_dir)["alias"], "receiver": zoo.read_manifest(args.receiver_dir)["alias"],
            "bridge": VARIANT, "fingerprint": f"{args.direction}:{fingerprint(request)[:16]}"}
    print(shared_space_job(args.translator, request["members"]["sender"], request["members"]["receiver"],
                           args.sender_dir, args.receiver_dir, args.task, request["task"], args.split, args.store,
                           request["prompts"], args.out, base=base, seed=args.seed, device=device,
                           batch_size=request.get("batch_size", 16)))


def cmd_dense_text(args):
    from .studies.dense_kv.text import limit_job
    spec, device, dtype = _runtime(args)
    for path in limit_job(args.relay, args.split, args.train_split, args.sender_dir, args.receiver_dir, args.out_dir,
                          task_name=args.task, task=spec["task"], limits=spec["limits"], shots=spec["relay"]["shots"],
                          seeds=spec.get("seeds", []), batch_size=spec["batch_size"], device=device, dtype=dtype):
        print(path)


def cmd_dense_report(args):
    from .studies.dense_kv.report import write_all
    spec, _, _ = _runtime(args)
    for path in write_all(spec["config"], args.out_dir):
        print(path)


def cmd_collect(args):
    from .report import collect, write_metrics
    print(collect(args.inputs, args.out, args.predictions, args.paired_tests))
    if args.metrics:
        print(write_metrics(args.out, args.metrics))


def cmd_report(args):
    from .report import FIGURES
    spec, _, _ = _runtime(args)
    unknown = [name for name in args.figures if name not in FIGURES]
    if unknown:
        raise InterlinguaError(f"unknown table or figure {unknown} (known: {sorted(FIGURES)})")
    study = spec.get("study")
    if study is not None and "few_shot_seeds" in spec:  # k-shot and relay rows: their own planned seeds
        study = {**study, "few_shot_seeds": spec["few_shot_seeds"]}
    for name in args.figures:
        FIGURES[name](args.results, Path(args.out_dir) / name, **({"study": study} if study is not None else {}))


def cmd_figures_readme(args):
    import subprocess

    from .report import figures_readme
    spec, _, _ = _runtime(args)
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True).stdout.strip()
        commit += " (with uncommitted changes)" if dirty else ""
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown (not a git checkout)"
    figures_readme(args.out, args.outputs, spec["config_fingerprint"], commit, prune=args.prune)


def cmd_store(args):
    from . import store

    if args.action == "info":
        for key, value in store.summary(args.path).items():
            print(f"{key:>15}: {value}")
    elif args.action == "verify":
        problems = store.verify(args.path)
        if problems:
            raise InterlinguaError(f"{args.path} is damaged:\n  " + "\n  ".join(problems))
        print(f"{args.path}: OK ({len(store.read_manifest(args.path)['checksums'])} files match their checksums)")
    elif args.action == "export":
        print(store.export_hdf5(args.path, args.other))
    elif args.action == "import":
        print(store.import_hdf5(args.path, args.other))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="interlingua", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name, func, help_text, *arguments):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--spec", help="JSON with the config sections this step reads")
        p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
        for flag, kwargs in arguments:
            p.add_argument(flag, **kwargs)
        p.set_defaults(func=func)

    req = {"required": True}
    command("validate", cmd_validate, "validate config file(s), merged in order",
            ("config", {"nargs": "+"}))
    command("materialize-model", cmd_materialize_model, "load a model from its source once; save safetensors",
            ("--alias", req), ("--out", req))
    command("continue-model", cmd_continue_model,
            "a model briefly trained further on a text corpus (models.<alias>.continued); saved as materialize-model",
            ("--alias", req), ("--base-dir", req), ("--datasets", req), ("--out", req))
    command("materialize-task", cmd_materialize_task, "validate, subsample and save one task split",
            ("--task", req), ("--role", {"required": True, "choices": ["train", "eval"]}), ("--out", req))
    command("extract", cmd_extract, "sender hidden states of a split -> Zarr store",
            ("--alias", {"default": ""}), ("--model-dir", req), ("--split", req), ("--out", req),
            ("--receipt", {"help": "write the finished store's manifest here (what Snakemake tracks)"}),
            ("--batch-size", {"type": int, "default": 16}), ("--shard-tokens", {"type": int, "default": 65536}),
            ("--chunk-tokens", {"type": int, "default": 1024}))
    # Optional: evaluate right after training, in the same process (as eval-bridge / eval-prompt-tuning would).
    then_evaluate = [("--eval-out", {"help": "also evaluate the trained result and write its tidy CSV here"}),
                     ("--task", {"help": "task name in the result rows (with --eval-out)"}),
                     ("--receiver", {"help": "receiver alias in the result rows (with --eval-out)"})]
    command("train-bridge", cmd_train_bridge, "train a bridge from a store into a frozen receiver (then evaluate it)",
            ("--bridge", req), ("--store", req), ("--receiver-dir", req), ("--seed", {"type": int, "default": 0}),
            ("--out", req), *then_evaluate, ("--sender", {"help": "sender alias in the result rows"}),
            ("--eval-store", {"help": "the eval split's activation store (with --eval-out)"}),
            ("--split", {"help": "the materialized split the store holds: its content hash is checked"}),
            ("--eval-split", {"help": "the materialized split the eval store holds: its content hash is checked"}))
    command("train-prompt-tuning", cmd_train_prompt_tuning, "prompt tuning on the receiver alone (then evaluate it)",
            ("--split", req), ("--receiver-dir", req), ("--seed", {"type": int, "default": 0}), ("--out", req),
            *then_evaluate, ("--eval-split", {"help": "the eval split (with --eval-out)"}))
    command("train-finetune", cmd_train_finetune, "LoRA or last-N-blocks fine-tuning of the receiver reading the text",
            ("--split", req), ("--receiver-dir", req), ("--seed", {"type": int, "default": 0}), ("--out", req))
    command("eval-finetune", cmd_eval_finetune, "accuracy of a fine-tuned receiver reading the text",
            ("--task", req), ("--receiver", req), ("--split", req), ("--receiver-dir", req),
            ("--checkpoint", req), ("--out", req))
    command("eval-zero-shot", cmd_eval_zero_shot, "zero-shot accuracy of a model reading the text",
            ("--task", req), ("--alias", req), ("--split", req), ("--model-dir", req), ("--out", req))
    command("eval-random", cmd_eval_random, "chance accuracy: seeded uniform random labels",
            ("--task", req), ("--split", req), ("--out", req))
    command("eval-majority", cmd_eval_majority, "majority class: the most frequent training label on every eval row",
            ("--task", req), ("--train-split", req), ("--split", req), ("--out", req))
    command("eval-bridge", cmd_eval_bridge, "bridge accuracy with shuffled- and zero-source controls",
            ("--task", req), ("--sender", req), ("--receiver", req), ("--bridge", req), ("--store", req),
            ("--receiver-dir", req), ("--checkpoint", req), ("--out", req),
            ("--split", {"help": "the materialized split the store holds: its content hash is checked"}))
    command("eval-prompt-tuning", cmd_eval_prompt_tuning, "accuracy of a prompt-tuned receiver",
            ("--task", req), ("--receiver", req), ("--split", req), ("--receiver-dir", req),
            ("--checkpoint", req), ("--out", req))
    mode = {"required": True, "choices": ["summary", "cot"]}
    command("eval-few-shot", cmd_eval_few_shot, "k-shot accuracy of a model reading balanced demonstrations",
            ("--task", req), ("--alias", req), ("--train-split", req), ("--split", req), ("--model-dir", req),
            ("--seed", {"type": int, "default": 0}), ("--out", req))
    command("generate-relay", cmd_generate_relay, "sender summaries or reasoning of a split -> JSON Lines (resumable)",
            ("--mode", mode), ("--sender-dir", req), ("--split", req), ("--out", req))
    command("eval-relay", cmd_eval_relay, "receiver accuracy from text relays, with the relay's cost",
            ("--task", req), ("--mode", mode), ("--sender", req), ("--receiver", req), ("--relay", req),
            ("--train-split", {"help": "demonstrations for the receiver (needed when relay.shots > 0)"}),
            ("--split", req), ("--receiver-dir", req), ("--out", req))
    serving = [("--task", req), ("--sender", req), ("--receiver", req), ("--bridge", req), ("--split", req),
               ("--sender-dir", req), ("--receiver-dir", req), ("--checkpoint", req), ("--out", req),
               ("--train-split", {"help": "the relay receiver's demonstrations are drawn from it (relay.shots)"})]
    command("measure-latency", cmd_measure_latency,
            "batch-1 end-to-end latency per stage: bridge (sender up to its layer) vs text relay", *serving)
    command("measure-throughput", cmd_measure_throughput,
            "samples/s at each batch size: bridge, receiver reading the text, text relay", *serving)
    command("soft-token-neighbours", cmd_soft_token_neighbours,
            "nearest receiver-vocabulary tokens and pairwise cosine of soft tokens -> OUT.md, OUT.png",
            ("--store", req), ("--receiver-dir", req), ("--checkpoint", req),
            ("--split", {"help": "the store's split: shows each example's text"}),
            ("--out", {"required": True, "help": "output prefix, e.g. figures/soft_token_neighbours"}))
    command("pool-corpus", cmd_pool_corpus, "study 2: tokenize, split the pool corpora; build the pool vocabulary",
            ("--model-dir", {"required": True, "help": "materialized model whose tokenizer the pool shares"}),
            ("--datasets", {"required": True, "help": "the datasets mirror (paths.datasets)"}), ("--out", req),
            ("--config", {"help": "JSON, YAML or a file of CorpusConfig keys (vocab_size, held_out_fraction)"}))
    command("pool-pretrain", cmd_pool_pretrain, "study 2: pre-train one pool member (resumable; an expert with --parent)",
            ("--config", {"required": True, "help": "JSON, YAML or a file of PretrainConfig keys"}),
            ("--corpus", {"required": True, "help": "the pool-corpus output"}), ("--out", req),
            ("--parent", {"help": "member dir an expert branches from"}),
            ("--snapshot", {"action": "append", "metavar": "STEP=DIR",
                            "help": "where config.snapshots steps go (default OUT_step<STEP>)"}),
            ("--resume-dir", {"help": "resumable state (default .<OUT>.resume beside OUT)"}))
    command("kv-align", cmd_kv_align, "study 2: train (or fit) a translator over a pool; curves and per-window scores",
            ("--plan", {"required": True, "help": "JSON run plan (studies/kv_alignment/plan.py): train, paths, ..."}),
            ("--seed", {"type": int, "default": 0}), ("--corpus", req), ("--tokenizer-dir", req), ("--out", req),
            ("--start-from", {"help": "a translator.pt whose adapters are kept (extensibility)"}),
            ("members", {"nargs": "+", "metavar": "NAME=DIR"}))
    command("dense-train", cmd_dense_train,
            "study 3: train one direction's cache transformation (phase 1 reconstruction, phase 2 generation)",
            ("--sender-dir", req), ("--receiver-dir", req), ("--seed", {"type": int, "default": 0}), ("--out", req),
            ("--task", {"action": "append", "required": True, "metavar": "NAME=SPLIT=SENDER_STORE=RECEIVER_STORE"}))
    command("dense-evaluate", cmd_dense_evaluate,
            "study 3: a trained direction on one task, both modes, with controls and baselines",
            ("--task", req), ("--direction", req), ("--variant", req), ("--seed", {"type": int, "default": 0}),
            ("--sender-dir", req), ("--receiver-dir", req), ("--split", req), ("--store", req), ("--run", req),
            ("--out", req),
            ("--receiver-store", {"help": "the receiver's own cache of the split: score the fuser baseline"}))
    command("dense-shared-space", cmd_dense_shared_space,
            "study 3: study 2's shared space (a kv-align translator.pt) as a direction's baseline on one task",
            ("--task", req), ("--direction", req), ("--seed", {"type": int, "default": 0}), ("--sender-dir", req),
            ("--receiver-dir", req), ("--split", req), ("--store", req), ("--translator", req), ("--out", req))
    command("dense-text", cmd_dense_text,
            "study 3: study 1's text relay cut to shorter limits (dense_kv.text_limits), read by the receiver",
            ("--task", req), ("--relay", req), ("--split", req), ("--train-split", req), ("--sender-dir", req),
            ("--receiver-dir", req), ("--out-dir", req))
    command("dense-report", cmd_dense_report, "study 3: every table and figure from its scored runs",
            ("--out-dir", req))
    command("kv-portability", cmd_kv_portability,
            "study 2, Figure 5: soft prompts tuned on A, ported A -> S -> B, against B's random and tuned prompts",
            ("--config", {"help": "JSON, YAML or a file of PortabilityConfig keys (source, target, sampler, ...)"}),
            ("--translator", {"required": True, "help": "a kv-align translator.pt whose members include A and B"}),
            ("--seed", {"type": int, "default": 0}), ("--corpus", req), ("--tokenizer-dir", req), ("--out", req),
            ("members", {"nargs": "+", "metavar": "NAME=DIR",
                         "help": "A, B (and the sampler), named as in the kv-align run; A and B default to the first two"}))
    command("kv-report", cmd_kv_report, "study 2: every table and figure from the runs and members",
            ("--out-dir", {"default": "figures/kv_alignment"}))
    command("collect", cmd_collect, "concatenate tidy result CSVs", ("--out", req),
            ("--metrics", {"help": "also write mean accuracy per task and method as JSON (dvc metrics)"}),
            ("--predictions", {"help": "also concatenate the inputs' per-example predictions (NAME.predictions.csv)"}),
            ("--paired-tests", {"help": "also write McNemar tests of every bridge run against its controls"}),
            ("inputs", {"nargs": "+"}))
    command("report", cmd_report, "write tables and figures from tidy results: OUT_DIR/NAME.{md,tex} or .png",
            ("figures", {"nargs": "+", "metavar": "NAME"}), ("--results", req),
            ("--out-dir", {"default": "figures"}))
    command("figures-readme", cmd_figures_readme, "list every table and figure with the config and commit",
            ("--out", req), ("outputs", {"nargs": "+"}),
            ("--prune", {"action": "store_true",
                         "help": "remove the other files beside --out (not subfolders): an earlier config's"}))
    store = sub.add_parser("store", help="inspect, verify, export or import an activation store")
    actions = store.add_subparsers(dest="action", required=True)
    for action, help_text, other in [
        ("info", "model, task, layers, contents, rows, tokens, bytes, files", None),
        ("verify", "check every file against the manifest's checksums", None),
        ("export", "write an equivalent HDF5 file: store export PATH OUT.h5", "OUT.h5"),
        ("import", "rebuild a store from HDF5: store import IN.h5 PATH", "PATH"),
    ]:
        p = actions.add_parser(action, help=help_text)
        p.add_argument("path", metavar="IN.h5" if action == "import" else "PATH")
        if other:
            p.add_argument("other", metavar=other)
        p.set_defaults(func=cmd_store)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except InterlinguaError as exc:
        print(f"interlingua: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
