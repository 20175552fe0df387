"""What the K-V alignment study runs, from the `kv_alignment` config section (used by the Snakemake rules).

Members are pre-trained (`pretrain:` keys of PretrainConfig, optionally from a `parent` member) or taken
from the zoo (`model: <alias>`); `name@STEP` names a pre-training snapshot of `name` (its mid checkpoint).
Runs (one translator training each, per seed) are named:
  pool_<setting>            Figure 3: the default translator on one pool setting, every path
  extend_<new>              Figure 4: pool_<ext setting> + a new member; only its adapters train, on paths
                            with `with` members; every path is scored (the others were never trained on)
  join_<new>                the same for a zoo model of another tokenizer (`join`): Figure 4b
  translator_<name>         Table 1: a translator variant on the ablation setting
  paths<k>                  Figure 6: paths per step k on the ablation setting
  recon<w>                  Table 2: reconstruction weight w on the ablation setting
A variant equal to the default run is not run twice: its name resolves to the pool run.
"""
from __future__ import annotations

import copy

from ...errors import ConfigError
from .configs import AlignConfig

MEMBERS_DIR = "data/kv_alignment/members"
SNAPSHOTS_DIR = "data/kv_alignment/snapshots"
RUNS_DIR = "results/kv_alignment"
FIGURES_DIR = "figures/kv_alignment"
# A newcomer joins a trained pool by training only its two adapters (config key -> run name prefix):
# `extensibility` (Figure 4: a member of the pool's tokenizer) and `join` (a model of another tokenizer,
# whose positions pool the shared vectors of the pool's positions covering its characters).
NEWCOMERS = {"extensibility": "extend", "join": "join"}


def section(config: dict) -> dict:
    return config.get("kv_alignment") or {}


def enabled(config: dict) -> bool:
    return bool(section(config).get("members"))


def member_dir(config: dict, ref: str) -> str:
    """Directory of a member reference: a pre-trained member, a snapshot (name@STEP) or a zoo model."""
    name, _, step = ref.partition("@")
    spec = _member(config, name)
    if step:
        if int(step) not in spec.get("pretrain", {}).get("snapshots", []):
            raise ConfigError(f"kv_alignment: '{ref}' names step {step} of '{name}', which is not in its "
                              f"pretrain.snapshots {spec.get('pretrain', {}).get('snapshots', [])}")
        return f"{SNAPSHOTS_DIR}/{name}/step{step}"
    if "model" in spec:
        return f"data/models/{spec['model']}"
    return f"{MEMBERS_DIR}/{name}"


def _member(config: dict, name: str) -> dict:
    members = section(config).get("members", {})
    if name not in members:
        raise ConfigError(f"kv_alignment: unknown member '{name}' (members: {sorted(members)})")
    return members[name]


def ref_name(ref: str) -> str:
    """A member reference as a name (snapshots: name_stepN)."""
    name, _, step = ref.partition("@")
    return f"{name}_step{step}" if step else name


def pretrained_members(config: dict) -> list[str]:
    return [n for n, s in section(config).get("members", {}).items() if "pretrain" in s]


def runs(config: dict) -> dict[str, dict]:
    """Run name -> {members: {name: ref}, train: AlignConfig overrides, seeds, train_members, paths,
    eval_paths, start_from (run name)}."""
    kv = section(config)
    if not enabled(config):
        return {}
    base, seeds, out = kv.get("train", {}), kv.get("seeds", [0]), {}
    for setting, refs in kv.get("settings", {}).items():
        out[f"pool_{setting}"] = {"members": {ref_name(r): r for r in refs}, "train": base, "seeds": seeds}
    for key, prefix in NEWCOMERS.items():
        ext = kv.get(key)
        if not ext:
            continue
        start = f"pool_{ext['setting']}"
        if start not in out:
            raise ConfigError(f"kv_alignment.{key}.setting '{ext['setting']}' is not a setting "
                              f"({sorted(kv.get('settings', {}))})")
        new = ref_name(ext["new"])
        members = {**out[start]["members"], new: ext["new"]}
        trained = [ref_name(r) for r in ext["with"]] + [new]
        paths = [(s, t) for s in trained for t in trained if new in (s, t)]
        out[f"{prefix}_{new}"] = {"members": members, "train": {**base, **ext.get("train", {})}, "seeds": [seeds[0]],
                                  "train_members": [new], "paths": paths, "start_from": start}
    abl = kv.get("ablations")
    if abl:
        setting = f"pool_{abl['setting']}"
        if setting not in out:
            raise ConfigError(f"kv_alignment.ablations.setting '{abl['setting']}' is not a setting")
        members = out[setting]["members"]

        def variant(name, train):
            merged = {**base, **train}
            out[name] = (setting if AlignConfig(**merged) == AlignConfig(**base) else
                         {"members": members, "train": merged, "seeds": [seeds[0]]})

        for name, translator in abl.get("translators", {}).items():
            variant(f"translator_{name}", {"translator": translator})
        for k in abl.get("paths_per_step", []):
            variant(f"paths{k}", {"paths_per_step": k})
        for w in abl.get("reconstruction_weight", []):
            variant(f"recon{w:g}", {"reconstruction_weight": w})
    return out


def resolve(config: dict, run: str) -> tuple[str, dict]:
    """(the run that is actually trained, its plan): aliases of the default resolve to the pool run."""
    plans = runs(config)
    if run not in plans:
        raise ConfigError(f"kv_alignment: unknown run '{run}' (runs: {sorted(plans)})")
    target = plans[run]
    while isinstance(target, str):
        run, target = target, plans[target]
    return run, copy.deepcopy(target)


