"""Tidy results -> tables and figures. One small function per output; shared style here.

Every function reads the tidy table (one row per run x metric) written by `collect`.
"""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from .evaluate import COLUMNS  # noqa: E402

STYLE = {"figure.dpi": 120, "axes.spines.top": False, "axes.spines.right": False, "font.size": 9}
ORDER = ["zero_shot", "prompt_tuning", "bridge", "bridge:shuffled_source", "bridge:zero_source"]


def collect(inputs: list[str], out_path: str) -> Path:
    frames = [pd.read_csv(path, keep_default_na=False, dtype=str) for path in inputs]
    table = pd.concat(frames, ignore_index=True).reindex(columns=COLUMNS)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out_path, index=False)
    return out_path


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
    order = ["random", "zero_shot", "few_shot", "prompt_tuning", "text_relay", "cot_relay", "lora", "finetune",
             "bridge", "bridge:shuffled_source", "bridge:zero_source"]
    key = "finetune" if row.method.startswith("finetune_last") else row.method
    key = key + (f":{row.variant}" if key == "bridge" and row.variant else "")
    return order.index(key) if key in order else len(order)


def accuracy_summary(results: pd.DataFrame, metric: str = "accuracy") -> pd.DataFrame:
    """mean, std and seed count of a metric per (task, method label), in a fixed method order."""
    acc = results[results.metric == metric].copy()
    if acc.empty:
        return pd.DataFrame(columns=["task", "rank", "label", "mean", "std", "seeds", "n"])
    acc["label"] = acc.apply(method_label, axis=1)
    acc["rank"] = acc.apply(method_rank, axis=1)
    summary = acc.groupby(["task", "rank", "label"]).agg(mean=("value", "mean"), std=("value", "std"),
                                                          seeds=("value", "size"), n=("n", "first"))
    return summary.reset_index().fillna({"std": 0.0}).sort_values(["task", "rank", "label"])


def _cell(row) -> str:
    return f"{row['mean']:.3f} ± {row['std']:.3f}" if row["seeds"] > 1 else f"{row['mean']:.3f}"


def _write_table(frame: pd.DataFrame, out_prefix, caption: str, label: str) -> None:
    if isinstance(frame.index, pd.MultiIndex):  # "sst2 / bridge", not "('sst2', 'bridge')"
        frame = frame.set_axis([" / ".join(map(str, key)) for key in frame.index], axis=0)
    out_prefix = Path(out_prefix)
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    out_prefix.with_suffix(".md").write_text(f"{caption}\n\n{frame.to_markdown()}\n")
    out_prefix.with_suffix(".tex").write_text(frame.to_latex(caption=caption, label=f"tab:{label}"))


def _save_figure(fig, out_prefix) -> None:
    Path(out_prefix).parent.mkdir(parents=True, exist_ok=True)
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


def _caption_counts(results: pd.DataFrame) -> str:
    acc = results[results.metric == "accuracy"]
    counts = acc["n"].astype(float).astype(int).groupby(acc["task"]).max()  # read as text: "30" > "100"
    return ", ".join(f"{task}: {n} examples" for task, n in counts.items())


def _main_rows(results: pd.DataFrame, study: dict, tasks) -> pd.DataFrame:
    """Table 2 methods on the main seeds: no sweep variants, no same-model bridges, no fine-tuning."""
    main = set(study["bridges"])
    pairs = {(p["sender"], p["receiver"]) for p in study["pairs"]}
    keep = results.task.isin(tasks) & results.method.isin(
        ["random", "zero_shot", "few_shot", "prompt_tuning", "text_relay", "bridge"])
    is_bridge = results.method == "bridge"
    main_bridge = results.bridge.isin(main) & results.apply(lambda r: (r.sender, r.receiver) in pairs, axis=1)
    seeds = results.seed.isin([str(s) for s in study["seeds"]]) | (results.seed == "")
    return results[keep & (~is_bridge | main_bridge) & seeds]


