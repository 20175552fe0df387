"""Report aggregation on a hand-made results table: means, std, n per cell, the seeds each method planned,
the notes for unequal n and rows not shown, the majority baseline, and figures/ holding one config's files."""
from __future__ import annotations

import json
import statistics

import pandas as pd
import pytest
import torch

from interlingua import report
from interlingua.evaluate import COLUMNS, derangement, evaluate_majority, majority_label

STUDY = {"tasks": ["sst2"], "bridges": ["perceiver", "mlp"], "seeds": [0, 1], "sweep_seeds": [0],
         "few_shot_seeds": [7, 8],
         "pairs": [{"sender": "a", "receiver": "b"}, {"sender": "b", "receiver": "a", "seeds": [5]}],
         "ablation": {"tasks": ["sst2"], "bridges": ["perceiver", "mlp"]},
         "same_model": {"tasks": ["sst2"]}}


def row(method, value, *, seed="", n=100, variant="", sender="", receiver="", bridge="", task="sst2",
        metric="accuracy"):
    return {"task": task, "method": method, "variant": variant, "sender": sender, "receiver": receiver,
            "bridge": bridge, "seed": str(seed), "metric": metric, "value": value, "n": str(n), "fingerprint": "f"}


def bridge(value, seed, *, name="perceiver", sender="a", receiver="b", variant="", n=100):
    return row("bridge", value, seed=seed, variant=variant, sender=sender, receiver=receiver, bridge=name, n=n)


ROWS = [
    row("random", 0.50, seed=0), row("random", 0.40, seed=1),
    row("random", 0.99, seed=2),                                      # a seed the config did not plan
    row("majority", 0.59),
    row("zero_shot", 0.70, receiver="b"),
    row("few_shot", 0.60, seed=7, receiver="b", variant="5_shot"),    # few_shot.seeds, not study.seeds
    row("few_shot", 0.80, seed=8, receiver="b", variant="5_shot"),
    row("text_relay", 0.65, seed=7, sender="a", receiver="b", n=30),  # fewer rows: must be said
    row("text_relay", 0.75, seed=8, sender="a", receiver="b", n=30),
    row("prompt_tuning", 0.55, seed=0, receiver="b"), row("prompt_tuning", 0.57, seed=1, receiver="b"),
    bridge(0.80, 0), bridge(0.90, 1), bridge(0.30, 3),                # seed 3: not planned for the pair
    bridge(0.52, 0, variant="shuffled_source"), bridge(0.48, 1, variant="shuffled_source"),
    bridge(0.60, 0, name="mlp"), bridge(0.70, 1, name="mlp"),
    bridge(0.66, 5, sender="b", receiver="a"),                        # the reverse pair's own seed
    bridge(0.77, 0, sender="a", receiver="a"),                        # same-model: table 6, not table 2
    row("bridge", 0.75, seed=0, sender="a", receiver="b", bridge="perceiver", metric="seconds_per_example"),
]


@pytest.fixture
def results(tmp_path):
    path = tmp_path / "results.csv"
    pd.DataFrame(ROWS).reindex(columns=COLUMNS).to_csv(path, index=False)
    return path


def table(tmp_path, name):
    return (tmp_path / f"{name}.md").read_text()


def line_of(text, method):
    (found,) = [line for line in text.splitlines() if line.startswith(f"| {method} ")]
    return [cell.strip() for cell in found.strip("|").split("|")]


