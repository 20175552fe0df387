"""Tidy results -> tables and figures. One small function per output; shared style here.

Every function reads the tidy table (one row per run x metric) written by `collect`.
`study` is the config's `study` section, plus `few_shot_seeds` (the config's `few_shot.seeds`: the
k-shot and relay rows' seeds). Rules of every table:
- each accuracy cell shows its n (evaluation rows scored), and a table whose methods were not all
  scored on the same number of rows says so in a note naming them;
- a table keeps the seeds the config planned for each method (pair seeds for bridges, sweep_seeds
  for sweeps, few_shot.seeds for k-shot and relays, study.seeds otherwise), and a result row in its
  scope that it does not show is counted and named in its caption (figures: a footnote).
"""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from .errors import DataError  # noqa: E402
from .evaluate import COLUMNS, PREDICTION_COLUMNS, predictions_path  # noqa: E402
from .paired import ALPHA, CONTROLS, bridge_tests  # noqa: E402

BRIDGE_COLORS = ["tab:blue", "tab:green", "tab:purple", "tab:brown", "tab:cyan", "tab:olive"]
STYLE = {"figure.dpi": 120, "axes.spines.top": False, "axes.spines.right": False, "font.size": 9}
ORDER = ["zero_shot", "prompt_tuning", "bridge", "bridge:shuffled_source", "bridge:zero_source"]


def collect(inputs: list[str], out_path: str, predictions_out: str | None = None,
            tests_out: str | None = None) -> Path:
    """Concatenate tidy result CSVs into `out_path`; with `predictions_out`, also their per-example
    predictions (each result's `<name>.predictions.csv`: required when it has accuracy rows), and with
    `tests_out` the paired tests of every bridge run against its controls (paired.bridge_tests)."""
    frames = [pd.read_csv(path, keep_default_na=False, dtype=str) for path in inputs]
    table = pd.concat(frames, ignore_index=True).reindex(columns=COLUMNS)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out_path, index=False)
    if predictions_out or tests_out:
        predictions = collect_predictions(inputs, frames)
        if predictions_out:
            predictions.to_csv(predictions_out, index=False)
        if tests_out:
            bridge_tests(table, predictions).to_csv(tests_out, index=False)
    return out_path


def collect_predictions(inputs: list[str], frames: list[pd.DataFrame]) -> pd.DataFrame:
    """The per-example predictions of these result files (every file with accuracy rows must have them)."""
    parts = []
    for path, frame in zip(inputs, frames):
        sibling = predictions_path(path)
        if sibling.exists():
            parts.append(pd.read_csv(sibling, keep_default_na=False, dtype=str))
        elif (frame.metric == "accuracy").any():
            raise DataError(f"{path} has accuracy rows but no per-example predictions ({sibling}): rerun its job")
    if not parts:
        return pd.DataFrame(columns=PREDICTION_COLUMNS)
    return pd.concat(parts, ignore_index=True).reindex(columns=PREDICTION_COLUMNS)


def write_metrics(results_path, out_path) -> Path:
    """{task: {method label: mean accuracy}}: what `dvc metrics show` prints."""
    summary = accuracy_summary(read_results(results_path))
    metrics = {task: {row.label: round(row["mean"], 4) for _, row in part.iterrows()}
               for task, part in summary.groupby("task")}
    Path(out_path).write_text(json.dumps(metrics, indent=2) + "\n")
    return Path(out_path)


def read_results(path) -> pd.DataFrame:
    frame = pd.read_csv(path, keep_default_na=False, dtype=str)
    frame["value"] = frame["value"].astype(float)
    return frame


REASONING_TASKS = ("boolq", "piqa", "commonsense_qa")


def method_label(row) -> str:
    """One readable name per method (and pair / bridge / control)."""
    method = row.method
    if method == "random":
        return "random (uniform labels)"
    if method == "majority":
        return "majority class (of the training labels)"
    if method == "zero_shot":
        return f"{row.receiver} zero-shot (reads the text)"
    if method == "few_shot":
        return f"{row.receiver} {row.variant.replace('_', '-')} (reads the text)"
    if method == "prompt_tuning":
        return f"prompt tuning on {row.receiver} (no sender, no input)"
    if method in ("text_relay", "cot_relay"):
        return f"{'text' if method == 'text_relay' else 'CoT'} relay {row.sender} -> {row.receiver}"
    if method == "lora":
        return f"LoRA on {row.receiver} (reads the text)"
    if method.startswith("finetune_last"):
        return f"fine-tune last {method.removeprefix('finetune_last')} blocks of {row.receiver} (reads the text)"
    name = f"bridge {row.sender} -> {row.receiver} ({row.bridge})"
    controls = {"shuffled_source": "shuffled-source control", "zero_source": "zero-source control"}
    return f"{name}, {controls[row.variant]}" if row.variant else name


def method_rank(row) -> int:
    order = ["random", "majority", "zero_shot", "few_shot", "prompt_tuning", "text_relay", "cot_relay", "lora",
             "finetune", "bridge", "bridge:shuffled_source", "bridge:zero_source"]
    key = "finetune" if row.method.startswith("finetune_last") else row.method
    key = key + (f":{row.variant}" if key == "bridge" and row.variant else "")
    return order.index(key) if key in order else len(order)


