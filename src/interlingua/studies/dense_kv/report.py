"""Study 3's tables and figures (figures/dense_kv/), from its scored runs and study 1's baselines.

Every accuracy is on the task's whole eval split, the same rows for every method (n in each cell), mean ± std
over the seeds scored (column `seeds`). A transfer result counts only where it beats its shuffled-source
control by McNemar's exact test (p < 0.05) for every seed scored on the task: the tables give each seed's p.
"""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from ...paired import ALPHA, mcnemar  # noqa: E402
from ...report import STYLE, save_figure, write_table  # noqa: E402
from . import plan  # noqa: E402

MODES = ("unaware", "aware")


def load(config: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(result rows, prediction rows) of every scored run, with `direction` and `variant` columns."""
    rows, predictions = [], []
    for direction, variant, seed in plan.runs(config):
        for task in plan.run_tasks(config, variant, direction, seed):
            path = Path(plan.run_dir(direction, variant, seed)) / f"{task}.csv"
            rows.append(pd.read_csv(path).assign(direction=direction, run_variant=variant))
            predictions.append(pd.read_csv(path.with_name(f"{task}.predictions.csv"))
                               .assign(direction=direction, run_variant=variant))
    for direction, space in (config.get("shared_space") or {}).items():   # study 2's shared space (one tokenizer)
        for task in plan.eval_tasks(config):
            path = Path(plan.shared_space_dir(direction, space["seed"])) / f"{task}.csv"
            rows.append(pd.read_csv(path).assign(direction=direction, run_variant="shared_space"))
            predictions.append(pd.read_csv(path.with_name(f"{task}.predictions.csv"))
                               .assign(direction=direction, run_variant="shared_space"))
    frame = pd.concat(rows, ignore_index=True)
    frame["variant"] = frame["variant"].fillna("")
    preds = pd.concat(predictions, ignore_index=True)
    preds["variant"] = preds["variant"].fillna("")
    return frame, preds


def baselines(task: str) -> dict:
    """Study 1's majority-class and uniform-random accuracy of a task (mean over its draws), with n."""
    out = {}
    for name in ("majority", "random"):
        path = Path(f"results/{name}/{task}.csv")
        if path.exists():
            rows = pd.read_csv(path).query("metric == 'accuracy'")
            out[name] = (rows.value.mean(), int(rows.n.iloc[0]))
    return out


def _cell(values: pd.Series, n) -> str:
    if values.empty:
        return "not run"
    return f"{values.mean():.3f} ± {values.std():.3f} (n={n})" if len(values) > 1 else f"{values.mean():.3f} (n={n})"


def _accuracy(frame, **keys) -> pd.DataFrame:
    query = frame.metric == "accuracy"
    for key, value in keys.items():
        query &= frame[key] == value
    return frame[query]


def paired_p(preds: pd.DataFrame, direction: str, variant: str, task: str, mode: str, seed: int,
             control: str, method: str | None = None) -> float:
    method = method or f"cache_{mode}"
    pick = lambda v: preds[(preds.direction == direction) & (preds.run_variant == variant) & (preds.task == task)  # noqa: E731
                           & (preds.method == method) & (preds.variant == v) & (preds.seed == seed)]
    return mcnemar(pick(""), pick(control))["p_value"]


def fuser_table(config: dict, frame, preds, out_dir: Path) -> Path | None:
    """The C2C-style fuser baseline (context-aware) beside its controls, per direction and task."""
    runs = [(d, s) for d, v, s in plan.runs(config) if v == "fuser"]
    if not runs:
        return None
    records = []
    for direction, seed in runs:
        d = plan.directions(config)[direction]
        for task in plan.run_tasks(config, "fuser", direction, seed):
            rows = _accuracy(frame, direction=direction, run_variant="fuser", task=task, method="fuser_aware")
            n = _n(rows)
            pick = lambda v: rows[rows.variant == v].value  # noqa: E731
            p_shuffled = paired_p(preds, direction, "fuser", task, "aware", seed, "shuffled_source", "fuser_aware")
            p_own = paired_p(preds, direction, "fuser", task, "aware", seed, "own_cache", "fuser_aware")
            records.append({"direction": f"{d['sender']} -> {d['receiver']}", "task": task, "fuser": _cell(pick(""), n),
                            "shuffled": _cell(pick("shuffled_source"), n), "zero": _cell(pick("zero_source"), n),
                            "own cache only": _cell(pick("own_cache"), n), "p vs shuffled": f"{p_shuffled:.2g}",
                            "p vs own cache": f"{p_own:.2g}",
                            "counts": "yes" if p_shuffled < ALPHA and pick("").mean() > pick("shuffled_source").mean()
                            else "no"})
    out = out_dir / "table_fuser"
    write_table(pd.DataFrame(records).set_index(["direction", "task"]), out,
                "C2C-style gated fuser (context-aware): accuracy beside its controls (n = eval rows, one seed)",
                "dense_fuser",
                ["the receiver reads the input itself; its own cache of it is fused, in place at the aligned positions, "
                 "with the sender's transformed cache through learned projections and gates (channels/kv/fuser.py), "
                 "then it reads the question. shuffled: another example's sender cache stretched onto these positions; "
                 "zero: a zeroed sender cache; own cache only: no fusion (no communication, the same prompt). "
                 "McNemar's exact test on the same rows; `counts`: beats shuffled at p < 0.05."])
    return out.with_suffix(".md")


def text_communication(config: dict) -> dict[tuple[str, str], pd.DataFrame]:
    """{(direction, task): study 1's text relay rows, priced in FLOPs (text.py)} where study 1 runs it
    (`config["text_runs"]`: plan.text_runs of the whole config, which the workflow passes)."""
    from .text import text_rows

    out = {}
    for direction, task in config.get("text_runs", []):
        d = plan.directions(config)[direction]
        out[(direction, task)] = text_rows(plan.relay_messages(d, task), plan.relay_result(d, task),
                                           f"data/models/{d['sender']}", f"data/models/{d['receiver']}",
                                           config["tasks"][task])
    return out


def text_at_limits(config: dict) -> dict[tuple[str, str], dict[int, pd.DataFrame]]:
    """{(direction, task): {limit: study 1's relay cut to `limit` tokens, read and priced as the relay}}."""
    from .text import text_rows

    out = {}
    for direction, task in config.get("text_runs", []):
        d = plan.directions(config)[direction]
        for limit in plan.text_limits(config):
            result = Path(plan.text_limit_result(direction, task, limit))
            out.setdefault((direction, task), {})[limit] = text_rows(
                result.with_suffix(".jsonl"), result, f"data/models/{d['sender']}", f"data/models/{d['receiver']}",
                config["tasks"][task])
    return out


def compute_table(config: dict, frame, out_dir: Path) -> Path | None:
    """Accuracy and compute per example of the cache transfer and of text communication at its policy and at
    the shorter limits, where study 1 runs the direction's relay."""
    texts, limits = text_communication(config), text_at_limits(config)
    if not texts:
        return None
    records = []
    for (direction, task), policy in texts.items():
        d = plan.directions(config)[direction]
        base = {"direction": f"{d['sender']} -> {d['receiver']}", "task": task}
        cache_flops = {}
        for mode in MODES:
            cache = frame[(frame.direction == direction) & (frame.run_variant == "both") & (frame.task == task)
                          & (frame.method == f"cache_{mode}") & (frame.variant == "")]
            accuracy = cache[cache.metric == "accuracy"]
            cache_flops[mode] = _metric(cache, "flops_per_example")
            records.append(dict(base, method=f"cache ({mode})", accuracy=_cell(accuracy.value, _n(accuracy)),
                                GFLOP=_gflop(cache_flops[mode]), tokens="",
                                seconds=_seconds(_metric(cache, "seconds_per_example"))))
        cap = (config.get("relay") or {}).get("max_new_tokens")
        for label, rows in [(f"text (policy{f', <= {cap} tokens' if cap else ''})", policy)] + \
                [(f"text (<= {limit} tokens)", rows) for limit, rows in sorted(limits.get((direction, task), {}).items())]:
            accuracy = rows[rows.metric == "accuracy"]
            flops = _metric(rows, "flops_per_example")
            seconds = sum(filter(None, [_metric(rows, "relay_seconds_per_example"), _metric(rows, "seconds_per_example")]))
            records.append(dict(base, method=label, accuracy=_cell(accuracy.value, _n(accuracy)), GFLOP=_gflop(flops),
                                tokens=f"{_metric(rows, 'generated_tokens'):.1f}", seconds=_seconds(seconds),
                                **{f"/ cache ({mode})": f"{flops / cache_flops[mode]:.1f}x" if flops and cache_flops[mode]
                                   else "n/a" for mode in MODES}))
    table = pd.DataFrame(records).fillna("").set_index(["direction", "task", "method"])
    out = out_dir / "table_compute"
    write_table(table, out, "Compute per example: cache transfer vs text communication (accuracy on the same rows)",
                "dense_compute",
                ["GFLOP: analytic FLOPs per example (studies/dense_kv/compute.py). cache = the sender's reading + the "
                 "transformation + the receiver's prompt after the transferred cache (mean over the seeds scored on the task: "
                 "table_main's column seeds); text = the "
                 "sender's prompt and generation + the receiver's reading of the message, its demonstrations left out "
                 "(text's cost counted low). / cache: text's FLOPs over the cache path's in each mode.",
                 "text at a shorter limit: each of study 1's greedy messages cut to its first L tokens (what generation "
                 "capped at L writes), read by the same receiver after the same demonstrations. tokens: mean generated.",
                 "seconds: measured wall time per example on this machine; cache: the transformation and the receiver "
                 "(the sender's reading comes from the store and is not timed); text: the sender's generation and the "
                 "receiver's reading."])
    return out.with_suffix(".md")


def _n(rows) -> int:
    return int(rows.n.iloc[0]) if len(rows) else 0


def _gflop(flops) -> str:
    return f"{flops / 1e9:.2f}" if flops else "n/a"


def _seconds(seconds) -> str:
    return f"{seconds:.3f}" if seconds else "n/a"


def bridge_accuracy(config: dict) -> dict[tuple[str, str], pd.DataFrame]:
    """{(direction, task): study 1's LatentWire bridge accuracy rows (bridge with the source, every seed)};
    `config["bridge_results"]`: [direction, task, paths] of plan.bridge_results, which the workflow passes."""
    out = {}
    for direction, task, paths in config.get("bridge_results", []):
        key = (direction, task)
        rows = pd.concat([pd.read_csv(p) for p in paths], ignore_index=True)
        rows["variant"] = rows["variant"].fillna("")
        out[key] = rows[(rows.metric == "accuracy") & (rows.variant == "")]
    return out


def _metric(frame, metric: str) -> float | None:
    values = frame[frame.metric == metric].value
    return float(values.mean()) if len(values) else None


def main_table(config: dict, frame, preds, out_dir: Path) -> Path:
    records, notes = [], []
    texts, bridges = text_communication(config), bridge_accuracy(config)
    spaces = config.get("shared_space") or {}
    seeds = {}
    for direction, variant, seed in plan.runs(config):
        if variant == "both":
            seeds.setdefault(direction, []).append(seed)
    for direction in seeds:
        d = plan.directions(config)[direction]
        for task in plan.eval_tasks(config):
            base = baselines(task)
            for mode in MODES:
                cache = _accuracy(frame, direction=direction, run_variant="both", task=task, method=f"cache_{mode}")
                alone = _accuracy(frame, direction=direction, run_variant="both", task=task, method=f"alone_{mode}")
                n = int(cache.n.iloc[0]) if len(cache) else 0
                pick = lambda v: cache[cache.variant == v].value  # noqa: E731
                scored = plan.task_seeds(config, direction, task)   # later seeds: dense_kv.later_seed_tasks only
                ps = [paired_p(preds, direction, "both", task, mode, s, "shuffled_source") for s in scored]
                beats = all(p < ALPHA for p in ps) and pick("").mean() > pick("shuffled_source").mean()
                records.append({
                    "direction": f"{d['sender']} -> {d['receiver']}", "task": task + (" (ood)" if task in
                                                                                      config["dense_kv"].get("ood", []) else ""),
                    "mode": mode, "seeds": ", ".join(map(str, scored)), "transfer": _cell(pick(""), n), "shuffled": _cell(pick("shuffled_source"), n),
                    "zero": _cell(pick("zero_source"), n), "no communication": _cell(alone.value.iloc[:1], n),
                    "majority": f"{base['majority'][0]:.3f} (n={base['majority'][1]})" if "majority" in base else "not run",
                    "random": f"{base['random'][0]:.3f} (n={base['random'][1]})" if "random" in base else "not run",
                    "p vs shuffled (per seed)": ", ".join(f"{p:.2g}" for p in ps),
                    "counts": "yes" if beats else "no"})
                costs = frame[(frame.direction == direction) & (frame.run_variant == "both") & (frame.task == task)
                              & (frame.method == f"cache_{mode}") & (frame.variant == "")]
                records[-1].update(_communication_cells(costs, texts.get((direction, task)),
                                                        bridges.get((direction, task)), mode))
                fuser = _accuracy(frame, direction=direction, run_variant="fuser", task=task, method="fuser_aware",
                                  variant="")
                records[-1]["fuser"] = "" if mode != "aware" else (
                    _cell(fuser.value, _n(fuser)) if len(fuser) else "not run")
                if spaces:
                    records[-1]["shared space"] = _shared_space_cell(frame, preds, direction, spaces.get(direction),
                                                                     task, mode)
    table = pd.DataFrame(records).set_index(["direction", "task", "mode"])
    notes.append("transfer: the receiver with the sender's transformed cache before its prompt; shuffled: another "
                 "example's transformed cache; zero: the receiver's own sink, then zeros; no communication: the "
                 "receiver alone (unaware: the question only; aware: it reads the input); zero and no communication "
                 "do not depend on the trained maps: scored once per direction. `counts`: the transfer "
                 "beats its shuffled control by McNemar's exact test, p < 0.05, for every seed scored on the task (column "
                 "seeds).")
    notes.append("text: study 1's text relay of the same sender and receiver on the same rows (the sender writes a "
                 "message under its chat template, greedy, ending at its first complete answer; the receiver reads it "
                 "after 5 demonstrations), in the aware rows only (the receiver does not read the input). GFLOP: "
                 "analytic FLOPs per example (studies/dense_kv/compute.py): cache = the sender's reading + the "
                 "transformation + the receiver's prompt after the transferred cache; text = the sender's prompt and "
                 "generation + the receiver's reading of the message (its demonstrations left out: text's cost is "
                 "counted low). text/cache: the ratio. LatentWire: study 1's soft-token bridge (trained per task) of "
                 "the same direction, every seed it ran; not run where study 1 does not train it. fuser: the C2C-style "
                 "gated fuser (aware only, scored on dense_kv.ablation_tasks; its controls in table_fuser).")
    if spaces:
        notes.append("shared space: study 2's adapters T[sender->S] and T[S->receiver] (kv_alignment run, its first "
                     "seed: " + ", ".join(f"{d}: {s['run']}" for d, s in spaces.items()) + "), trained for suffix "
                     "language modelling on its corpus and never on these tasks; where the two models share a "
                     "tokenizer (dense_kv.shared_space), with its own shuffled control and McNemar p against it.")
    later = config["dense_kv"].get("later_seed_tasks")
    notes.append(f"seeds per direction: {json.dumps(seeds)}" + (
        f"; a direction's later seeds are scored on {', '.join(later)} only (dense_kv.later_seed_tasks: the budget), "
        "the other tasks on its first seed (column seeds)" if later is not None and
        set(later) != set(plan.eval_tasks(config)) else "") + "; majority and random: study 1's baselines on the same rows")
    out = out_dir / "table_main"
    write_table(table, out, "Dense KV transfer: accuracy, mean ± std over the seeds of column `seeds` (n = eval rows)",
                "dense_main", notes)
    return out.with_suffix(".md")


def _shared_space_cell(frame, preds, direction: str, space: dict | None, task: str, mode: str) -> str:
    """Study 2's shared space on this direction: accuracy (n), its shuffled control and the paired p."""
    if space is None:
        return "not run"
    rows = _accuracy(frame, direction=direction, run_variant="shared_space", task=task, method=f"cache_{mode}")
    pick = lambda v: rows[rows.variant == v].value  # noqa: E731
    if rows.empty:
        return "not run"
    p = paired_p(preds, direction, "shared_space", task, mode, space["seed"], "shuffled_source")
    return f"{_cell(pick(''), _n(rows))}; shuffled {pick('shuffled_source').mean():.3f}, p {p:.2g}"


def _communication_cells(cache, text, bridge, mode: str) -> dict:
    """Compute of the cache path, and text communication and the LatentWire bridge beside it (aware rows)."""
    flops = _metric(cache, "flops_per_example")
    cells = {"cache GFLOP": f"{flops / 1e9:.2f}" if flops else "n/a"}
    if mode != "aware":
        return cells | {"text": "", "text GFLOP": "", "text/cache": "", "LatentWire": ""}
    if text is None:
        cells |= {"text": "not run", "text GFLOP": "", "text/cache": ""}
    else:
        accuracy = text[text.metric == "accuracy"]
        text_flops = _metric(text, "flops_per_example")
        cells |= {"text": _cell(accuracy.value, int(accuracy.n.iloc[0])), "text GFLOP": f"{text_flops / 1e9:.2f}",
                  "text/cache": f"{text_flops / flops:.1f}x" if flops else "n/a"}
    cells["LatentWire"] = "not run" if bridge is None or bridge.empty else _cell(bridge.value, int(bridge.n.iloc[0]))
    return cells


def phase_table(config: dict, frame, out_dir: Path) -> Path | None:
    headline = config["dense_kv"].get("headline")
    variants = [(v, s) for d, v, s in plan.runs(config) if d == headline and v in ("phase1", "phase2")]
    if not variants:
        return None
    seed = variants[0][1]
    records = []
    for task in plan.run_tasks(config, "phase1", headline, seed):
        for mode in MODES:
            row = {"task": task, "mode": mode}
            for variant, label in (("phase1", "phase 1 only"), ("phase2", "phase 2 only"), ("both", "both phases")):
                cells = _accuracy(frame, direction=headline, run_variant=variant, task=task, method=f"cache_{mode}",
                                  variant="", seed=seed)
                row[label] = _cell(cells.value, int(cells.n.iloc[0]) if len(cells) else 0)
            records.append(row)
    out = out_dir / "table_phases"
    write_table(pd.DataFrame(records).set_index(["task", "mode"]), out,
                f"Phase ablation on {headline}, seed {seed}: accuracy of the transferred cache", "dense_phases",
                ["phase 1: reconstruction of the receiver's own cache (closed form); phase 2: the receiver's loss "
                 "on the answer; phase 2 only starts from zero maps"])
    return out.with_suffix(".md")


def duality(config: dict, frame, out_dir: Path) -> list[Path]:
    fractions = sorted(set(config["dense_kv"].get("keep_fractions", [])) | {1.0})
    headline, tasks = plan.headline(config), plan.duality_tasks(config)
    seed = plan.directions(config)[headline]["seeds"][0]    # the sweep's run: every point of one trained run
    records = []
    for task in tasks:
        for mode in MODES:
            for f in fractions:
                variant = "" if f == 1 else f"keep_{f:g}"
                cells = _accuracy(frame, direction=headline, run_variant="both", task=task, method=f"cache_{mode}",
                                  variant=variant, seed=seed)
                if len(cells):
                    accuracy, n = float(cells.value.iloc[0]), int(cells.n.iloc[0])
                    records.append({"task": task, "mode": mode, "kept": f, "accuracy": accuracy, "n": n,
                                    "binomial se": (accuracy * (1 - accuracy) / n) ** 0.5})
    table = pd.DataFrame(records)
    out = out_dir / "fig_duality"
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, max(1, len(tasks)), figsize=(3.2 * max(1, len(tasks)), 2.8), squeeze=False)
        for ax, task in zip(axes[0], tasks):
            for mode in MODES:
                part = table[(table.task == task) & (table["mode"] == mode)] if len(table) else table
                if len(part):
                    ax.errorbar(part.kept, part.accuracy, yerr=part["binomial se"], marker="o", label=mode, capsize=2)
            ax.set(title=task, xlabel="fraction of the transferred cache kept", ylabel="accuracy")
            ax.legend(fontsize=7)
        save_figure(fig, out, f"{headline}, seed {seed}; positions ranked by the attention the receiver's prompt gives them with "
                              f"the whole cache in place (sink excluded, always kept); bars: binomial standard error; n = eval rows per point")
        plt.close(fig)
    write_table(table.set_index(["task", "mode", "kept"]) if len(table) else table, out,
                f"Duality: accuracy vs fraction of the transferred cache kept ({headline}, seed {seed})", "dense_duality")
    return [out.with_suffix(".png"), out.with_suffix(".md")]


