"""The K-V alignment study's tables and figures (figures/kv_alignment/), from its runs and members.

Every NLL is the target's mean suffix NLL (nats per token) over the run's held-out windows (n in each
cell), mean ± std over the seeds run. "cross" paths are source != target; the cycle is m -> S -> m.
Paired tests: one-sided Wilcoxon signed-rank on per-window NLL (matched < control), first seed's windows;
a translated prefix "helps" only where it beats both the shuffled prefix and no prefix at p < 0.05.
"""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from scipy.stats import wilcoxon  # noqa: E402

from ...report import STYLE, save_figure, write_table  # noqa: E402
from . import plan  # noqa: E402

ALPHA = 0.05


def _load(run_dir: Path, seed_dirs: list[Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    curves, scores = [], []
    for d in seed_dirs:
        seed = int(d.name.removeprefix("seed"))
        curves.append(pd.read_csv(d / "curves.csv").assign(seed=seed))
        scores.append(pd.read_csv(d / "scores.csv").assign(seed=seed))
    return pd.concat(curves, ignore_index=True), pd.concat(scores, ignore_index=True)


def run_data(config: dict, run: str) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """(curves, final per-window scores, summary of the first seed) of a run, all its seeds."""
    real, spec = plan.resolve(config, run)
    dirs = [Path(plan.RUNS_DIR) / real / f"seed{s}" for s in spec["seeds"]]
    curves, scores = _load(Path(plan.RUNS_DIR) / real, dirs)
    return curves, scores, json.loads((dirs[0] / "summary.json").read_text())


def p_less(scores: pd.DataFrame, source: str, target: str, control: str) -> float:
    """One-sided paired test that `matched` NLL < `control` NLL on the first seed's windows."""
    first = scores[scores.seed == scores.seed.min()]
    matched = first.query("source == @source and target == @target and condition == 'matched'").set_index("window").nll
    ctrl_src = source if control == "shuffled" else target
    other = first.query("source == @ctrl_src and target == @target and condition == @control").set_index("window").nll
    diff = (matched - other.reindex(matched.index)).dropna()
    if len(diff) < 2 or (diff == 0).all():
        return 1.0
    return float(wilcoxon(diff, alternative="less").pvalue)


def _cell(values: pd.Series, n: int) -> str:
    return (f"{values.mean():.3f} ± {values.std():.3f} (n={n})" if len(values) > 1 else f"{values.mean():.3f} (n={n})")


def final_table(curves: pd.DataFrame, scores: pd.DataFrame) -> pd.DataFrame:
    """Rows: (target, source); columns: none, own, matched, shuffled, zero, p(matched < shuffled), p(< none)."""
    last = curves[curves.step == curves.step.max()]
    per_seed = last.groupby(["source", "target", "condition", "seed"]).nll.mean().reset_index()
    n = int(last.n.max())
    rows = []
    for (src, tgt), part in per_seed[per_seed.condition.isin(["matched", "shuffled"])].groupby(["source", "target"]):
        row = {"target": tgt, "source": src + (" (cycle)" if src == tgt else "")}
        for cond in ("none", "own", "zero"):
            row[cond] = _cell(per_seed.query("target == @tgt and source == @tgt and condition == @cond").nll, n)
        for cond in ("matched", "shuffled"):
            row[cond] = _cell(part[part.condition == cond].nll, n)
        p_shuf, p_none = p_less(scores, src, tgt, "shuffled"), p_less(scores, src, tgt, "none")
        row["p < shuffled"], row["p < none"] = f"{p_shuf:.2g}", f"{p_none:.2g}"
        row["helps"] = "yes" if max(p_shuf, p_none) < ALPHA else "no"
        rows.append(row)
    return pd.DataFrame(rows).set_index(["target", "source"]).sort_index()


def fig3_setting(config: dict, setting: str, out_dir: Path) -> Path:
    curves, _, _ = run_data(config, f"pool_{setting}")
    targets = sorted(curves.target.unique())
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, len(targets), figsize=(3.2 * len(targets), 2.8), squeeze=False)
        for ax, tgt in zip(axes[0], targets):
            part = curves[curves.target == tgt]
            mean = part.groupby(["source", "condition", "step"]).nll.agg(["mean", "std"]).reset_index()
            for (src, cond), line in mean[mean.condition.isin(["matched", "shuffled"])].groupby(["source", "condition"]):
                label = f"{src}{' (cycle)' if src == tgt else ''}" + (" shuffled" if cond == "shuffled" else "")
                ax.plot(line.step, line["mean"], ls="--" if src == tgt else (":" if cond == "shuffled" else "-"),
                        label=label, alpha=0.6 if cond == "shuffled" else 1.0)
                ax.fill_between(line.step, line["mean"] - line["std"].fillna(0), line["mean"] + line["std"].fillna(0),
                                alpha=0.15)
            for cond, color in (("none", "grey"), ("own", "black"), ("zero", "tab:red")):
                level = mean[(mean.condition == cond) & (mean.source == tgt)]["mean"].mean()
                ax.axhline(level, color=color, lw=0.8, ls="-.",
                           label={"none": "no prefix", "own": "own cache", "zero": "zero cache"}[cond])
            ax.set_title(f"target {tgt}")
            ax.set_xlabel("translator step")
            ax.set_ylabel("held-out suffix NLL (nats/token)")
            ax.legend(fontsize=5)
        n = int(curves.n.max())
        seeds = curves.seed.nunique()
        out = out_dir / f"fig3_{setting}"
        save_figure(fig, out, note=f"Pool setting '{setting}': n={n} held-out windows per point, mean ± std over "
                                   f"{seeds} seed(s).")
    return out.with_suffix(".png")


def fig3_final(config: dict, out_dir: Path) -> Path:
    frames, notes = [], []
    for setting in plan.section(config).get("settings", {}):
        curves, scores, summary = run_data(config, f"pool_{setting}")
        table = final_table(curves, scores)
        table.index = pd.MultiIndex.from_tuples([(setting, *i) for i in table.index], names=["setting", "target", "source"])
        frames.append(table)
        notes.append(f"{setting}: translator parameters {summary['parameters_total']:,} "
                     f"({', '.join(f'{k} {v:,}' for k, v in summary['parameters'].items())}); "
                     f"{curves.seed.nunique()} seed(s)")
    out = out_dir / "fig3_final"
    write_table(pd.concat(frames), out, "Figure 3, final step: target's held-out suffix NLL after each prefix "
                "(lower is better); rows: setting / target / source. Paired one-sided Wilcoxon tests on per-window NLL (first seed).", "kv_fig3",
                ["Notes:", *notes])
    return out.with_suffix(".md")


def members_table(config: dict, out_dir: Path) -> Path:
    rows = []
    for name in plan.pretrained_members(config):
        refs = [name] + [f"{name}@{s}" for s in plan.section(config)["members"][name]["pretrain"].get("snapshots", [])]
        for ref in refs:
            manifest = json.loads((Path(plan.member_dir(config, ref)) / "manifest.json").read_text())
            for corpus, result in manifest.get("heldout", {}).items():
                rows.append({"member": plan.ref_name(ref), "corpus": corpus,
                             "trained on": "yes" if result["trained_on"] else "no",
                             "held-out NLL": round(result["nll"], 3), "unigram NLL": round(result["unigram_nll"], 3),
                             "gap (nats)": round(result["gap"], 3), "n tokens": result["tokens"],
                             "steps": manifest["total_steps"], "parameters": f"{manifest['parameters']:,}",
                             "margin met": "yes" if manifest["margin"]["met"] else "NO"})
    out = out_dir / "members"
    write_table(pd.DataFrame(rows).set_index(["member", "corpus"]), out,
                "Pool members: held-out NLL against a unigram model on the same tokens (target: 1 nat below it "
                "on the text a member trained on).", "kv_members")
    return out.with_suffix(".md")


def fig4_extensibility(config: dict, out_dir: Path, key: str = "extensibility") -> list[Path]:
    """Figure 4 (`extensibility`) or 4b (`join`): a newcomer's paths, trained and never trained on."""
    ext = plan.section(config)[key]
    new = plan.ref_name(ext["new"])
    name = f"{plan.NEWCOMERS[key]}_{new}"
    curves, scores, _ = run_data(config, name)
    _, spec = plan.resolve(config, name)
    trained = {tuple(p) for p in spec["paths"]}
    table = final_table(curves, scores).reset_index()
    table = table[(table.target == new) | table.source.str.startswith(new)]
    table["paths"] = ["trained" if (s.split(" ")[0], t) in trained else "never trained"
                      for t, s in zip(table.target, table.source)]
    last = curves[curves.step == curves.step.max()]

    def pick(cond, source, target):
        return last[(last.source == source) & (last.target == target) & (last.condition == cond)].nll.mean()

    table["gap closed"] = [f"{(pick('none', t, t) - pick('matched', s.split(' ')[0], t)) / gap:.2f}"
                           if (gap := pick("none", t, t) - pick("own", t, t)) > 0 else "n/a"
                           for t, s in zip(table.target, table.source)]
    out = out_dir / ("fig4_extensibility" if key == "extensibility" else "fig4b_join")
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(5, 0.9 + 0.35 * len(table)))
        labels, rows = [], []
        for t, src in zip(table.target, table.source):
            s = src.split(" ")[0]
            labels.append(f"{s} -> {t}" + (" *" if (s, t) not in trained else ""))
            rows.append((pick("matched", s, t), pick("shuffled", s, t), pick("none", t, t)))
        y = range(len(labels))
        ax.barh([i + 0.25 for i in y], [r[0] for r in rows], height=0.25, label="translated prefix")
        ax.barh(list(y), [r[1] for r in rows], height=0.25, label="shuffled prefix")
        ax.barh([i - 0.25 for i in y], [r[2] for r in rows], height=0.25, label="no prefix")
        ax.set_yticks(list(y), labels)
        values = [v for r in rows for v in r]
        ax.set_xlim(min(values) - 0.1, max(values) + 0.05)
        ax.set_xlabel("target's held-out suffix NLL (each target its own tokens)")
        ax.legend(fontsize=6)
        save_figure(fig, out, note=f"* = path never trained on (zero-shot). n={int(last.n.max())} held-out windows.")
    how = ("" if key == "extensibility" else
           f" '{new}' has another tokenizer: each of its positions reads the shared vectors of the pool positions "
           "covering its characters (mean), and pool positions read its vectors likewise; its NLLs are over its "
           "own tokens of the same suffix text, so compare them only with each other.")
    write_table(table.set_index(["paths", "target", "source"]).sort_index(), out,
                f"Figure {'4' if key == 'extensibility' else '4b'}, {'extensibility' if key == 'extensibility' else 'joining'}: "
                f"member '{new}' added to pool '{ext['setting']}' by training only its two adapters on paths with "
                f"{', '.join(ext['with'])} (everything else frozen); paths never trained on are scored zero-shot. "
                f"Gap closed: (none - translated) / (none - own prefix).{how}", "kv_fig4" if key == "extensibility" else "kv_fig4b")
    return [out.with_suffix(".png"), out.with_suffix(".md")]