def accuracy_summary(results: pd.DataFrame, metric: str = "accuracy") -> pd.DataFrame:
    """mean, std, seed count and n (the distinct eval row counts, a tuple) of a metric per (task, method
    label), in a fixed method order."""
    acc = results[results.metric == metric].copy()
    if acc.empty:
        return pd.DataFrame(columns=["task", "rank", "label", "mean", "std", "seeds", "n"])
    acc["label"] = acc.apply(method_label, axis=1)
    acc["rank"] = acc.apply(method_rank, axis=1)
    summary = acc.groupby(["task", "rank", "label"]).agg(mean=("value", "mean"), std=("value", "std"),
                                                          seeds=("value", "size"), n=("n", n_values))
    return summary.reset_index().fillna({"std": 0.0}).sort_values(["task", "rank", "label"])


def n_values(column) -> tuple[int, ...]:
    """The distinct eval row counts of some result rows (read as text: "30" < "100" as numbers), or of
    already aggregated tuples of them."""
    flat = [x for v in column for x in (v if isinstance(v, tuple) else (v,))]
    return tuple(sorted({int(float(v)) for v in flat if str(v) != ""}))


def _n_text(ns) -> str:
    return "n=" + "/".join(map(str, ns)) if ns else "n=?"


def cell(mean: float, std: float, seeds: int, ns) -> str:
    """`0.810 ± 0.020 (n=100)`: mean ± std over seeds (one seed: the value), and the eval rows scored."""
    std = 0.0 if pd.isna(std) else std
    value = f"{mean:.3f} ± {std:.3f}" if seeds > 1 else f"{mean:.3f}"
    return f"{value} ({_n_text(ns)})"


def _cell(row) -> str:
    return cell(row["mean"], row["std"], row["seeds"], row["n"])


def unequal_n_note(acc: pd.DataFrame, label: str = "label") -> str:
    """Per task, the methods whose n differs from the rest (they were not scored on the same rows)."""
    notes = []
    for task, part in acc.groupby("task", sort=True):
        ns = part.groupby(label)["n"].agg(n_values)
        if len(set(ns)) < 2:
            continue
        # the reference is the n most methods share (a tie: the larger n); the others are named
        members = {group: [name for name, value in ns.items() if value == group] for group in set(ns)}
        groups = sorted(members, key=lambda group: (-len(members[group]), -max(group, default=0)))
        modal = groups[0]
        odd = "; ".join(f"{', '.join(members[group])} ({_n_text(group)})" for group in groups[1:])
        notes.append(f"{task}: {odd}; every other method {_n_text(modal)}")
    if not notes:
        return ""
    return "Unequal n, these methods were not scored on the same rows as the rest: " + " | ".join(notes) + "."


def _seed_key(seed) -> tuple:
    return (0, int(float(seed))) if str(seed).strip() not in ("", "nan") else (1, 0)


def not_shown_note(dropped: pd.DataFrame, why: str) -> str:
    """`3 accuracy rows of results.csv not shown (why): sst2 / <method> seed 7; ...`, or ""."""
    if dropped.empty:
        return ""
    named = dropped.assign(label=dropped.apply(method_label, axis=1))
    parts = []
    for (task, name), part in named.groupby(["task", "label"], sort=True):
        seeds = sorted(set(part.seed), key=_seed_key)
        parts.append(f"{task} / {name}" + (f" seed {', '.join(map(str, seeds))}" if seeds != [""] else "")
                     + (f" ({len(part)} rows)" if len(part) > len(seeds) else ""))
    return (f"{len(dropped)} accuracy row{'s' if len(dropped) > 1 else ''} of results.csv not shown ({why}): "
            + "; ".join(parts) + ".")


def _caption(*parts: str) -> str:
    return " ".join(part for part in parts if part)


def _seed_set(seeds) -> set[str]:
    return {str(int(s)) for s in seeds}


def pair_seeds(study: dict, sender: str, receiver: str) -> list[int]:
    """The main bridges' seeds of a pair (its own `seeds`, else study.seeds); same-model pairs: sweep_seeds."""
    for pair in study["pairs"]:
        if (pair["sender"], pair["receiver"]) == (sender, receiver):
            return list(pair.get("seeds", study["seeds"]))
    return list(study["sweep_seeds"])


def planned(rows: pd.DataFrame, study: dict, bridge_seeds=None) -> pd.Series:
    """Whether each row's seed is one the config planned for its method: k-shot and relays few_shot.seeds,
    bridges their pair's seeds (or `bridge_seeds` for a sweep table), fine-tuning sweep_seeds, others
    study.seeds. Rows without a seed (deterministic methods) always are."""
    few_shot = _seed_set(study.get("few_shot_seeds", study["seeds"]))

    def is_planned(row) -> bool:
        if str(row.seed).strip() in ("", "nan"):
            return True
        if row.method in ("few_shot", "text_relay", "cot_relay"):
            seeds = few_shot
        elif row.method == "bridge":
            seeds = _seed_set(bridge_seeds if bridge_seeds is not None
                              else pair_seeds(study, row.sender, row.receiver))
        elif row.method == "lora" or row.method.startswith("finetune_last"):
            seeds = _seed_set(study["sweep_seeds"])
        else:
            seeds = _seed_set(study["seeds"])
        return str(int(float(row.seed))) in seeds

    return rows.apply(is_planned, axis=1).astype(bool) if len(rows) else pd.Series(False, index=rows.index)


def _keep_planned(rows: pd.DataFrame, study: dict, why: str, bridge_seeds=None) -> tuple[pd.DataFrame, str]:
    """(the rows of planned seeds, the caption note naming the accuracy rows left out)."""
    keep = planned(rows, study, bridge_seeds)
    dropped = rows[~keep & (rows.metric == "accuracy")]
    return rows[keep], not_shown_note(dropped, why)