def table_main(results_path, out_prefix, study: dict | None = None) -> None:
    """figures/table_main.{md,tex}: accuracy of every main method on every task."""
    results = read_results(results_path)
    if study is not None:
        results = _main_rows(results, study, study["tasks"])
    wide = _accuracy_by_task(results, "table_main")
    caption = ("Accuracy on the evaluation split (" + _caption_counts(results)
               + "); mean ± std over seeds where there is more than one.")
    _write_table(wide, out_prefix, caption, "main")


def table2_main(results_path, out_prefix, study: dict) -> None:
    """Every task x {random, prompt tuning, each model 0-shot and 5-shot, text relay, bridge}."""
    results = _main_rows(read_results(results_path), study, study["tasks"])
    wide = _accuracy_by_task(results, "table2_main")
    caption = ("Table 2: accuracy on every task (" + _caption_counts(results) + "). Trained methods: mean ± std "
               f"over seeds {study['seeds']}; text relay on a seeded subset of the eval rows where n is smaller.")
    _write_table(wide, out_prefix, caption, "main")


def table9_reasoning(results_path, out_prefix, study: dict) -> None:
    """Table 2 on the reasoning tasks (BoolQ, PIQA, CommonsenseQA)."""
    tasks = [t for t in study["tasks"] if t in REASONING_TASKS]
    if not tasks:
        raise ValueError("table9_reasoning: study.tasks has none of " + ", ".join(REASONING_TASKS))
    results = _main_rows(read_results(results_path), study, tasks)
    wide = _accuracy_by_task(results, "table9_reasoning")
    _write_table(wide, out_prefix, "Table 9: reasoning tasks (" + _caption_counts(results) + ").", "reasoning")


def _first_pair_bridges(results: pd.DataFrame, study: dict, tasks, bridges) -> pd.DataFrame:
    first = study["pairs"][0]
    return results[(results.method == "bridge") & results.task.isin(tasks) & results.bridge.isin(bridges)
                   & (results.sender == first["sender"]) & (results.receiver == first["receiver"])]


def _by_bridge(rows: pd.DataFrame, index_name: str, index_of=lambda bridge: bridge) -> pd.DataFrame:
    """Rows per bridge (variant) x columns per task (+ controls and trainable parameters)."""
    acc = rows[rows.metric == "accuracy"].copy()
    acc["column"] = acc.task + acc.variant.map(lambda v: f" ({v.replace('_', '-')})" if v else "")
    acc["key"] = acc.bridge.map(index_of)
    grouped = acc.groupby(["key", "column"])["value"].agg(["mean", "std", "size"]).reset_index()
    grouped["cell"] = grouped.apply(lambda r: f"{r['mean']:.3f} ± {0 if pd.isna(r['std']) else r['std']:.3f}"
                                    if r["size"] > 1 else f"{r['mean']:.3f}", axis=1)
    wide = grouped.pivot(index="key", columns="column", values="cell").rename_axis(index=index_name, columns=None)
    params = rows[rows.metric == "trainable_parameters"].copy()
    if not params.empty:
        params["key"] = params.bridge.map(index_of)
        wide["trainable parameters"] = params.groupby("key")["value"].first().map(lambda v: f"{int(v):,}")
    return wide.fillna("–")


def table1_architectures(results_path, out_prefix, study: dict) -> None:
    """Bridge architecture ablation (first pair), with the shuffled- and zero-source controls."""
    section = study["ablation"]
    rows = _first_pair_bridges(read_results(results_path), study, section["tasks"], section["bridges"])
    rows = rows[rows.seed.isin([str(s) for s in study["sweep_seeds"]])]  # the main bridge has more: same seeds for all
    wide = _by_bridge(rows, "bridge").reindex([b for b in section["bridges"] if b in set(rows.bridge)])
    first = study["pairs"][0]
    _write_table(wide, out_prefix, f"Table 1: bridge architectures, {first['sender']} -> {first['receiver']}, "
                 f"seeds {study['sweep_seeds']}, equal step budgets.", "architectures")


def _variant_value(bridge: str, key: str):
    from .study import parse_variant
    return parse_variant(bridge)[1].get(key)


