"""The study as a list of jobs: which runs every table and figure needs.

`study` in the config names the experiments; this module turns them into output paths
(what Snakemake asks for) and resolves the settings of one run. Sweeps are bridge *variants*:
`perceiver~num_queries=16` is the `perceiver` entry of `bridges:` with one option changed,
so every sweep point is an ordinary `train_bridge` job with its own checkpoint.

Settings of a run, lowest precedence first: `bridges.<base>` and `train`, then the task's
`overrides` (e.g. the paper's layer 31 for AG News), then the variant's own change.
"""
from __future__ import annotations

import re

from .errors import ConfigError

VARIANT_SEP = "~"
TRAIN_KEYS = {"diversity_weight", "steps", "lr", "batch_size"}  # variant keys that change training, not the bridge
VARIANT = re.compile(r"^(?P<base>[A-Za-z0-9][A-Za-z0-9_.-]*)((~[a-z_]+=[A-Za-z0-9_.+-]+)*)$")
RELAY_MODES = {"text_relay": "summary", "cot_relay": "cot"}


def variant_name(base: str, **changes) -> str:
    return base + "".join(f"{VARIANT_SEP}{key}={value}" for key, value in changes.items())


def parse_variant(name: str) -> tuple[str, dict]:
    """`perceiver~dim=256` -> ("perceiver", {"dim": 256}); values are parsed as YAML scalars."""
    import yaml

    match = VARIANT.match(name)
    if not match:
        raise ConfigError(f"bridge variant '{name}' is not of the form base~key=value")
    changes = {}
    for part in name.split(VARIANT_SEP)[1:]:
        key, _, value = part.partition("=")
        changes[key] = yaml.safe_load(value)
    return match["base"], changes


def run_settings(config: dict, bridge: str, task: str) -> tuple[dict, dict]:
    """(bridge spec, train section) of one bridge run on one task."""
    base, changes = parse_variant(bridge)
    if base not in config["bridges"]:
        raise ConfigError(f"bridge '{bridge}': no entry '{base}' under bridges (known: {sorted(config['bridges'])})")
    overrides = config["tasks"][task].get("overrides", {})
    spec = {**config["bridges"][base], **overrides.get("bridge", {})}
    train = {**config["train"], **overrides.get("train", {})}
    for key, value in changes.items():
        (train if key in TRAIN_KEYS else spec)[key] = value
    return spec, train


def task_train(config: dict, task: str) -> dict:
    """The train section for a task (its overrides applied): baselines get the bridge's budget."""
    return {**config["train"], **config["tasks"][task].get("overrides", {}).get("train", {})}


def finetune_methods(config: dict) -> dict[str, dict]:
    """{method name (lora, finetune_last2, ...): finetune dict} from the `finetune` section."""
    from .finetune import method_specs
    return method_specs(config["finetune"])


def finetune_spec(config: dict, method: str) -> dict:
    methods = finetune_methods(config)
    if method not in methods:
        raise ConfigError(f"finetune method '{method}' is not configured (known: {sorted(methods)})")
    return methods[method]


# -- what each experiment needs ---------------------------------------------------------------
def token_scaling_names(study: dict) -> list[str]:
    """Table 7's bridge names: the main bridge itself where M is its own `num_queries` (one run, not two
    identical ones under two names), `<main>~num_queries=M` elsewhere. `study["main_num_queries"]` is the main
    bridge's M (study_view adds it)."""
    main = study["bridges"][0]
    return [main if m == study.get("main_num_queries") else variant_name(main, num_queries=m)
            for m in study["token_scaling"]["num_queries"]]


def study_view(config: dict) -> dict:
    """The `study` section plus what the reports need from elsewhere in the config: the main bridge's M."""
    main = config["study"]["bridges"][0]
    return {**config["study"], "main_num_queries": config["bridges"].get(main, {}).get("num_queries")}


def sweep_variants(study: dict) -> dict[str, list[str]]:
    """{experiment: [bridge variant names]} for the single-pair sweeps (tables 1, 7, 10)."""
    main = study["bridges"][0]
    token = token_scaling_names(study)
    hyper = [variant_name(main, **{key: value}) for key, values in study["hyperparameters"]["sweep"].items()
             for value in values]
    return {"ablation": list(study["ablation"]["bridges"]), "token_scaling": token, "hyperparameters": hyper}