def write_table(frame: pd.DataFrame, out_prefix, caption: str, label: str, notes: list[str] = ()) -> None:
    """OUT.md and OUT.tex; `notes` (e.g. the paired tests) go under the table, one line each."""
    if isinstance(frame.index, pd.MultiIndex):  # "sst2 / bridge", not "('sst2', 'bridge')"
        frame = frame.set_axis([" / ".join(map(str, key)) for key in frame.index], axis=0)
    out_prefix = Path(out_prefix)
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    md_notes = "".join(f"\n{line}\n\n" if i == 0 else f"- {line}\n" for i, line in enumerate(notes))
    out_prefix.with_suffix(".md").write_text(f"{caption}\n\n{frame.to_markdown()}\n{md_notes}")
    latex = frame.to_latex(caption=_latex_escape(caption), label=f"tab:{label}", escape=True)
    if notes:
        block = "\\par\\smallskip\\footnotesize\n" + " \\\\\n".join(_latex_escape(line) for line in notes) + "\n"
        head, tail = latex.rsplit("\\end{table}", 1)
        latex = head + block + "\\end{table}" + tail
    out_prefix.with_suffix(".tex").write_text(latex)


PAIRED_HEADER = ("Paired tests (McNemar's exact test, two-sided, rows paired by eval example; "
                 "results/paired_tests.csv): each bridge run against its shuffled-source control, zero-source "
                 "control and majority class; it beats the best of the three when it is more accurate than the "
                 f"most accurate one with p < {ALPHA}.")


def paired_tests_path(results_path) -> Path:
    """results/paired_tests.csv beside results/results.csv (written by `collect --paired-tests`)."""
    return Path(results_path).with_name("paired_tests.csv")


def _p_text(p: float) -> str:
    return f"{p:.2g}" if p >= 1e-3 else f"{p:.1e}"


def paired_notes(results_path, shown: pd.DataFrame) -> list[str]:
    """The notes under a table for the bridge runs it shows (accuracy rows, variant ""): per run (one per seed)
    the p of the bridge against each control and whether it beats the best of them; [] without bridge runs."""
    runs = shown[(shown.method == "bridge") & (shown.variant == "") & (shown.metric == "accuracy")]
    if runs.empty:
        return []
    path = paired_tests_path(results_path)
    if not path.exists():
        return [PAIRED_HEADER, f"no paired tests: {path.name} not found beside {Path(results_path).name}"]
    tests = pd.read_csv(path, keep_default_na=False, dtype=str)
    keys = ["task", "sender", "receiver", "bridge", "seed", "fingerprint"]
    by_run = {key: part for key, part in tests.groupby(keys, sort=False)}
    lines, beaten = [], 0
    runs = runs.assign(order=runs.seed.map(_seed_key)).sort_values(["task", "sender", "receiver", "bridge", "order"])
    for _, run in runs.iterrows():
        name = f"{run.task}, {run.sender} -> {run.receiver} ({run.bridge}) seed {run.seed}"
        part = by_run.get(tuple(str(run[k]) for k in keys))
        if part is None:
            lines.append(f"{name}: no paired test in {path.name}")
            continue
        ok = part[part.status == "ok"]
        bridge_acc = float(ok.bridge_accuracy.iloc[0]) if len(ok) else float(run.value)
        versus = []
        for _, test in part.iterrows():
            if test.status == "ok":
                versus.append(f"{CONTROLS[test.control]} {float(test.control_accuracy):.3f} "
                              f"(p = {_p_text(float(test.p_value))})")
            else:
                versus.append(f"{CONTROLS.get(test.control, test.control)}: {test.status}")
        best = ok[ok.best_control == "True"]
        verdict = "yes" if (part.beats_best == "True").any() else "no"
        beaten += verdict == "yes"
        best_text = (f"{CONTROLS[best.control.iloc[0]]} {float(best.control_accuracy.iloc[0]):.3f}"
                     if len(best) else "none tested")
        n = f"n={ok.n.iloc[0]}" if len(ok) else _n_text(n_values([run.n]))
        lines.append(f"{name}: bridge {bridge_acc:.3f} ({n}) vs " + ", ".join(versus)
                     + f"; best control: {best_text}; beaten: {verdict}")
    return [PAIRED_HEADER + f" {beaten} of {len(runs)} bridge runs beat their best control."] + lines


def _latex_escape(text: str) -> str:
    """The caption as LaTeX text (pandas escapes the cells, not the caption): `few_shot.seeds`, `5%`, ..."""
    special = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
               "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
    return "".join(special.get(char, char) for char in text)


def save_figure(fig, out_prefix, note: str = "") -> None:
    """Save as OUT.png; `note` (unequal n, rows not shown) goes under the axes as a footnote."""
    Path(out_prefix).parent.mkdir(parents=True, exist_ok=True)
    if note:
        wrapped = textwrap.fill(note, width=int(fig.get_figwidth() * 22))
        lines = wrapped.count("\n") + 1
        bottom = min(0.6, (0.12 * lines + 0.05) / fig.get_figheight())
        fig.tight_layout(rect=(0, bottom, 1, 1))
        fig.text(0.01, 0.01, wrapped, fontsize=6, va="bottom", ha="left")
    else:
        fig.tight_layout()
    fig.savefig(Path(out_prefix).with_suffix(".png"))
    plt.close(fig)


