"""What study 3 runs, from the `dense_kv` config section (workflow/rules/dense_kv.smk reads it).

Directions (`dense_kv.directions`: name -> {sender, receiver, seeds}) are zoo models of any tokenizers.
One transformation per direction, variant and seed, trained on the `tasks` (jointly) and scored on those and
on the out-of-domain `ood` tasks it never saw:
    results/dense_kv/<direction>/<variant>/seed<seed>/transform.pt, <task>.csv
Variants: `both` (phase 1 then phase 2: the method, every direction and seed) and, on the `headline`
direction's first seed, the phase ablation `phase1` (reconstruction only) and `phase2` (generation only),
scored on the `ablation_tasks`; a direction's later seeds (after its first) on the `later_seed_tasks` (run_tasks).
Every run is scored with its shuffled control; what does not depend on the trained transformation (the zeroed
cache, the receiver alone) once per direction, in the run of `both` with its first seed; the kept-fraction
sweep (the duality) in the headline direction's first `both` run, on the `duality_tasks` (eval_options).
Study 2's shared space is a baseline where a direction's two models are members of one of its runs
(`dense_kv.shared_space: {direction: kv_alignment run}`, one tokenizer): scored, never trained on the tasks,
    results/dense_kv/<direction>/shared_space/seed<the run's first seed>/<task>.csv
Stores (KV caches with character spans, `extract` with kv_cache and layer 0 only):
    data/dense_kv/stores/<model>/<task>/<split>.zarr
the sender's of every scored task's train (trained tasks) and eval splits, the receiver's of the trained
tasks' train splits (phase 1's targets).
"""
from __future__ import annotations

from ...errors import ConfigError
from .configs import DenseRunConfig

STORES_DIR = "data/dense_kv/stores"
RUNS_DIR = "results/dense_kv"
FIGURES_DIR = "figures/dense_kv"
VARIANTS = {"both": ["reconstruction", "generation"], "phase1": ["reconstruction"], "phase2": ["generation"],
            "fuser": ["reconstruction", "fusion"]}


def section(config: dict) -> dict:
    return config.get("dense_kv") or {}


def enabled(config: dict) -> bool:
    return bool(directions(config))


def directions(config: dict) -> dict[str, dict]:
    dense = section(config)
    default = dense.get("seeds", [0])
    return {name: {"sender": d["sender"], "receiver": d["receiver"], "seeds": list(d.get("seeds", default))}
            for name, d in dense.get("directions", {}).items() if d is not None}   # null: removed by an overlay


def train_tasks(config: dict) -> list[str]:
    return list(section(config).get("tasks", []))


def eval_tasks(config: dict) -> list[str]:
    return train_tasks(config) + [t for t in section(config).get("ood", []) if t not in train_tasks(config)]


def run_tasks(config: dict, variant: str, direction: str, seed) -> list[str]:
    """The tasks one run is scored on: every eval task, but the phase ablation (`phase1`, `phase2`) and the
    fuser baseline only on `dense_kv.ablation_tasks`, and a direction's later seeds (a `both` run after its
    first seed) only on `dense_kv.later_seed_tasks` (each default: every eval task)."""
    if variant in ("phase1", "phase2", "fuser"):
        return list(section(config).get("ablation_tasks", eval_tasks(config)))
    if int(seed) != directions(config)[direction]["seeds"][0]:
        return [t for t in eval_tasks(config) if t in section(config).get("later_seed_tasks", eval_tasks(config))]
    return eval_tasks(config)


def task_seeds(config: dict, direction: str, task: str) -> list[int]:
    """The seeds of a direction's `both` runs scored on a task (all its seeds, or its first where the task is
    not among `later_seed_tasks`)."""
    return [s for s in directions(config)[direction]["seeds"] if task in run_tasks(config, "both", direction, s)]


def runs(config: dict) -> list[tuple[str, str, int]]:
    """(direction, variant, seed) of every training run."""
    if not enabled(config):
        return []
    dense, out = section(config), []
    for name, d in directions(config).items():
        out += [(name, "both", seed) for seed in d["seeds"]]
    headline = dense.get("headline")
    if headline and dense.get("phase_ablation", True):
        seed = directions(config)[headline]["seeds"][0]
        out += [(headline, "phase1", seed), (headline, "phase2", seed)]
    for name in fuser_directions(config):
        out.append((name, "fuser", directions(config)[name]["seeds"][0]))
    return out


SHARED_SPACES = ("cross_attention", "linear", "identity")   # translators with T[m->S], T[S->m] per member