def run_dirs(config: dict) -> list[str]:
    """Every trained run's output directory (aliases resolved)."""
    dirs = []
    for name in runs(config):
        real, plan = resolve(config, name)
        dirs += [f"{RUNS_DIR}/{real}/seed{s}" for s in plan["seeds"]]
    return sorted(set(dirs))


def portability(config: dict) -> dict | None:
    """Figure 5's job: {members: {name: ref}, translator_run, seed, config} (None when not asked for)."""
    port = section(config).get("portability")
    if not port or not enabled(config):
        return None
    run = f"pool_{port['setting']}"
    plans = runs(config)
    if run not in plans:
        raise ConfigError(f"kv_alignment.portability.setting '{port['setting']}' is not a setting")
    names = [port["source"], port["target"]] + ([port["sampler"]] if port.get("sampler") else [])
    members = plans[run]["members"]
    missing = [n for n in names if n not in members]
    if missing:
        raise ConfigError(f"kv_alignment.portability: {missing} not in setting '{port['setting']}' ({sorted(members)})")
    settings = {"source": port["source"], "target": port["target"], "sampler": port.get("sampler", ""),
                **port.get("config", {})}
    return {"members": {n: members[n] for n in dict.fromkeys(names)}, "translator_run": run,
            "seed": plans[run]["seeds"][0], "config": settings}


PORTABILITY_DIR = f"{RUNS_DIR}/portability"


def figures(config: dict) -> list[str]:
    """The study's tables and figures (under figures/kv_alignment/)."""
    if not enabled(config):
        return []
    kv = section(config)
    names = [f"fig3_{s}.png" for s in kv.get("settings", {})] + ["fig3_final.md", "members.md"]
    if kv.get("extensibility"):
        names += ["fig4_extensibility.png", "fig4_extensibility.md"]
    if kv.get("join"):
        names += ["fig4b_join.png", "fig4b_join.md"]
    if kv.get("portability"):
        names += ["fig5_portability.png", "fig5_portability.md"]
    abl = kv.get("ablations") or {}
    if abl.get("translators"):
        names.append("table1_translators.md")
    if abl.get("paths_per_step"):
        names.append("fig6_paths_per_step.png")
    if abl.get("reconstruction_weight"):
        names.append("table2_reconstruction.md")
    return [f"{FIGURES_DIR}/{n}" for n in names]


def check(config: dict) -> None:
    """Reference and key checks of the kv_alignment section, before any job runs (ConfigError names the key)."""
    from dataclasses import fields

    from ...channels.kv.translators import translator_config
    from .pretrain import PretrainConfig

    if not enabled(config):
        return
    kv = section(config)
    models = config.get("models", {})
    if kv.get("tokenizer") not in models:
        raise ConfigError(f"config key 'kv_alignment.tokenizer': unknown model '{kv.get('tokenizer')}' "
                          f"(models: {sorted(models)})")
    for name, member in kv["members"].items():
        key = f"kv_alignment.members.{name}"
        if "model" in member and member["model"] not in models:
            raise ConfigError(f"config key '{key}.model': unknown model '{member['model']}' (models: {sorted(models)})")
        if "pretrain" in member:
            try:
                PretrainConfig.from_dict(member["pretrain"]).check()
            except (TypeError, ValueError, ConfigError) as error:
                raise ConfigError(f"config key '{key}.pretrain': {error}") from None
        parent = member.get("parent")
        if parent is not None and "pretrain" not in kv["members"].get(parent, {}):
            raise ConfigError(f"config key '{key}.parent': '{parent}' is not a pre-trained member")
    known = {f.name for f in fields(AlignConfig)}
    trains = {"kv_alignment.train": kv.get("train", {})}
    trains.update({f"kv_alignment.ablations.translators.{n}": {"translator": t}
                   for n, t in (kv.get("ablations") or {}).get("translators", {}).items()})
    for key, train in trains.items():
        unknown = sorted(set(train) - known)
        if unknown:
            raise ConfigError(f"config key '{key}': unknown key(s) {unknown} (known: {sorted(known)})")
        try:
            AlignConfig(**train)
            translator_config(train.get("translator", AlignConfig().translator))
        except ConfigError as error:
            raise ConfigError(f"config key '{key}': {error}") from None
    for setting, refs in kv.get("settings", {}).items():
        for ref in refs:
            member_dir(config, ref)
    for key in NEWCOMERS:
        ext = kv.get(key)
        for ref in [ext["new"], *ext["with"]] if ext else []:
            member_dir(config, ref)
        if ext:
            unknown = sorted(set(ext.get("train", {})) - known)
            if unknown:
                raise ConfigError(f"config key 'kv_alignment.{key}.train': unknown key(s) {unknown}")
    join = kv.get("join")
    if join:
        if "model" not in _member(config, join["new"].partition("@")[0]):
            raise ConfigError(f"config key 'kv_alignment.join.new': '{join['new']}' is a pool member; joining is "
                              f"for a zoo model of another tokenizer ({{model: <alias>}}; a pool member extends by "
                              f"`extensibility`)")
        train = AlignConfig(**{**kv.get("train", {}), **join.get("train", {})})
        kind, _ = translator_config(train.translator)
        if kind not in ("cross_attention", "linear") or train.reconstruction_weight:
            raise ConfigError(f"config key 'kv_alignment.join.train': a member of another tokenizer is reached "
                              f"only through a shared space (cross_attention or linear) with reconstruction_weight "
                              f"0, got {kind} and {train.reconstruction_weight}")
    runs(config)
    job = portability(config)
    if job:
        from .portability import PortabilityConfig
        try:
            PortabilityConfig.from_settings(job["config"])
        except (TypeError, ConfigError) as error:
            raise ConfigError(f"config key 'kv_alignment.portability.config': {error}") from None