def reconstruction_table(config: dict, out_dir: Path) -> Path:
    records = []
    for direction, variant, seed in plan.runs(config):
        record = json.loads((Path(plan.run_dir(direction, variant, seed)) / "transform" / "record.json").read_text())
        for task, error in record.get("phase1", {}).items():
            records.append({"direction": direction, "variant": variant, "seed": seed, "task": task,
                            "keys": round(error["key_relative_error"], 3),
                            "values": round(error["value_relative_error"], 3), "rows": error["rows"],
                            "parameters": record["trainable_parameters"]})
    out = out_dir / "table_reconstruction"
    frame = pd.DataFrame(records)
    write_table(frame.set_index(["direction", "variant", "seed", "task"]) if len(frame) else frame, out,
                "Phase 1: held-out reconstruction error of the receiver's own cache (relative: a zero cache is 1)",
                "dense_reconstruction")
    return out.with_suffix(".md")


def alignment_figure(config: dict, out_dir: Path) -> list[Path]:
    """fig_alignment: one example of the headline direction's token alignment (alignment.py), from the eval
    split `config["alignment_split"]` (the workflow passes it) of the first trained task."""
    from ... import zoo
    from ...tasks import read_split
    from . import alignment

    d = plan.directions(config)[plan.headline(config)]
    task = plan.train_tasks(config)[0]
    rows, _ = read_split(config["alignment_split"])
    template = config["tasks"][task]["prompts"]["sender"]
    strings = [template.format(text=row["text"]) for row in rows[:50]]
    s_tok, r_tok = (zoo.load_tokenizer(f"data/models/{d[end]}") for end in ("sender", "receiver"))
    index, frame = alignment.pick(strings, s_tok, r_tok)
    title = f"Token alignment, {d['sender']} -> {d['receiver']}: {task} eval row {index}"
    return alignment.figure(frame, out_dir / "fig_alignment", title, (d["sender"], d["receiver"]))


def write_all(config: dict, out_dir: str | Path) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    frame, preds = load(config)
    paths = [main_table(config, frame, preds, out_dir), *duality(config, frame, out_dir),
             reconstruction_table(config, out_dir), *alignment_figure(config, out_dir)]
    optional = (phase_table(config, frame, out_dir), compute_table(config, frame, out_dir),
                fuser_table(config, frame, preds, out_dir))
    paths += [p for p in optional if p]
    stems = {p.stem for p in paths}
    for stale in out_dir.iterdir():   # another config's outputs never stay beside this one's
        if stale.is_file() and stale.stem not in stems:
            stale.unlink()
    return paths