def table7_token_scaling(results_path, out_prefix, study: dict) -> None:
    """Accuracy against the number of soft tokens M (first pair)."""
    section, main = study["token_scaling"], study["bridges"][0]
    names = [f"{main}~num_queries={m}" for m in section["num_queries"]]
    rows = _first_pair_bridges(read_results(results_path), study, section["tasks"], names)
    rows = rows[rows.variant == ""]
    wide = _by_bridge(rows, "soft tokens M", lambda b: _variant_value(b, "num_queries")).sort_index()
    _write_table(wide, out_prefix, "Table 7: accuracy against the number of soft tokens M.", "token_scaling")


def fig5_token_scaling(results_path, out_prefix, study: dict) -> None:
    """Accuracy against the number of soft tokens M, one line per task."""
    section, main = study["token_scaling"], study["bridges"][0]
    names = [f"{main}~num_queries={m}" for m in section["num_queries"]]
    rows = _first_pair_bridges(read_results(results_path), study, section["tasks"], names)
    rows = rows[(rows.variant == "") & (rows.metric == "accuracy")].copy()
    rows["M"] = rows.bridge.map(lambda b: _variant_value(b, "num_queries"))
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(4.5, 3.2))
        for task, part in rows.groupby("task"):
            stats = part.groupby("M")["value"].agg(["mean", "std"]).fillna(0.0)
            ax.errorbar(stats.index, stats["mean"], yerr=stats["std"], marker="o", label=task, capsize=3)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("soft tokens M")
        ax.set_ylabel("accuracy")
        ax.legend()
        _save_figure(fig, out_prefix)


def table10_hyperparameters(results_path, out_prefix, study: dict) -> None:
    """One option changed at a time from the main bridge (the appendix's source-layer sweep included)."""
    from .study import sweep_variants
    names = sweep_variants(study)["hyperparameters"]
    rows = _first_pair_bridges(read_results(results_path), study, study["hyperparameters"]["tasks"], names)
    rows = rows[rows.variant == ""]
    wide = _by_bridge(rows, "setting", lambda b: b.split("~", 1)[1].replace("=", " = "))
    wide = wide.reindex([n.split("~", 1)[1].replace("=", " = ") for n in names if n in set(rows.bridge)])
    _write_table(wide, out_prefix, "Table 10: hyperparameters of the main bridge, one changed at a time "
                 "(source_layer rows: the source-layer sweep).", "hyperparameters")


def _pair_table(results: pd.DataFrame, study: dict, tasks, seeds) -> pd.DataFrame:
    main = study["bridges"][0]
    rows = results[(results.method == "bridge") & (results.bridge == main) & results.task.isin(tasks)
                   & (results.variant == "") & (results.metric == "accuracy") & results.seed.isin(map(str, seeds))]
    rows = rows.assign(pair=rows.sender + " -> " + rows.receiver,
                       kind=(rows.sender == rows.receiver).map({True: "same model", False: "cross model"}))
    stats = rows.groupby(["kind", "pair", "task"])["value"].agg(["mean", "std", "size"]).reset_index()
    stats["cell"] = stats.apply(lambda r: f"{r['mean']:.3f} ± {r['std']:.3f}" if r["size"] > 1
                                else f"{r['mean']:.3f}", axis=1)
    return stats


def table6_same_vs_cross(results_path, out_prefix, study: dict) -> None:
    """Same-model (A->A, B->B) against cross-model bridges."""
    stats = _pair_table(read_results(results_path), study, study["same_model"]["tasks"], study["sweep_seeds"])
    wide = stats.pivot_table(index=["kind", "pair"], columns="task", values="cell", aggfunc="first").fillna("–")
    _write_table(wide.rename_axis(columns=None), out_prefix,
                 f"Table 6: same-model vs cross-model bridges ({study['bridges'][0]}), seeds {study['sweep_seeds']}.",
                 "same_vs_cross")


def fig4_same_vs_cross(results_path, out_prefix, study: dict) -> None:
    """Same-model against cross-model bridges, bars per task."""
    stats = _pair_table(read_results(results_path), study, study["same_model"]["tasks"], study["sweep_seeds"])
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
        _save_figure(fig, out_prefix)