def bridge_runs(config: dict) -> list[dict]:
    """Every bridge training/evaluation run: {bridge, sender, receiver, task, seed}."""
    study = config["study"]
    runs = []
    for task in study["tasks"]:
        for pair in study["pairs"]:
            if task in pair.get("tasks", study["tasks"]):
                runs += [dict(pair_key(pair), bridge=b, task=task, seed=s) for b in study["bridges"]
                         for s in pair.get("seeds", study["seeds"])]
    first = pair_key(study["pairs"][0])
    variants = sweep_variants(study_view(config))
    sweeps = [("ablation", study["ablation"]["tasks"]), ("token_scaling", study["token_scaling"]["tasks"]),
              ("hyperparameters", study["hyperparameters"]["tasks"])]
    for experiment, tasks in sweeps:
        runs += [dict(first, bridge=b, task=t, seed=s) for t in tasks for b in variants[experiment]
                 for s in study["sweep_seeds"]]
    for task in study["same_model"]["tasks"]:
        for model in pair_models(study):
            runs += [dict(sender=model, receiver=model, bridge=study["bridges"][0], task=task, seed=s)
                     for s in study["sweep_seeds"]]
    unique = {tuple(sorted(r.items())): r for r in runs}
    return list(unique.values())


def pair_key(pair: dict) -> dict:
    """{sender, receiver} of a `pairs` entry, without its own options (`seeds`, `tasks`, `text_relay`:
    e.g. the reverse direction on fewer tasks and one seed)."""
    return {"sender": pair["sender"], "receiver": pair["receiver"]}


def pair_models(study: dict) -> list[str]:
    return sorted({m for p in study["pairs"] for m in (p["sender"], p["receiver"])})


def senders(config: dict) -> list[str]:
    return sorted({r["sender"] for r in bridge_runs(config)} | {p["sender"] for p in config["study"]["pairs"]})


def bridge_result(r: dict) -> str:
    return f"results/bridge/{r['bridge']}/{r['sender']}/{r['receiver']}/{r['task']}/seed{r['seed']}.csv"


def bridge_checkpoint(r: dict) -> str:
    return f"data/checkpoints/{r['bridge']}/{r['sender']}/{r['receiver']}/{r['task']}/seed{r['seed']}.pt"


def study_results(config: dict) -> list[str]:
    """Every tidy result file the study needs (collected into results/results.csv)."""
    study = config["study"]
    out = [bridge_result(r) for r in bridge_runs(config)]
    for task in study["tasks"]:
        out += [f"results/random/{task}.csv", f"results/majority/{task}.csv"]
        out += [f"results/zero_shot/{m}/{task}.csv" for m in study["zero_shot"]]
        for seed in config["few_shot"]["seeds"]:
            out += [f"results/few_shot/{m}/{task}/seed{seed}.csv" for m in study["few_shot"]]
        for seed in study["seeds"]:
            out += [f"results/prompt_tuning/{r}/{task}/seed{seed}.csv" for r in study["prompt_tuning"]]
        out += [f"results/relay/text_relay/{p['sender']}/{p['receiver']}/{task}.csv" for p in study["pairs"]
                if p.get("text_relay", study["text_relay"])]
    first = study["pairs"][0]
    for task in study["finetune"]["tasks"]:
        out += [f"results/finetune/{method}/{first['receiver']}/{task}/seed{seed}.csv"
                for method in finetune_methods(config) for seed in study["sweep_seeds"]]
        if study["finetune"]["cot_relay"]:
            out.append(f"results/relay/cot_relay/{first['sender']}/{first['receiver']}/{task}.csv")
    for task in study["speed"]["tasks"]:
        out += [f"results/speed/{kind}/{first['sender']}/{first['receiver']}/{task}.csv"
                for kind in ("latency", "throughput")]
    return sorted(dict.fromkeys(out))


