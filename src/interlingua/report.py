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


def method_label(row) -> str:
    if row.method == "zero_shot":
        return f"{row.receiver} zero-shot (reads the text)"
    if row.method == "prompt_tuning":
        return f"prompt tuning on {row.receiver} (no sender, no input)"
    name = f"bridge {row.sender} -> {row.receiver} ({row.bridge})"
    controls = {"shuffled_source": "shuffled-source control", "zero_source": "zero-source control"}
    return f"{name}, {controls[row.variant]}" if row.variant else name


def accuracy_summary(results: pd.DataFrame) -> pd.DataFrame:
    """mean, std and seed count of accuracy per (task, method label), in a fixed method order."""
    acc = results[results.metric == "accuracy"].copy()
    acc["label"] = acc.apply(method_label, axis=1)
    acc["rank"] = acc.apply(lambda r: ORDER.index(r.method + (f":{r.variant}" if r.variant else "")), axis=1)
    summary = acc.groupby(["task", "rank", "label"]).agg(mean=("value", "mean"), std=("value", "std"),
                                                          seeds=("value", "size"), n=("n", "first"))
    return summary.reset_index().fillna({"std": 0.0}).sort_values(["task", "rank", "label"])


def _cell(row) -> str:
    return f"{row['mean']:.3f} ± {row['std']:.3f}" if row["seeds"] > 1 else f"{row['mean']:.3f}"


def table_main(results_path, out_prefix) -> None:
    """figures/table_main.{md,tex}: accuracy of every method on every task."""
    summary = accuracy_summary(read_results(results_path))
    summary["cell"] = summary.apply(_cell, axis=1)
    wide = summary.pivot_table(index=["rank", "label"], columns="task", values="cell", aggfunc="first")
    wide = wide.reset_index(level="rank", drop=True).rename_axis(index="method", columns=None)
    seeds = summary.groupby("label")["seeds"].max()
    wide.insert(0, "seeds", [int(seeds[label]) for label in wide.index])
    counts = summary.groupby("task")["n"].first()
    caption = ("Accuracy on the evaluation split (" + ", ".join(f"{t}: {n} examples" for t, n in counts.items())
               + "); mean ± std over seeds where there is more than one.")
    out_prefix = Path(out_prefix)
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    out_prefix.with_suffix(".md").write_text(f"{caption}\n\n{wide.to_markdown()}\n")
    out_prefix.with_suffix(".tex").write_text(wide.to_latex(caption=caption, label="tab:main"))


def fig_bridge_vs_baselines(results_path, out_prefix) -> None:
    """figures/fig_bridge_vs_baselines.png: accuracy bars with seed std, one panel per task."""
    summary = accuracy_summary(read_results(results_path))
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
        fig.tight_layout()
        Path(out_prefix).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(Path(out_prefix).with_suffix(".png"))
        plt.close(fig)


FIGURES = {"table_main": table_main, "fig_bridge_vs_baselines": fig_bridge_vs_baselines}