def test_main_table_cells_are_mean_std_and_n_of_the_planned_seeds(results, tmp_path):
    report.table2_main(results, tmp_path / "table2_main", STUDY)
    text = table(tmp_path, "table2_main")
    bridge_cell = f"{statistics.mean([0.8, 0.9]):.3f} ± {statistics.stdev([0.8, 0.9]):.3f} (n=100)"
    assert line_of(text, "bridge a -> b (perceiver)")[1:] == ["2", bridge_cell]
    assert line_of(text, "bridge a -> b (mlp)")[2] == "0.650 ± 0.071 (n=100)"      # bridges not averaged together
    assert line_of(text, "bridge b -> a (perceiver)")[1:] == ["1", "0.660 (n=100)"]  # the pair's own seed 5
    assert line_of(text, "b 5-shot (reads the text)")[1:] == ["2", "0.700 ± 0.141 (n=100)"]  # few_shot.seeds
    assert line_of(text, "random (uniform labels)")[2] == "0.450 ± 0.071 (n=100)"    # seed 2 not in the mean
    assert line_of(text, "majority class (of the training labels)")[1:] == ["1", "0.590 (n=100)"]
    assert line_of(text, "text relay a -> b")[2] == "0.700 ± 0.071 (n=30)"
    assert "bridge a -> a" not in text                                               # table 6's row
    # the unequal n is said, naming the method; what was left out is counted and named
    assert ("Unequal n, these methods were not scored on the same rows as the rest: sst2: text relay a -> b "
            "(n=30); every other method n=100.") in text
    assert "2 accuracy rows of results.csv not shown" in text
    assert "sst2 / bridge a -> b (perceiver) seed 3" in text and "sst2 / random (uniform labels) seed 2" in text
    assert "largest" not in text and "examples)" not in text
    tex = (tmp_path / "table2_main.tex").read_text()                               # LaTeX-safe caption and cells
    assert r"few\_shot.seeds" in tex and r"bridge a -> b (perceiver) & 2 & 0.850" in tex and "few_shot" not in tex


def test_equal_n_and_nothing_dropped_means_no_note(results, tmp_path):
    frame = pd.read_csv(results, dtype=str, keep_default_na=False)
    frame = frame[~frame.seed.isin(["2", "3"]) & (frame.method != "text_relay")]
    frame.to_csv(results, index=False)
    report.table2_main(results, tmp_path / "t", STUDY)
    text = table(tmp_path, "t")
    assert "Unequal n" not in text and "not shown" not in text


def test_ns_are_compared_as_numbers():
    assert report.n_values(pd.Series(["100", "30", "100.0"])) == (30, 100)
    assert report.cell(0.5, float("nan"), 1, (30, 100)) == "0.500 (n=30/100)"


def test_sweep_table_keeps_sweep_seeds_and_says_what_it_left_out(results, tmp_path):
    report.table1_architectures(results, tmp_path / "t1", STUDY)
    text = table(tmp_path, "t1")
    assert line_of(text, "perceiver")[1:3] == ["0.800 (n=100)", "0.520 (n=100)"]
    assert line_of(text, "mlp")[1] == "0.600 (n=100)"
    assert "not shown (seeds outside study.sweep_seeds [0])" in text
    assert "sst2 / bridge a -> b (perceiver) seed 1, 3" in text and "sst2 / bridge a -> b (mlp) seed 1" in text


def test_fig2_shows_each_bridge_apart_with_the_majority_class(results, tmp_path):
    stats, _, dropped = report.fig2_stats(report.read_results(results), STUDY)
    means = stats.set_index("series")["mean"]
    assert means["bridge:perceiver"] == pytest.approx(0.85) and means["bridge:mlp"] == pytest.approx(0.65)
    assert means["prompt_tuning"] == pytest.approx(0.56) and means["majority"] == pytest.approx(0.59)
    assert "seed 3" in dropped
    report.fig2_bridge_vs_prompt_tuning(results, tmp_path / "fig2", STUDY)
    assert (tmp_path / "fig2.png").stat().st_size > 0


def test_figure_titles_do_not_print_one_rows_n(results, tmp_path, monkeypatch):
    titles = []
    monkeypatch.setattr("matplotlib.axes.Axes.set_title", lambda self, text, *a, **k: titles.append(text))
    report.fig_bridge_vs_baselines(results, tmp_path / "fig", STUDY)
    assert titles == ["sst2 (n differs by method)"]


def test_metrics_include_the_majority_baseline(results, tmp_path):
    metrics = json.loads(report.write_metrics(results, tmp_path / "m.json").read_text())
    assert metrics["sst2"]["majority class (of the training labels)"] == 0.59


def write_split(path, labels):
    path.write_text("".join(json.dumps({"index": i, "text": f"t{i}", "label": label}) + "\n"
                            for i, label in enumerate(labels)))
    path.with_suffix(".meta.json").write_text(json.dumps({"content_sha256": "0" * 64}))
    return path