PORT_LABELS = {"no_prompt": "no prompt", "random_B": "random soft prompt on B (lower bound)",
               "ported_pretrained": "ported A -> S -> B (suffix-LM adapters)",
               "ported_meta": "ported A -> S -> B (meta-trained adapters)",
               "tuned_B": "tuned on B (upper bound)"}


def fig5_portability(config: dict, out_dir: Path) -> list[Path]:
    """Held-out prompts: B's NLL of held-out completions after each module; gap closed and paired tests."""
    run = Path(plan.PORTABILITY_DIR)
    scores = pd.read_csv(run / "scores.csv")
    summary = json.loads((run / "summary.json").read_text())
    held = scores[(scores.split == "heldout") & scores.condition.isin(PORT_LABELS)]
    a, b = summary.get("source", "A"), summary.get("target", "B")
    stats = held.groupby("condition").agg(nll=("nll", "mean"), std=("nll", "std"), prompts=("prompt", "nunique"),
                                          tokens=("n_tokens", "sum")).reindex(list(PORT_LABELS))
    entry = summary["splits"]["heldout"]
    rows = []
    for cond, label in PORT_LABELS.items():
        row = {"module": label, "NLL": f"{stats.loc[cond, 'nll']:.3f} ± {stats.loc[cond, 'std']:.3f}",
               "n": f"{int(stats.loc[cond, 'prompts'])} prompts, {int(stats.loc[cond, 'tokens'])} tokens"}
        if cond in ("ported_pretrained", "ported_meta"):
            e = entry[cond]
            row["gap closed (random -> tuned)"] = "n/a" if e["gap_closed"] is None else f"{e['gap_closed']:.2f}"
            row["p < random"] = f"{e['p_below_random_B']:.2g}"
            row["gap closed (no prompt -> tuned)"] = ("n/a" if e["gap_closed_vs_no_prompt"] is None
                                                     else f"{e['gap_closed_vs_no_prompt']:.2f}")
            row["p < no prompt"] = f"{e['p_below_no_prompt']:.2g}"
        rows.append(row)
    table = pd.DataFrame(rows).set_index("module").fillna("")
    out = out_dir / "fig5_portability"
    write_table(table, out, f"Figure 5, module portability ({a} -> S -> {b}), held-out prompts: B's mean NLL of "
                "held-out completions after each soft-prompt module (mean ± std over prompts). Gap closed = "
                "(lower bound - ported) / (lower bound - tuned on B); a random soft prompt can be worse than none, so "
                "the gap from no prompt is beside it. Paired one-sided Wilcoxon tests over prompts.", "kv_fig5")
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(5, 2.8))
        ax.barh([PORT_LABELS[c] for c in stats.index][::-1], stats.nll.values[::-1], xerr=stats["std"].values[::-1],
                color=["tab:green", "tab:blue", "tab:cyan", "tab:grey", "tab:red"][::-1])
        ax.set_xlim(stats.nll.min() - 0.3, stats.nll.max() + 0.2)
        ax.set_xlabel(f"{b}'s held-out completion NLL (nats/token)")
        save_figure(fig, out, note=f"{int(stats.prompts.max())} held-out prompts; bars: mean ± std over prompts.")
    return [out.with_suffix(".png"), out.with_suffix(".md")]