def _accuracy_by_task(results: pd.DataFrame, label: str) -> pd.DataFrame:
    """Methods x tasks table of accuracy cells (mean ± std over seeds)."""
    summary = accuracy_summary(results)
    if summary.empty:
        raise ValueError(f"{label}: no accuracy rows in the results")
    summary["cell"] = summary.apply(_cell, axis=1)
    wide = summary.pivot_table(index=["rank", "label"], columns="task", values="cell", aggfunc="first")
    wide = wide.reset_index(level="rank", drop=True).rename_axis(index="method", columns=None).fillna("–")
    seeds = summary.groupby("label")["seeds"].max()
    wide.insert(0, "seeds", [int(seeds[name]) for name in wide.index])
    return wide


MAIN_METHODS = ["random", "majority", "zero_shot", "few_shot", "prompt_tuning", "text_relay", "bridge"]
PLANNED_SEEDS = ("seeds the config did not plan for the method: study.seeds, a pair's own seeds for its "
                 "bridges, few_shot.seeds for k-shot and relays")


def _main_rows(results: pd.DataFrame, study: dict, tasks) -> tuple[pd.DataFrame, str]:
    """Table 2's accuracy rows (no sweep variants, same-model bridges or fine-tuning: their own tables),
    on the seeds the config planned for each method; and the note naming what that leaves out."""
    main = set(study["bridges"])
    pairs = {(p["sender"], p["receiver"]) for p in study["pairs"]}
    keep = results.task.isin(tasks) & results.method.isin(MAIN_METHODS) & (results.metric == "accuracy")
    is_bridge = results.method == "bridge"
    in_pairs = pd.Series([(s, r) in pairs for s, r in zip(results.sender, results.receiver)], index=results.index,
                         dtype=bool)
    main_bridge = results.bridge.isin(main) & in_pairs
    return _keep_planned(results[keep & (~is_bridge | main_bridge)], study, PLANNED_SEEDS)


def _accuracy_caption(title: str, rows: pd.DataFrame, dropped_note: str) -> str:
    acc = rows[rows.metric == "accuracy"]
    labelled = acc.assign(label=acc.apply(method_label, axis=1)) if len(acc) else acc.assign(label=[])
    return _caption(title, "Cells: mean ± std over seeds where there is more than one (the seeds column: how "
                    "many), n = evaluation rows scored.", unequal_n_note(labelled), dropped_note)


def table2_main(results_path, out_prefix, study: dict) -> None:
    """Every task x {random, majority class, prompt tuning, each model 0-shot and k-shot, text relay, bridge}."""
    results, dropped = _main_rows(read_results(results_path), study, study["tasks"])
    wide = _accuracy_by_task(results, "table2_main")
    write_table(wide, out_prefix, _accuracy_caption("Table 2: accuracy on every task.", results, dropped), "main",
                 paired_notes(results_path, results))


def table9_reasoning(results_path, out_prefix, study: dict) -> None:
    """Table 2 on the reasoning tasks (BoolQ, PIQA, CommonsenseQA)."""
    tasks = [t for t in study["tasks"] if t in REASONING_TASKS]
    if not tasks:
        raise ValueError("table9_reasoning: study.tasks has none of " + ", ".join(REASONING_TASKS))
    results, dropped = _main_rows(read_results(results_path), study, tasks)
    wide = _accuracy_by_task(results, "table9_reasoning")
    write_table(wide, out_prefix, _accuracy_caption("Table 9: reasoning tasks.", results, dropped), "reasoning",
                 paired_notes(results_path, results))


def _first_pair_bridges(results: pd.DataFrame, study: dict, tasks, bridges) -> pd.DataFrame:
    first = study["pairs"][0]
    return results[(results.method == "bridge") & results.task.isin(tasks) & results.bridge.isin(bridges)
                   & (results.sender == first["sender"]) & (results.receiver == first["receiver"])]


def _by_bridge(rows: pd.DataFrame, index_name: str, index_of=lambda bridge: bridge) -> tuple[pd.DataFrame, str]:
    """Rows per bridge (variant) x columns per task (+ controls and trainable parameters); the unequal-n note."""
    acc = rows[rows.metric == "accuracy"].copy()
    acc["column"] = acc.task + acc.variant.map(lambda v: f" ({v.replace('_', '-')})" if v else "")
    acc["key"] = acc.bridge.map(index_of)
    grouped = acc.groupby(["key", "column"]).agg(mean=("value", "mean"), std=("value", "std"),
                                                 size=("value", "size"), n=("n", n_values)).reset_index()
    grouped["cell"] = grouped.apply(lambda r: cell(r["mean"], r["std"], r["size"], r["n"]), axis=1)
    wide = grouped.pivot(index="key", columns="column", values="cell").rename_axis(index=index_name, columns=None)
    params = rows[rows.metric == "trainable_parameters"].copy()
    if not params.empty:
        params["key"] = params.bridge.map(index_of)
        wide["trainable parameters"] = params.groupby("key")["value"].first().map(lambda v: f"{int(v):,}")
    named = acc.assign(label=acc.key.astype(str) + acc.variant.map(lambda v: f" ({v.replace('_', '-')})" if v
                                                                    else ""))
    return wide.fillna("–"), unequal_n_note(named)


def _sweep_rows(results: pd.DataFrame, study: dict, tasks, bridges) -> tuple[pd.DataFrame, str]:
    """A sweep table's rows (first pair, these bridge variants) on study.sweep_seeds, and the note naming
    the accuracy rows of other seeds (e.g. the main bridge's pair seeds) left out."""
    rows = _first_pair_bridges(results, study, tasks, bridges)
    return _keep_planned(rows, study, f"seeds outside study.sweep_seeds {study['sweep_seeds']}",
                         bridge_seeds=study["sweep_seeds"])