def table8_bidirectional(results_path, out_prefix, study: dict) -> None:
    """Both directions of the main bridge on every task."""
    stats = _pair_table(read_results(results_path), study, study["tasks"], study["seeds"])
    stats = stats[stats.kind == "cross model"]
    wide = stats.pivot_table(index="task", columns="pair", values="cell", aggfunc="first").fillna("–")
    _write_table(wide.rename_axis(columns=None), out_prefix,
                 f"Table 8: both directions of the main bridge, seeds {study['seeds']}.", "bidirectional")


def fig2_bridge_vs_prompt_tuning(results_path, out_prefix, study: dict) -> None:
    """Per task: the main bridge (first pair) against prompt tuning of the same receiver."""
    results = _main_rows(read_results(results_path), study, study["tasks"])
    first = study["pairs"][0]
    acc = results[(results.metric == "accuracy") & (results.receiver == first["receiver"]) & (results.variant == "")
                  & (((results.method == "bridge") & (results.sender == first["sender"]))
                     | (results.method == "prompt_tuning"))]
    stats = acc.groupby(["task", "method"])["value"].agg(["mean", "std"]).fillna(0.0).reset_index()
    tasks = list(study["tasks"])
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(1.1 * len(tasks) + 2.5, 3.2))
        for i, (method, color) in enumerate([("bridge", "tab:blue"), ("prompt_tuning", "tab:orange")]):
            part = stats[stats.method == method].set_index("task").reindex(tasks)
            label = f"bridge {first['sender']} -> {first['receiver']}" if method == "bridge" else "prompt tuning"
            ax.bar([t + 0.4 * i for t in range(len(tasks))], part["mean"], 0.4, yerr=part["std"], color=color,
                   label=label, capsize=2)
        ax.set_xticks([t + 0.2 for t in range(len(tasks))], tasks, rotation=20)
        ax.set_ylim(0, 1)
        ax.set_ylabel("accuracy")
        ax.legend(fontsize=7)
        _save_figure(fig, out_prefix)