def _cross_summary(config: dict, run: str) -> dict:
    curves, scores, summary = run_data(config, run)
    last = curves[curves.step == curves.step.max()]
    cross = last[(last.source != last.target) & last.condition.isin(["matched", "shuffled"])]
    cycle = last[(last.source == last.target) & (last.condition == "matched")]
    n = int(last.n.max())
    helps = final_table(curves, scores).helps
    return {"parameters per member": f"{summary['parameters_total'] // max(1, len(summary['parameters'])):,}",
            "cross matched": _cell(cross[cross.condition == "matched"].groupby("seed").nll.mean(), n),
            "cross shuffled": _cell(cross[cross.condition == "shuffled"].groupby("seed").nll.mean(), n),
            "cycle": _cell(cycle.groupby("seed").nll.mean(), n) if len(cycle) else "n/a",
            "no prefix": _cell(last[last.condition == "none"].groupby("seed").nll.mean(), n),
            "own cache": _cell(last[last.condition == "own"].groupby("seed").nll.mean(), n),
            "paths that help": f"{(helps == 'yes').sum()}/{len(helps)}"}


def table1_translators(config: dict, out_dir: Path) -> Path:
    abl = plan.section(config)["ablations"]
    rows = {name: _cross_summary(config, f"translator_{name}") for name in abl["translators"]}
    out = out_dir / "table1_translators"
    write_table(pd.DataFrame(rows).T, out, f"Table 1, translators on pool '{abl['setting']}': mean suffix NLL "
                "over paths at the final step (identity: paths between members of one cache shape only).",
                "kv_table1")
    return out.with_suffix(".md")