def table1_architectures(results_path, out_prefix, study: dict) -> None:
    """Bridge architecture ablation (first pair), with the shuffled- and zero-source controls."""
    section = study["ablation"]
    rows, dropped = _sweep_rows(read_results(results_path), study, section["tasks"], section["bridges"])
    wide, unequal = _by_bridge(rows, "bridge")
    wide = wide.reindex([b for b in section["bridges"] if b in set(rows.bridge)])
    first = study["pairs"][0]
    write_table(wide, out_prefix, _caption(
        f"Table 1: bridge architectures, {first['sender']} -> {first['receiver']}, seeds {study['sweep_seeds']}, "
        "equal step budgets; n = evaluation rows scored.", unequal, dropped), "architectures",
        paired_notes(results_path, rows))


def _variant_value(bridge: str, key: str, study: dict):
    """A sweep variant's value of `key`; the main bridge's own for the main bridge (its M for table 7)."""
    from .study import parse_variant
    if bridge == study["bridges"][0]:
        return study.get(f"main_{key}")
    return parse_variant(bridge)[1].get(key)


def table7_token_scaling(results_path, out_prefix, study: dict) -> None:
    """Accuracy against the number of soft tokens M (first pair)."""
    from .study import token_scaling_names
    section, names = study["token_scaling"], token_scaling_names(study)
    rows, dropped = _sweep_rows(read_results(results_path), study, section["tasks"], names)
    wide, unequal = _by_bridge(rows[rows.variant == ""], "soft tokens M",
                               lambda b: _variant_value(b, "num_queries", study))
    write_table(wide.sort_index(), out_prefix, _caption(
        f"Table 7: accuracy against the number of soft tokens M, seeds {study['sweep_seeds']}; n = evaluation "
        "rows scored.", unequal, dropped), "token_scaling")


def fig5_token_scaling(results_path, out_prefix, study: dict) -> None:
    """Accuracy against the number of soft tokens M, one line per task."""
    from .study import token_scaling_names
    section, names = study["token_scaling"], token_scaling_names(study)
    rows, dropped = _sweep_rows(read_results(results_path), study, section["tasks"], names)
    rows = rows[(rows.variant == "") & (rows.metric == "accuracy")].copy()
    rows["M"] = rows.bridge.map(lambda b: _variant_value(b, "num_queries", study))
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(4.5, 3.2))
        for task, part in rows.groupby("task"):
            stats = part.groupby("M")["value"].agg(["mean", "std"]).fillna(0.0)
            ns = _n_text(n_values(part.n))
            ax.errorbar(stats.index, stats["mean"], yerr=stats["std"], marker="o", label=f"{task} ({ns})", capsize=3)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("soft tokens M")
        ax.set_ylabel("accuracy")
        ax.legend()
        save_figure(fig, out_prefix, _caption(unequal_n_note(rows.assign(label=rows.bridge)), dropped))


def table10_hyperparameters(results_path, out_prefix, study: dict) -> None:
    """One option changed at a time from the main bridge (the appendix's source-layer sweep included)."""
    from .study import sweep_variants
    names = sweep_variants(study)["hyperparameters"]
    rows, dropped = _sweep_rows(read_results(results_path), study, study["hyperparameters"]["tasks"], names)
    rows = rows[rows.variant == ""]
    wide, unequal = _by_bridge(rows, "setting", lambda b: b.split("~", 1)[1].replace("=", " = "))
    wide = wide.reindex([n.split("~", 1)[1].replace("=", " = ") for n in names if n in set(rows.bridge)])
    write_table(wide, out_prefix, _caption(
        f"Table 10: hyperparameters of the main bridge, one changed at a time (source_layer rows: the "
        f"source-layer sweep), seeds {study['sweep_seeds']}; n = evaluation rows scored.", unequal, dropped),
        "hyperparameters")


def _pair_rows(results: pd.DataFrame, study: dict, tasks, sweep: bool) -> tuple[pd.DataFrame, str]:
    """The main bridge's accuracy rows of every pair on the planned seeds (see _pair_table), and the note
    naming the rows left out."""
    main = study["bridges"][0]
    rows = results[(results.method == "bridge") & (results.bridge == main) & results.task.isin(tasks)
                   & (results.variant == "") & (results.metric == "accuracy")]
    if sweep:
        return _keep_planned(rows, study, f"seeds outside study.sweep_seeds {study['sweep_seeds']}",
                             bridge_seeds=study["sweep_seeds"])
    return _keep_planned(rows, study, "seeds the config did not plan for that pair")


def _pair_table(results: pd.DataFrame, study: dict, tasks, sweep: bool) -> tuple[pd.DataFrame, str]:
    """The main bridge per pair and task: stats with cells, and the notes (unequal n, rows not shown).
    sweep: every pair on study.sweep_seeds (table 6); else each pair on its own seeds (table 8)."""
    rows, dropped = _pair_rows(results, study, tasks, sweep)
    rows = rows.assign(pair=rows.sender + " -> " + rows.receiver,
                       kind=(rows.sender == rows.receiver).map({True: "same model", False: "cross model"}))
    stats = rows.groupby(["kind", "pair", "task"]).agg(mean=("value", "mean"), std=("value", "std"),
                                                      size=("value", "size"), n=("n", n_values)).reset_index()
    stats["cell"] = stats.apply(lambda r: cell(r["mean"], r["std"], r["size"], r["n"]), axis=1)
    return stats, _caption(unequal_n_note(rows.assign(label=rows.pair)), dropped)