def shared_space(config: dict) -> dict[str, dict]:
    """{direction: {"run", "seed", "sender", "receiver"}}: the study-2 run (`dense_kv.shared_space`), its first
    seed, and the names of the direction's two models among its members (a member `{model: <alias>}`)."""
    from ..kv_alignment import plan as kv_plan

    out = {}
    for name, run in (section(config).get("shared_space") or {}).items():
        if name not in directions(config):
            raise ConfigError(f"dense_kv.shared_space: '{name}' is not a direction ({sorted(directions(config))})")
        real, kv_run = kv_plan.resolve(config, run)
        kind = (kv_run["train"].get("translator") or {}).get("type", "cross_attention")
        if kind not in SHARED_SPACES:
            raise ConfigError(f"dense_kv.shared_space.{name}: the kv_alignment run '{run}' trains a '{kind}' "
                              f"translator, not a shared space with an adapter pair per member ({sorted(SHARED_SPACES)})")
        specs = kv_plan.section(config).get("members", {})
        by_model = {specs[m].get("model"): m for m in kv_run["members"] if "model" in specs.get(m, {})}
        d = directions(config)[name]
        for end in ("sender", "receiver"):
            if d[end] not in by_model:
                raise ConfigError(f"dense_kv.shared_space.{name}: the {end} '{d[end]}' is not a member of the "
                                  f"kv_alignment run '{run}' (members: {sorted(kv_run['members'])}; a zoo model joins "
                                  f"as a member {{model: {d[end]}}})")
        out[name] = {"run": real, "seed": kv_run["seeds"][0], "sender": by_model[d["sender"]],
                     "receiver": by_model[d["receiver"]]}
    return out


def shared_space_dir(direction: str, seed) -> str:
    return run_dir(direction, "shared_space", seed)


def shared_space_results(config: dict) -> list[str]:
    return [f"{shared_space_dir(d, s['seed'])}/{task}.csv" for d, s in shared_space(config).items()
            for task in eval_tasks(config)]


def fuser_directions(config: dict) -> list[str]:
    """Directions with the C2C-style fuser baseline (`dense_kv.fuser`: true = the headline, or a list)."""
    value = section(config).get("fuser", False)
    if not value or not directions(config):
        return []
    return [headline(config)] if value is True else [name for name in value if name in directions(config)]


def text_runs(config: dict) -> list[tuple[str, str]]:
    """(direction, task) of every scored task whose text communication study 1 runs (its text relay of the
    same sender and receiver on the same eval rows): study 3 prices it and puts it beside the cache."""
    from ...study import study_results

    planned = set(study_results(config)) if config.get("study") else set()
    return [(name, task) for name, d in directions(config).items() for task in eval_tasks(config)
            if relay_result(d, task) in planned]


def text_limits(config: dict) -> list[int]:
    """The shorter limits study 1's relay is also read at (the compute table): those below its own cap."""
    cap = (config.get("relay") or {}).get("max_new_tokens")
    return [int(limit) for limit in section(config).get("text_limits", []) if cap is None or int(limit) < cap]


def text_limit_result(direction: str, task: str, limit: int) -> str:
    return f"{RUNS_DIR}/{direction}/text/{task}/limit{limit}.csv"


def text_limit_results(config: dict) -> list[str]:
    return [text_limit_result(d, t, limit) for d, t in text_runs(config) for limit in text_limits(config)]


def relay_result(direction: dict, task: str) -> str:
    return f"results/relay/text_relay/{direction['sender']}/{direction['receiver']}/{task}.csv"


def relay_messages(direction: dict, task: str) -> str:
    return f"data/relay/text_relay/{direction['sender']}/{task}.jsonl"


def bridge_results(config: dict) -> dict[tuple[str, str], list[str]]:
    """{(direction, task): study 1's LatentWire bridge results of the same sender, receiver and task (its main
    bridge, every seed it runs)}, for the scored tasks study 1 trains a bridge on."""
    from ...study import bridge_result, bridge_runs

    if not config.get("study"):
        return {}
    main = config["study"]["bridges"][0]
    out = {}
    for run in bridge_runs(config):
        for name, d in directions(config).items():
            if (run["bridge"], run["sender"], run["receiver"]) == (main, d["sender"], d["receiver"]) \
                    and run["task"] in eval_tasks(config):
                out.setdefault((name, run["task"]), set()).add(bridge_result(run))
    return {key: sorted(paths) for key, paths in out.items()}


def headline(config: dict) -> str:
    """The direction of the phase ablation and the duality sweep (default: the first direction)."""
    return section(config).get("headline") or next(iter(directions(config)))


def duality_tasks(config: dict) -> list[str]:
    """The tasks of the kept-fraction sweep (default: the trained tasks)."""
    return list(section(config).get("duality_tasks", train_tasks(config)))