def study_predictions(config: dict) -> list[str]:
    """The per-example predictions beside every result file with accuracy rows (all but the speed jobs')."""
    from .evaluate import predictions_path
    return [str(predictions_path(path)) for path in study_results(config) if not path.startswith("results/speed/")]


def study_checkpoints(config: dict) -> list[str]:
    study = config["study"]
    out = [bridge_checkpoint(r) for r in bridge_runs(config)]
    for task in study["tasks"]:
        out += [f"data/checkpoints/prompt_tuning/{r}/{task}/seed{s}.pt" for r in study["prompt_tuning"]
                for s in study["seeds"]]
    first = study["pairs"][0]
    for task in study["finetune"]["tasks"]:
        out += [f"data/checkpoints/finetune/{m}/{first['receiver']}/{task}/seed{s}.pt"
                for m in finetune_methods(config) for s in study["sweep_seeds"]]
    return sorted(dict.fromkeys(out))


def study_stores(config: dict) -> list[tuple[str, str]]:
    """(sender, task) pairs whose activations are extracted (train and eval splits)."""
    pairs = {(r["sender"], r["task"]) for r in bridge_runs(config)}
    return sorted(pairs)


def study_tasks(config: dict) -> list[str]:
    study = config["study"]
    used = set(study["tasks"]) | {r["task"] for r in bridge_runs(config)}
    used |= set(study["finetune"]["tasks"]) | set(study["speed"]["tasks"]) | set(study["neighbours"]["tasks"])
    return sorted(used)


def study_models(config: dict) -> list[str]:
    study = config["study"]
    return sorted(set(pair_models(study)) | set(study["zero_shot"]) | set(study["few_shot"])
                  | set(study["prompt_tuning"]))


def extract_layers(config: dict, sender: str, task: str) -> list[int]:
    """Layers stored for one sender and task: `extract.layers` plus every layer a bridge run reads."""
    from .bridges import REGISTRY

    layers = set(config["extract"]["layers"])
    for run in bridge_runs(config):
        if run["sender"] == sender and run["task"] == task:
            spec, _ = run_settings(config, run["bridge"], run["task"])
            default = REGISTRY[spec["type"]][0].__dataclass_fields__["source_layer"].default
            layers.add(spec.get("source_layer", default))
    return sorted(layers)


STUDY_NAME = "latentwire"  # `snakemake figures_latentwire`; its figures are the top-level files of figures/
REASONING_TASKS = ("boolq", "piqa", "commonsense_qa")


def study_reports(config: dict) -> tuple[list[str], list[str]]:
    """(tables, plots): the report.FIGURES names the study's sections ask for."""
    study = config["study"]
    tables, plots = ["table2_main", "table8_bidirectional"], ["fig_bridge_vs_baselines", "fig2_bridge_vs_prompt_tuning"]
    if any(task in REASONING_TASKS for task in study["tasks"]):
        tables.append("table9_reasoning")
    optional = {"ablation": (["table1_architectures"], []), "token_scaling": (["table7_token_scaling"],
                ["fig5_token_scaling"]), "hyperparameters": (["table10_hyperparameters"], []),
                "same_model": (["table6_same_vs_cross"], ["fig4_same_vs_cross"]),
                "finetune": (["table4_finetuning"], []),
                "speed": (["table3_latency", "table5_throughput"], ["fig3_latency"])}
    for section, (more_tables, more_plots) in optional.items():
        if study[section]["tasks"]:
            tables += more_tables
            plots += more_plots
    return tables, plots


def report_outputs(config: dict) -> list[str]:
    """The files the `report` job writes: each table as .md + .tex, each plot as .png."""
    tables, plots = study_reports(config)
    return sorted([f"figures/{name}{ext}" for name in tables for ext in (".md", ".tex")]
                  + [f"figures/{name}.png" for name in plots])


def study_figures(config: dict) -> list[str]:
    """Every table (.md + .tex) and figure (.png) under figures/ that the study's sections produce
    (figures/README.md aside, which lists them)."""
    out = report_outputs(config)
    if config["study"]["neighbours"]["tasks"]:
        out += ["figures/soft_token_neighbours.md", "figures/soft_token_neighbours.png"]
    return sorted(out)