def test_majority_baseline_predicts_the_most_frequent_training_label(tmp_path):
    task = {"label_names": ["a", "b", "c"]}
    train = write_split(tmp_path / "train.jsonl", [2, 2, 2, 0, 1])
    split = write_split(tmp_path / "validation.jsonl", [2, 0, 0, 0])   # eval's own majority (0) is not used
    frame = pd.read_csv(evaluate_majority(train, split, tmp_path / "m.csv", task_name="t", task=task))
    assert frame[["method", "metric", "value", "n"]].values.tolist() == [["majority", "accuracy", 0.25, 4]]
    assert majority_label([1, 0, 1, 0], 3) == 0 and majority_label([2, 1, 2, 1], 3) == 1  # ties: lowest index


def test_derangement_is_a_seeded_permutation_without_fixed_points():
    for n in (2, 3, 5, 17, 100):
        for seed in range(5):
            perm = derangement(n, seed)
            assert sorted(perm.tolist()) == list(range(n))
            assert not (perm == torch.arange(n)).any()
            assert torch.equal(perm, derangement(n, seed))
    assert not torch.equal(derangement(100, 0), derangement(100, 1))
    assert derangement(1, 0).tolist() == [0] and derangement(0, 0).tolist() == []


def test_figures_readme_prunes_an_earlier_configs_files_not_subfolders(tmp_path):
    figures = tmp_path / "figures"
    (figures / "kv_alignment").mkdir(parents=True)
    (figures / "kv_alignment/table1.md").write_text("another study")
    for name in ("table2_main.md", "table9_reasoning.md", "table9_reasoning.tex"):
        (figures / name).write_text("x")
    removed = report.figures_readme(figures / "README.md", ["figures/table2_main.md"], "fp", "abc", prune=True)
    assert sorted(p.name for p in removed) == ["table9_reasoning.md", "table9_reasoning.tex"]
    assert sorted(p.name for p in figures.iterdir()) == ["README.md", "kv_alignment", "table2_main.md"]
    readme = (figures / "README.md").read_text()
    assert "`table2_main.md`" in readme and "Removed when this config ran" in readme


def test_figures_readme_lists_other_studies_outputs_by_subfolder_without_reading_them(tmp_path, monkeypatch):
    """Study 2 and 3 outputs are named with their subfolder and their study (whether built yet or not: the README
    does not depend on them, so a study's own target runs alone); a top-level file that shares a name with one
    of them is still an earlier config's file."""
    monkeypatch.chdir(tmp_path)
    figures = tmp_path / "figures"
    (figures / "dense_kv").mkdir(parents=True)
    (figures / "dense_kv/table_main.md").write_text("Dense KV transfer: accuracy\n\n| a |\n")
    (figures / "table_main.md").write_text("an earlier LatentWire table")
    removed = report.figures_readme(figures / "README.md", ["figures/table2_main.md", "figures/dense_kv/table_main.md",
                                                            "figures/dense_kv/fig_duality.png"], "fp", "abc", prune=True)
    assert [p.name for p in removed] == ["table_main.md"] and (figures / "dense_kv/table_main.md").exists()
    readme = (figures / "README.md").read_text()
    assert "| `dense_kv/table_main.md` | dense heterogeneous KV transfer (study 3" in readme
    assert "| `dense_kv/fig_duality.png` | dense heterogeneous KV transfer (study 3" in readme   # not built yet


def test_report_command_writes_several_outputs_with_the_planned_few_shot_seeds(results, tmp_path):
    """One `interlingua report` call (the one report job) writes each named table/figure; the k-shot rows'
    seeds come from the spec's few_shot_seeds, not study.seeds."""
    from interlingua.cli import main

    study = {key: value for key, value in STUDY.items() if key != "few_shot_seeds"}
    spec = json.dumps({"study": study, "few_shot_seeds": [7, 8]})
    assert main(["report", "table2_main", "fig2_bridge_vs_prompt_tuning", "--results", str(results), "--spec", spec,
                 "--out-dir", str(tmp_path / "figures")]) == 0
    assert {p.name for p in (tmp_path / "figures").iterdir()} == {"table2_main.md", "table2_main.tex",
                                                                   "fig2_bridge_vs_prompt_tuning.png"}
    text = (tmp_path / "figures/table2_main.md").read_text()
    assert line_of(text, "b 5-shot (reads the text)")[2] == "0.700 ± 0.141 (n=100)"
    assert "label{tab:main}" in (tmp_path / "figures/table2_main.tex").read_text()