def table6_same_vs_cross(results_path, out_prefix, study: dict) -> None:
    """Same-model (A->A, B->B) against cross-model bridges."""
    stats, notes = _pair_table(read_results(results_path), study, study["same_model"]["tasks"], sweep=True)
    wide = stats.pivot_table(index=["kind", "pair"], columns="task", values="cell", aggfunc="first").fillna("–")
    write_table(wide.rename_axis(columns=None), out_prefix, _caption(
        f"Table 6: same-model vs cross-model bridges ({study['bridges'][0]}), seeds {study['sweep_seeds']}; "
        "n = evaluation rows scored.", notes), "same_vs_cross")


def fig4_same_vs_cross(results_path, out_prefix, study: dict) -> None:
    """Same-model against cross-model bridges, bars per task."""
    stats, notes = _pair_table(read_results(results_path), study, study["same_model"]["tasks"], sweep=True)
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(5.5, 3.2))
        tasks, pairs = sorted(stats.task.unique()), list(dict.fromkeys(stats.sort_values("kind").pair))
        width = 0.8 / max(1, len(pairs))
        for i, pair in enumerate(pairs):
            part = stats[stats.pair == pair].set_index("task").reindex(tasks)
            ax.bar([t + i * width for t in range(len(tasks))], part["mean"], width, yerr=part["std"].fillna(0),
                   label=pair, capsize=2)
        ax.set_xticks([t + width * (len(pairs) - 1) / 2 for t in range(len(tasks))], tasks)
        ax.set_ylim(0, 1)
        ax.set_ylabel("accuracy")
        ax.legend(fontsize=7)
        save_figure(fig, out_prefix, notes)


def table8_bidirectional(results_path, out_prefix, study: dict) -> None:
    """Both directions of the main bridge on every task."""
    results = read_results(results_path)
    stats, notes = _pair_table(results, study, study["tasks"], sweep=False)
    stats = stats[stats.kind == "cross model"]
    shown, _ = _pair_rows(results, study, study["tasks"], sweep=False)
    wide = stats.pivot_table(index="task", columns="pair", values="cell", aggfunc="first").fillna("–")
    seeds = "; ".join(f"{p['sender']} -> {p['receiver']}: {pair_seeds(study, p['sender'], p['receiver'])}"
                      for p in study["pairs"])
    write_table(wide.rename_axis(columns=None), out_prefix, _caption(
        f"Table 8: both directions of the main bridge ({study['bridges'][0]}), seeds {seeds}; "
        "n = evaluation rows scored.", notes), "bidirectional",
        paired_notes(results_path, shown[shown.sender != shown.receiver]))


def fig2_bridge_vs_prompt_tuning(results_path, out_prefix, study: dict) -> None:
    """Per task: each main bridge (first pair, one bar each) against prompt tuning of the same receiver,
    with the majority class as a line."""
    stats, shown, dropped = fig2_stats(read_results(results_path), study)
    first, tasks = study["pairs"][0], list(study["tasks"])
    series = [f"bridge:{b}" for b in study["bridges"]] + ["prompt_tuning"]
    width = 0.8 / len(series)
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(1.1 * len(tasks) + 2.5, 3.2))
        for i, name in enumerate(series):
            part = stats[stats.series == name].set_index("task").reindex(tasks)
            label = (f"bridge {first['sender']} -> {first['receiver']} ({name.split(':', 1)[1]})"
                     if name.startswith("bridge:") else f"prompt tuning on {first['receiver']}")
            ax.bar([t + width * i for t in range(len(tasks))], part["mean"], width, yerr=part["std"], label=label,
                   capsize=2, color="tab:orange" if name == "prompt_tuning" else BRIDGE_COLORS[i % len(BRIDGE_COLORS)])
        majority = stats[stats.series == "majority"].set_index("task").reindex(tasks)["mean"]
        for t, value in enumerate(majority):
            ax.hlines(value, t - width / 2, t + width * (len(series) - 0.5), colors="black", linestyles="dashed",
                      label="majority class" if t == 0 else None)
        ax.set_xticks([t + width * (len(series) - 1) / 2 for t in range(len(tasks))], tasks, rotation=20)
        ax.set_ylim(0, 1)
        ax.set_ylabel("accuracy")
        ax.legend(fontsize=7)
        save_figure(fig, out_prefix, _caption(unequal_n_note(shown.assign(label=shown.apply(method_label, axis=1))),
                                               dropped))


def fig2_stats(results: pd.DataFrame, study: dict) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """fig2's bars: (task, series, mean, std) with one series per main bridge (`bridge:<name>`), prompt tuning
    and the majority class; the rows shown; the note naming the rows left out."""
    results, dropped = _main_rows(results, study, study["tasks"])
    first = study["pairs"][0]
    acc = results[(results.variant == "") & (
        ((results.method == "bridge") & (results.sender == first["sender"]) & (results.receiver == first["receiver"]))
        | ((results.method == "prompt_tuning") & (results.receiver == first["receiver"]))
        | (results.method == "majority"))]
    acc = acc.assign(series=acc.method.where(acc.method != "bridge", "bridge:" + acc.bridge))
    stats = acc.groupby(["task", "series"])["value"].agg(["mean", "std"]).fillna(0.0).reset_index()
    return stats, acc, dropped