def table2_reconstruction(config: dict, out_dir: Path) -> Path:
    abl = plan.section(config)["ablations"]
    rows = {f"{w:g}": _cross_summary(config, f"recon{w:g}") for w in abl["reconstruction_weight"]}
    out = out_dir / "table2_reconstruction"
    write_table(pd.DataFrame(rows).T.rename_axis("reconstruction weight"), out,
                f"Table 2, reconstruction loss weight on pool '{abl['setting']}' (suffix LM loss always on).",
                "kv_table2")
    return out.with_suffix(".md")


def fig6_paths_per_step(config: dict, out_dir: Path) -> Path:
    abl = plan.section(config)["ablations"]
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(4, 3))
        for k in abl["paths_per_step"]:
            curves, _, _ = run_data(config, f"paths{k}")
            cross = curves[(curves.source != curves.target) & (curves.condition == "matched")]
            line = cross.groupby("step").nll.mean()
            ax.plot(line.index, line.values, label=f"{k} path(s) per step")
        ax.set_xlabel("translator step")
        ax.set_ylabel("cross-path suffix NLL")
        ax.legend(fontsize=6)
        out = out_dir / "fig6_paths_per_step"
        save_figure(fig, out, note=f"Pool '{abl['setting']}', mean over cross paths, n={int(curves.n.max())} "
                                   "held-out windows per point, first seed.")
    return out.with_suffix(".png")


def write_all(config: dict, out_dir: str | Path) -> list[Path]:
    """Every output plan.figures(config) lists."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    kv = plan.section(config)
    written = [fig3_setting(config, s, out_dir) for s in kv.get("settings", {})]
    written += [fig3_final(config, out_dir), members_table(config, out_dir)]
    for key in plan.NEWCOMERS:
        if kv.get(key):
            written += fig4_extensibility(config, out_dir, key)
    if kv.get("portability"):
        written += fig5_portability(config, out_dir)
    abl = kv.get("ablations") or {}
    if abl.get("translators"):
        written.append(table1_translators(config, out_dir))
    if abl.get("paths_per_step"):
        written.append(fig6_paths_per_step(config, out_dir))
    if abl.get("reconstruction_weight"):
        written.append(table2_reconstruction(config, out_dir))
    return written