def eval_options(config: dict, direction: str, variant: str, seed: int, task: str) -> dict:
    """What one run scores beyond the transfer and its shuffled control: the zeroed cache and the receiver
    alone (they do not depend on the trained maps: once per direction, in its first `both` run) and the
    kept fractions (the headline's first `both` run, on the duality tasks)."""
    if variant == "fuser":   # its own controls (fuse.py)
        return {"alone": False, "zero": False, "keep_fractions": []}
    first = variant == "both" and int(seed) == directions(config)[direction]["seeds"][0]
    sweep = first and direction == headline(config) and task in duality_tasks(config)
    return {"alone": first, "zero": first,
            "keep_fractions": list(section(config).get("keep_fractions", [])) if sweep else []}


def run_config(config: dict, variant: str) -> dict:
    """The DenseRunConfig dict of a variant (the phases set by it)."""
    return dict(section(config).get("train", {}), phases=VARIANTS[variant])


def run_dir(direction: str, variant: str, seed) -> str:
    return f"{RUNS_DIR}/{direction}/{variant}/seed{seed}"


def store_path(model: str, task: str, split: str) -> str:
    return f"{STORES_DIR}/{model}/{task}/{split}.zarr"


def stores(config: dict) -> set[tuple[str, str, str]]:
    """(model, task, role) of every store the study reads; role "train" or "eval"."""
    out = set()
    for d in directions(config).values():
        for task in train_tasks(config):
            out |= {(d["sender"], task, "train"), (d["receiver"], task, "train")}
        out |= {(d["sender"], task, "eval") for task in eval_tasks(config)}
    for name in fuser_directions(config):   # the fuser fuses into the receiver's own cache of the eval input
        out |= {(directions(config)[name]["receiver"], task, "eval") for task in eval_tasks(config)}
    return out


def check(config: dict, valid: dict | None = None) -> None:
    """Names that do not resolve, stopped before any job runs (keys named)."""
    if not enabled(config):
        return
    dense = section(config)
    models, tasks = config.get("models", {}), config.get("tasks", {})
    for name, d in directions(config).items():
        for end in ("sender", "receiver"):
            if d[end] not in models:
                raise ConfigError(f"dense_kv.directions.{name}.{end}: unknown model '{d[end]}' (models: "
                                  f"{sorted(models)})")
        if not d["seeds"]:
            raise ConfigError(f"dense_kv.directions.{name}.seeds is empty")
    for key in ("tasks", "ood"):
        for task in dense.get(key, []):
            if task not in tasks:
                raise ConfigError(f"dense_kv.{key}: unknown task '{task}' (tasks: {sorted(tasks)})")
    if not train_tasks(config):
        raise ConfigError("dense_kv.tasks is empty: the transformation trains on at least one task")
    prompts = dense.get("prompts", {})
    for task in eval_tasks(config):
        if "unaware" not in prompts.get(task, {}):
            raise ConfigError(f"dense_kv.prompts.{task}.unaware is missing: what the context-unaware receiver "
                              f"reads after the transferred cache")
        firsts = [tasks[task]["verbalizers"][i].split()[0] if tasks[task]["verbalizers"][i].split() else ""
                  for i in range(len(tasks[task]["verbalizers"]))]
        if len(set(firsts)) != len(firsts):
            raise ConfigError(f"dense_kv: task '{task}' has verbalizers sharing a first word; study 3 scores "
                              f"first tokens (label-set loss) and needs them distinct")
    headline = dense.get("headline")
    if headline is not None and headline not in directions(config):
        raise ConfigError(f"dense_kv.headline '{headline}' is not a direction ({sorted(directions(config))})")
    fuser = dense.get("fuser", False)
    for name in fuser if isinstance(fuser, list) else []:
        if name not in directions(config):
            raise ConfigError(f"dense_kv.fuser: '{name}' is not a direction ({sorted(directions(config))})")
    for key in ("duality_tasks", "ablation_tasks", "later_seed_tasks"):
        for task in dense.get(key, []):
            if task not in eval_tasks(config):
                raise ConfigError(f"dense_kv.{key}: '{task}' is not scored by study 3 (tasks + ood: "
                                  f"{eval_tasks(config)})")
    shared_space(config)
    DenseRunConfig.from_dict(dense.get("train", {}))


def figures(config: dict) -> list[str]:
    """Every output report.write_all writes for this config."""
    if not enabled(config):
        return []
    out = [f"{FIGURES_DIR}/{name}" for name in ("table_main.md", "fig_duality.png", "fig_duality.md",
                                                   "table_reconstruction.md", "fig_alignment.png", "fig_alignment.md")]
    if any(v in ("phase1", "phase2") for _, v, _ in runs(config)):
        out.append(f"{FIGURES_DIR}/table_phases.md")
    if text_runs(config):
        out.append(f"{FIGURES_DIR}/table_compute.md")
    if fuser_directions(config):
        out.append(f"{FIGURES_DIR}/table_fuser.md")
    return out