def table4_finetuning(results_path, out_prefix, study: dict) -> None:
    """Bridge vs receiver fine-tuning (LoRA, last N blocks) and CoT relay: accuracy, n, parameters, time."""
    results = read_results(results_path)
    section, first, main = study["finetune"], study["pairs"][0], study["bridges"][0]
    rows = results[results.task.isin(section["tasks"]) & (results.variant == "") & (
        ((results.method == "bridge") & (results.bridge == main) & (results.sender == first["sender"])
         & (results.receiver == first["receiver"]))
        | ((results.method == "lora") | results.method.str.startswith("finetune_last"))
        | (results.method.isin(["cot_relay", "text_relay"]) & (results.sender == first["sender"])
           & (results.receiver == first["receiver"])))]
    rows, dropped = _keep_planned(rows, study, f"bridge and fine-tuning seeds outside study.sweep_seeds "
                                  f"{study['sweep_seeds']}, relay seeds outside few_shot.seeds",
                                  bridge_seeds=study["sweep_seeds"])
    rows = rows.assign(label=rows.apply(method_label, axis=1), rank=rows.apply(method_rank, axis=1))
    metrics = {"accuracy": "accuracy", "trainable_parameters": "trainable parameters",
               "seconds_per_example": "eval s/example (receiver)", "relay_seconds_per_example": "relay s/example"}
    stats = rows[rows.metric.isin(metrics)].groupby(["task", "rank", "label", "metric"])["value"].mean()
    wide = stats.unstack("metric").reindex(columns=[m for m in metrics if m in set(rows.metric)])
    wide = wide.rename(columns=metrics).round(3)
    acc = rows[rows.metric == "accuracy"]
    if not acc.empty:
        ns = acc.groupby(["task", "rank", "label"])["n"].agg(lambda c: _n_text(n_values(c)).removeprefix("n="))
        wide.insert(1 if "accuracy" in wide else 0, "n", ns)
    wide = wide.reset_index(level="rank", drop=True)
    if "trainable parameters" in wide:
        wide["trainable parameters"] = wide["trainable parameters"].map(
            lambda v: "–" if pd.isna(v) else f"{int(v):,}")
    write_table(wide.fillna("–"), out_prefix, _caption(
        f"Table 4: bridge vs fine-tuning the receiver reading the text, seeds {study['sweep_seeds']} (relays: "
        "mean over the k-shot seeds); n = evaluation rows scored; relays generate text with the sender first "
        "(relay s/example).", unequal_n_note(acc), dropped), "finetuning")


LATENCY_STAGES = ["latency_sender_encode_seconds", "latency_bridge_seconds", "latency_receiver_seconds",
                  "latency_relay_generate_seconds"]


def _latency(results: pd.DataFrame) -> pd.DataFrame:
    # the speed job's rows (variant batch1), not the relay evaluation's generated_tokens
    rows = results[(results.metric.str.startswith("latency_") | (results.metric == "generated_tokens"))
                   & (results.variant == "batch1") & results.method.isin(["bridge", "text_relay"])]
    return rows.pivot_table(index=["task", "method"], columns="metric", values="value", aggfunc="mean")


def table3_latency(results_path, out_prefix, study: dict) -> None:
    """End-to-end latency at batch 1 per stage, bridge vs text relay."""
    results = read_results(results_path)
    wide = _latency(results)
    if wide.empty:
        raise ValueError("table3_latency: no latency rows in the results")
    # The relay's mean length over the eval rows (its evaluation), beside the latency's timed examples.
    senders = results[(results.metric == "latency_seconds") & (results.method == "text_relay")].groupby("task").sender.first()
    relay = results[(results.metric == "relay_generated_tokens") & (results.method == "text_relay")]
    lengths = relay[relay.sender == relay.task.map(senders)].groupby("task").value.mean()
    wide["relay_generated_tokens"] = [lengths.get(task, float("nan")) if method == "text_relay" else float("nan")
                                      for task, method in wide.index]
    if "latency_seconds" in wide:
        bridge = wide.xs("bridge", level="method")["latency_seconds"]
        wide["speed-up vs text relay"] = [
            wide.loc[(task, "text_relay"), "latency_seconds"] / bridge[task] if method == "bridge" else 1.0
            for task, method in wide.index]
    write_table(wide.round(4).fillna("–"), out_prefix, "Table 3: end-to-end latency at batch 1 (median seconds "
                 "per stage), bridge vs text relay; generated_tokens: the relay's mean length "
                 "over the timed examples, relay_generated_tokens: over every eval row.", "latency")


def fig3_latency(results_path, out_prefix, study: dict) -> None:
    """Latency per stage at batch 1, stacked, bridge vs text relay."""
    wide = _latency(read_results(results_path)).fillna(0.0)
    stages = [s for s in LATENCY_STAGES if s in wide]
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(5.5, 2.6))
        labels = [f"{task}: {method.replace('_', ' ')}" for task, method in wide.index]
        left = [0.0] * len(wide)
        for stage in stages:
            values = wide[stage].tolist()
            ax.barh(labels, values, left=left, label=stage.removeprefix("latency_").removesuffix("_seconds"))
            left = [a + b for a, b in zip(left, values)]
        ax.set_xscale("log")
        ax.set_xlabel("seconds per example, batch 1 (log)")
        ax.legend(fontsize=7)
        save_figure(fig, out_prefix)


