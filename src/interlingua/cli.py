"""`interlingua` command line: the entry points Snakemake rules call.

Rules pass the config sections a step depends on as one JSON `--spec`, so Snakemake's
params tracking reruns exactly the steps whose inputs changed.
"""
from __future__ import annotations

import argparse
import json
import sys

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
                    device=device, dtype=dtype, model_alias=args.alias)
    if args.receipt:
        write_receipt(store, args.receipt, request=spec)


def cmd_train_bridge(args):
    from .train import train_bridge
    spec, device, dtype = _runtime(args)
    train_bridge(args.store, args.receiver_dir, args.out, bridge_name=args.bridge, bridge_spec=spec["bridge"],
                 task=spec["task"], train=spec["train"], seed=args.seed, device=device, dtype=dtype,
                 store_request=spec.get("store"))


def cmd_train_prompt_tuning(args):
    from .train import train_prompt_tuning
    spec, device, dtype = _runtime(args)
    train_prompt_tuning(args.split, args.receiver_dir, args.out, task=spec["task"], train=spec["train"],
                        prompt_tuning=spec["prompt_tuning"], seed=args.seed, device=device, dtype=dtype)


def cmd_eval_zero_shot(args):
    from .evaluate import evaluate_zero_shot
    spec, device, dtype = _runtime(args)
    evaluate_zero_shot(args.split, args.model_dir, args.out, task_name=args.task, task=spec["task"],
                       model_alias=args.alias, batch_size=spec["batch_size"], device=device, dtype=dtype)


def cmd_eval_bridge(args):
    from .evaluate import evaluate_bridge
    spec, device, dtype = _runtime(args)
    evaluate_bridge(args.store, args.receiver_dir, args.checkpoint, args.out, task_name=args.task, task=spec["task"],
                    sender=args.sender, receiver_alias=args.receiver, bridge_name=args.bridge,
                    batch_size=spec["batch_size"], device=device, dtype=dtype, store_request=spec.get("store"))


def cmd_eval_prompt_tuning(args):
    from .evaluate import evaluate_prompt_tuning
    spec, device, dtype = _runtime(args)
    evaluate_prompt_tuning(args.split, args.receiver_dir, args.checkpoint, args.out, task_name=args.task,
                           task=spec["task"], receiver_alias=args.receiver, batch_size=spec["batch_size"],
                           device=device, dtype=dtype)


def cmd_collect(args):
    from .report import collect, write_metrics
    print(collect(args.inputs, args.out))
    if args.metrics:
        print(write_metrics(args.out, args.metrics))


def cmd_report(args):
    from .report import FIGURES
    FIGURES[args.figure](args.results, args.out)


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
    command("materialize-task", cmd_materialize_task, "validate, subsample and save one task split",
            ("--task", req), ("--role", {"required": True, "choices": ["train", "eval"]}), ("--out", req))
    command("extract", cmd_extract, "sender hidden states of a split -> Zarr store",
            ("--alias", {"default": ""}), ("--model-dir", req), ("--split", req), ("--out", req),
            ("--receipt", {"help": "write the finished store's manifest here (what Snakemake tracks)"}),
            ("--batch-size", {"type": int, "default": 16}), ("--shard-tokens", {"type": int, "default": 65536}),
            ("--chunk-tokens", {"type": int, "default": 1024}))
    command("train-bridge", cmd_train_bridge, "train a bridge from a store into a frozen receiver",
            ("--bridge", req), ("--store", req), ("--receiver-dir", req), ("--seed", {"type": int, "default": 0}),
            ("--out", req))
    command("train-prompt-tuning", cmd_train_prompt_tuning, "prompt tuning on the receiver alone",
            ("--split", req), ("--receiver-dir", req), ("--seed", {"type": int, "default": 0}), ("--out", req))
    command("eval-zero-shot", cmd_eval_zero_shot, "zero-shot accuracy of a model reading the text",
            ("--task", req), ("--alias", req), ("--split", req), ("--model-dir", req), ("--out", req))
    command("eval-bridge", cmd_eval_bridge, "bridge accuracy with shuffled- and zero-source controls",
            ("--task", req), ("--sender", req), ("--receiver", req), ("--bridge", req), ("--store", req),
            ("--receiver-dir", req), ("--checkpoint", req), ("--out", req))
    command("eval-prompt-tuning", cmd_eval_prompt_tuning, "accuracy of a prompt-tuned receiver",
            ("--task", req), ("--receiver", req), ("--split", req), ("--receiver-dir", req),
            ("--checkpoint", req), ("--out", req))
    command("collect", cmd_collect, "concatenate tidy result CSVs", ("--out", req),
            ("--metrics", {"help": "also write mean accuracy per task and method as JSON (dvc metrics)"}),
            ("inputs", {"nargs": "+"}))
    command("report", cmd_report, "write one table or figure from tidy results",
            ("figure", {}), ("--results", req), ("--out", req))
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