def table4_finetuning(results_path, out_prefix, study: dict) -> None:
    """Bridge vs receiver fine-tuning (LoRA, last N blocks) and CoT relay: accuracy, parameters, time."""
    results = read_results(results_path)
    section, first, main = study["finetune"], study["pairs"][0], study["bridges"][0]
    seeds = [str(s) for s in study["sweep_seeds"]]
    rows = results[results.task.isin(section["tasks"]) & (results.variant == "") & (
        ((results.method == "bridge") & (results.bridge == main) & (results.sender == first["sender"])
         & (results.receiver == first["receiver"]) & results.seed.isin(seeds))
        | ((results.method == "lora") | results.method.str.startswith("finetune_last")) & results.seed.isin(seeds)
        | (results.method.isin(["cot_relay", "text_relay"]) & (results.sender == first["sender"])
           & (results.receiver == first["receiver"])))]
    rows = rows.assign(label=rows.apply(method_label, axis=1), rank=rows.apply(method_rank, axis=1))
    metrics = {"accuracy": "accuracy", "trainable_parameters": "trainable parameters",
               "seconds_per_example": "eval s/example (receiver)", "relay_seconds_per_example": "relay s/example"}
    stats = rows[rows.metric.isin(metrics)].groupby(["task", "rank", "label", "metric"])["value"].mean()
    wide = stats.unstack("metric").reindex(columns=[m for m in metrics if m in set(rows.metric)])
    wide = wide.rename(columns=metrics).reset_index(level="rank", drop=True)
    if "trainable parameters" in wide:
        wide["trainable parameters"] = wide["trainable parameters"].map(lambda v: "–" if pd.isna(v) else f"{int(v):,}")
    _write_table(wide.round(3).fillna("–"), out_prefix,
                 f"Table 4: bridge vs fine-tuning the receiver reading the text, seeds {study['sweep_seeds']}; "
                 "relays generate text with the sender first (relay s/example).", "finetuning")


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
    _write_table(wide.round(4).fillna("–"), out_prefix, "Table 3: end-to-end latency at batch 1 (median seconds "
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
        _save_figure(fig, out_prefix)


def table5_throughput(results_path, out_prefix, study: dict) -> None:
    """Samples/s at each batch size: bridge, receiver reading the text, text relay."""
    results = read_results(results_path)
    rows = results[results.metric == "samples_per_second"]
    if rows.empty:
        raise ValueError("table5_throughput: no throughput rows in the results")
    wide = rows.pivot_table(index=["task", "method"], columns="variant", values="value", aggfunc="mean")
    wide = wide.reindex(columns=sorted(wide.columns, key=lambda c: int("".join(filter(str.isdigit, c)) or 0)))
    _write_table(wide.round(2).rename_axis(columns=None), out_prefix, "Table 5: throughput (samples/s) by batch size.",
                 "throughput")


# Outputs not written by a FIGURES function (speed.soft_token_neighbours writes both files).
OTHER_OUTPUTS = {"soft_token_neighbours": "Nearest receiver-vocabulary tokens (cosine) of each soft token, and "
                                          "the soft tokens' pairwise cosine, for a few examples per class."}


def figures_readme(out_path, outputs: list[str], config_fingerprint: str, commit: str) -> None:
    """figures/README.md: every table and figure, and what produced it."""
    lines = ["# Figures and tables", "",
             f"Produced by `snakemake --cores all figures` from commit `{commit}` with config fingerprint "
             f"`{config_fingerprint}`. Do not edit by hand: rerun the pipeline.", "",
             "| file | what |", "|---|---|"]
    for path in outputs:
        name = Path(path).stem
        doc = ((FIGURES[name].__doc__ or "").strip().splitlines() or [""])[0] if name in FIGURES else \
            OTHER_OUTPUTS.get(name, "")
        lines.append(f"| `{Path(path).name}` | {doc} |")
    Path(out_path).write_text("\n".join(lines) + "\n")


def fig_bridge_vs_baselines(results_path, out_prefix, study: dict | None = None) -> None:
    """Accuracy bars with seed std, one panel per task: the main bridge, its controls and the baselines."""
    results = read_results(results_path)
    if study is not None:
        results = _main_rows(results, study, study["tasks"])
    summary = accuracy_summary(results)
    tasks = list(dict.fromkeys(summary["task"]))
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, len(tasks), figsize=(6.5 * len(tasks), 3.2), squeeze=False)
        for ax, task in zip(axes[0], tasks):
            part = summary[summary.task == task]
            colors = ["tab:blue" if l.startswith("bridge") and "control" not in l else
                      "tab:gray" if "control" in l else "tab:orange" for l in part.label]
            ax.barh(part.label, part["mean"], xerr=part["std"], color=colors)
            ax.set_xlim(0, 1)
            ax.invert_yaxis()
            ax.set_xlabel("accuracy")
            ax.set_title(f"{task} (n={part['n'].iloc[0]})")
            for y, value in enumerate(part["mean"]):
                ax.text(value + 0.01, y, f"{value:.3f}", va="center")
        _save_figure(fig, out_prefix)


FIGURES = {
    "table_main": table_main, "fig_bridge_vs_baselines": fig_bridge_vs_baselines,
    "table1_architectures": table1_architectures, "table2_main": table2_main, "table3_latency": table3_latency,
    "fig3_latency": fig3_latency, "table4_finetuning": table4_finetuning, "table5_throughput": table5_throughput,
    "table6_same_vs_cross": table6_same_vs_cross, "fig4_same_vs_cross": fig4_same_vs_cross,
    "table7_token_scaling": table7_token_scaling, "fig5_token_scaling": fig5_token_scaling,
    "table8_bidirectional": table8_bidirectional, "table9_reasoning": table9_reasoning,
    "table10_hyperparameters": table10_hyperparameters, "fig2_bridge_vs_prompt_tuning": fig2_bridge_vs_prompt_tuning,
}