def table5_throughput(results_path, out_prefix, study: dict) -> None:
    """Samples/s at each batch size: bridge, receiver reading the text, text relay."""
    results = read_results(results_path)
    rows = results[results.metric == "samples_per_second"]
    if rows.empty:
        raise ValueError("table5_throughput: no throughput rows in the results")
    wide = rows.pivot_table(index=["task", "method"], columns="variant", values="value", aggfunc="mean")
    wide = wide.reindex(columns=sorted(wide.columns, key=lambda c: int("".join(filter(str.isdigit, c)) or 0)))
    write_table(wide.round(2).rename_axis(columns=None), out_prefix, "Table 5: throughput (samples/s) by batch size.",
                 "throughput")


# Outputs not written by a FIGURES function (speed.soft_token_neighbours writes both files).
OTHER_OUTPUTS = {"soft_token_neighbours": "Nearest receiver-vocabulary tokens (cosine) of each soft token, and "
                                          "the soft tokens' pairwise cosine, for a few examples per class."}


STUDY_FOLDERS = {"kv_alignment": "K-V cache alignment (study 2: `snakemake --cores all figures_kv_alignment`)",
                 "dense_kv": "dense heterogeneous KV transfer (study 3: `snakemake --cores all figures_dense_kv`)"}


def figures_readme(out_path, outputs: list[str], config_fingerprint: str, commit: str,
                   prune: bool = False) -> list[Path]:
    """figures/README.md: every table and figure, and what produced it. With `prune`, the other files
    beside it (an earlier config's outputs) are removed first, so the folder holds only what this config
    produced; subfolders (other studies' figures) and hidden files are left alone. Returns the removed files."""
    out_path = Path(out_path)
    nested = lambda path: Path(path).parent.name != out_path.parent.name  # noqa: E731  (a study's subfolder)
    keep = {Path(path).name for path in outputs if not nested(path)} | {out_path.name}
    removed = sorted(p for p in out_path.parent.iterdir()
                     if p.is_file() and p.name not in keep and not p.name.startswith(".")) \
        if prune and out_path.parent.is_dir() else []
    for path in removed:
        path.unlink()
    lines = ["# Figures and tables", "",
             f"Produced by `snakemake --cores all figures` from commit `{commit}` with config fingerprint "
             f"`{config_fingerprint}`. Do not edit by hand: rerun the pipeline. This folder holds exactly the "
             "files below (files of an earlier config are removed); the other studies' subfolders hold what their "
             "own targets write (listed by name: `figures_latentwire` alone does not build them).", "",
             "| file | what |", "|---|---|"]
    for path in outputs:
        name, shown = Path(path).stem, Path(path).name
        if nested(path):   # another study's subfolder: named with it (its own report writes it)
            folder = Path(path).parent.name
            shown, doc = f"{folder}/{Path(path).name}", STUDY_FOLDERS.get(folder, folder)
        else:
            doc = ((FIGURES[name].__doc__ or "").strip().splitlines() or [""])[0] if name in FIGURES else \
                OTHER_OUTPUTS.get(name, "")
        lines.append(f"| `{shown}` | {doc} |")
    if removed:
        lines += ["", "Removed when this config ran (not produced by it): "
                  + ", ".join(f"`{p.name}`" for p in removed) + "."]
    out_path.write_text("\n".join(lines) + "\n")
    return removed


def fig_bridge_vs_baselines(results_path, out_prefix, study: dict) -> None:
    """Accuracy bars with seed std, one panel per task: the main bridge, its controls and the baselines."""
    results, dropped = _main_rows(read_results(results_path), study, study["tasks"])
    summary = accuracy_summary(results)
    tasks = list(dict.fromkeys(summary["task"]))
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, len(tasks), figsize=(7.5 * len(tasks), 3.2), squeeze=False)
        for ax, task in zip(axes[0], tasks):
            part = summary[summary.task == task]
            colors = ["tab:blue" if l.startswith("bridge") and "control" not in l else
                      "tab:gray" if "control" in l or l.startswith(("random", "majority")) else "tab:orange"
                      for l in part.label]
            ax.barh(part.label, part["mean"], xerr=part["std"], color=colors)
            ax.set_xlim(0, 1.25)
            ax.invert_yaxis()
            ax.set_xlabel("accuracy")
            counts = set(part["n"])
            ax.set_title(task + (f" ({_n_text(next(iter(counts)))}, every method)" if len(counts) == 1
                                 else " (n differs by method)"))
            for y, (value, std, ns) in enumerate(zip(part["mean"], part["std"], part["n"])):
                ax.text(value + std + 0.01, y, f"{value:.3f} ({_n_text(ns)})", va="center")
        save_figure(fig, out_prefix, _caption(unequal_n_note(summary), dropped))


FIGURES = {
    "fig_bridge_vs_baselines": fig_bridge_vs_baselines,
    "table1_architectures": table1_architectures, "table2_main": table2_main, "table3_latency": table3_latency,
    "fig3_latency": fig3_latency, "table4_finetuning": table4_finetuning, "table5_throughput": table5_throughput,
    "table6_same_vs_cross": table6_same_vs_cross, "fig4_same_vs_cross": fig4_same_vs_cross,
    "table7_token_scaling": table7_token_scaling, "fig5_token_scaling": fig5_token_scaling,
    "table8_bidirectional": table8_bidirectional, "table9_reasoning": table9_reasoning,
    "table10_hyperparameters": table10_hyperparameters, "fig2_bridge_vs_prompt_tuning": fig2_bridge_vs_prompt_tuning,
}
