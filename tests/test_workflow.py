"""The whole DAG on the smoke config, in a temporary directory, through the real snakemake CLI."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import REPO
from interlingua import study
from interlingua.config import load_config
from interlingua.studies.dense_kv import plan as dense_plan
from interlingua.studies.kv_alignment import plan as kv_plan

SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile")]


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [*SNAKEMAKE, "--directory", str(workdir), "--cores", "2", *args]
    # The jobs run `python -m interlingua` from `workdir`: put this checkout's package first, so a test run
    # from another worktree tests its own code, not whichever copy is installed.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def planned_jobs(workdir: Path, *args: str) -> set[str]:
    out = snakemake(workdir, "-n", *args, "--quiet", "rules").stdout
    return {line.split()[0] for line in out.splitlines()
            if line and line.split()[0].isidentifier() and line.split()[-1].isdigit() and line.split()[0] != "total"}


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("smoke")
    snakemake(workdir, "figures", "--configfile", str(REPO / "config/smoke.yaml"))
    return workdir


def test_smoke_dag_writes_every_table_and_figure(smoke_run):
    config = load_config(REPO / "params.yaml", REPO / "config/smoke.yaml")
    for name in study.study_figures(config) + ["figures/README.md"]:
        assert (smoke_run / name).stat().st_size > 0, name
    results = pd.read_csv(smoke_run / "results/results.csv", keep_default_na=False)
    accuracy = results[results.metric == "accuracy"]
    kv_figures = kv_plan.figures(config)
    assert len(kv_figures) >= 9 and all((smoke_run / name).stat().st_size > 0 for name in kv_figures)
    readme = (smoke_run / "figures/README.md").read_text()
    assert all(Path(name).name in readme for name in kv_figures)
    final = (smoke_run / "figures/kv_alignment/fig3_final.md").read_text()
    assert "p < shuffled" in final and "(n=8)" in final and "checkpoints / small_s0 / small_s0_step15" in final
    assert set(accuracy.method) == {"random", "majority", "zero_shot", "few_shot", "prompt_tuning", "text_relay",
                                    "cot_relay", "bridge", "lora", "finetune_last1"}
    assert set(accuracy.variant) == {"", "2_shot", "shuffled_source", "zero_source"}
    sst2 = accuracy[accuracy.task == "sst2"]
    assert (sst2.n == 32).all()  # relays too: every method on the same eval rows
    assert accuracy.fingerprint.str.len().min() > 8
    table = (smoke_run / "figures/table2_main.md").read_text()
    assert "bridge tiny_llama -> tiny_gemma3 (perceiver)" in table and "shuffled-source control" in table
    assert "majority class (of the training labels)" in table and not (smoke_run / "figures/table_main.md").exists()


def test_smoke_dag_runs_study_3(smoke_run):
    """Dense KV transfer on the tiny pair (bytes -> BPE tokenizers): every run scored on every eval row with its
    controls, the phase ablation, the duality sweep, and the tables listing them."""
    config = load_config(REPO / "params.yaml", REPO / "config/smoke.yaml")
    outputs = dense_plan.figures(config)
    assert len(outputs) == 9 and all((smoke_run / name).stat().st_size > 0 for name in outputs)
    assert all(Path(name).name in (smoke_run / "figures/README.md").read_text() for name in outputs)
    labels = split_labels(smoke_run, config, "sst2", "eval")
    for direction, variant, seed in dense_plan.runs(config):
        rows = pd.read_csv(smoke_run / dense_plan.run_dir(direction, variant, seed) / "sst2.csv", keep_default_na=False)
        accuracy = rows[rows.metric == "accuracy"]
        assert (accuracy.n == len(labels)).all()
        if variant == "fuser":   # the C2C-style baseline: aware only, with its own controls
            assert set(zip(accuracy.method, accuracy.variant)) == {
                ("fuser_aware", v) for v in ("", "shuffled_source", "zero_source", "own_cache")}
            continue
        first = variant == "both" and seed == dense_plan.directions(config)[direction]["seeds"][0]
        for mode in ("unaware", "aware"):   # the shuffled control in every run; the zeroed cache, the receiver
            variants = set(accuracy[accuracy.method == f"cache_{mode}"].variant)   # alone and the sweep once
            assert {"", "shuffled_source"} <= variants and ("zero_source" in variants) == first
            assert ("keep_0.5" in variants) == (first and direction == "llama_gemma3")
            assert (f"alone_{mode}" in set(accuracy.method)) == first
        flops = rows[rows.metric == "flops_per_example"]
        assert set(flops.method) >= {"cache_unaware", "cache_aware"} and (flops.value > 0).all()
    table = (smoke_run / "figures/dense_kv/table_main.md").read_text()
    assert "tiny_llama -> tiny_gemma3 / piqa (ood) / aware" in table and "p vs shuffled" in table
    # the headline's seed 1 is scored on dense_kv.later_seed_tasks only (sst2): the table says each task's seeds
    assert re.search(r"\| tiny_llama -> tiny_gemma3 / piqa \(ood\) / aware +\| 0 +\|", table)
    assert re.search(r"\| tiny_llama -> tiny_gemma3 / sst2 / aware +\| 0, 1 +\|", table) and "later_seed_tasks" in table
    assert not (smoke_run / dense_plan.run_dir("llama_gemma3", "both", 1) / "piqa.csv").exists()
    # study 2's shared space (setting `zoo`) on the one-tokenizer direction, with its shuffled control
    space = [line for line in table.splitlines() if line.startswith("| tiny_llama_bpe -> tiny_gemma3")]
    assert len(space) == 4 and all("(n=" in line and "; shuffled " in line for line in space)
    assert "shared space" in table and "pool_zoo" in table
    # text communication: study 1's relay of the same pair, priced in FLOPs beside the cache
    assert "text/cache" in table and re.search(r"\d+\.\dx", table)
    assert "smollm2" not in table and not (smoke_run / "results/dense_kv/smollm2_gemma3").exists()
    assert "phase 2 only" in (smoke_run / "figures/dense_kv/table_phases.md").read_text()
    assert "sender positions" in (smoke_run / "figures/dense_kv/fig_alignment.md").read_text()
    assert "own cache only" in (smoke_run / "figures/dense_kv/table_fuser.md").read_text()
    compute = (smoke_run / "figures/dense_kv/table_compute.md").read_text()   # text at the policy and shorter caps
    assert all(f"text (<= {limit} tokens)" in compute for limit in config["dense_kv"]["text_limits"])
    assert "cache (aware)" in compute and re.search(r"\d+\.\dx", compute)


def split_labels(workdir: Path, config: dict, task: str, role: str) -> list[int]:
    name = config["tasks"][task]["splits"][role]
    lines = (workdir / f"data/tasks/{task}/{name}.jsonl").read_text().splitlines()
    return [json.loads(line)["label"] for line in lines if line.strip()]


def test_smoke_baselines_and_n_match_the_split_files(smoke_run):
    """Values recomputed from the split files, not only 'between 0 and 1'."""
    import torch

    config = load_config(REPO / "params.yaml", REPO / "config/smoke.yaml")
    results = pd.read_csv(smoke_run / "results/results.csv", keep_default_na=False, dtype={"seed": str})
    accuracy = results[results.metric == "accuracy"]
    main_table = (smoke_run / "figures/table2_main.md").read_text()
    for task in config["study"]["tasks"]:
        labels, train = split_labels(smoke_run, config, task, "eval"), split_labels(smoke_run, config, task, "train")
        rows = accuracy[accuracy.task == task]
        counts = Counter(train)
        top = max(counts.values())
        majority = min(label for label, count in counts.items() if count == top)
        assert rows[rows.method == "majority"].value.item() == pytest.approx(labels.count(majority) / len(labels))
        for seed in config["study"]["seeds"]:
            guesses = torch.randint(len(config["tasks"][task]["label_names"]), (len(labels),),
                                    generator=torch.Generator().manual_seed(seed)).tolist()
            expected = sum(g == y for g, y in zip(guesses, labels)) / len(labels)
            assert rows[(rows.method == "random") & (rows.seed == str(seed))].value.item() == pytest.approx(expected)
        # every bridge, control, text baseline and relay is scored on every eval row, and the table says no
        # method was scored on other rows (the unequal-n note is tested on a hand-made table in test_report)
        assert (rows.n == len(labels)).all()
        assert "Unequal n" not in main_table
    for name, expected in [("table1_architectures", "diffusion"), ("table7_token_scaling", "soft tokens M"),
                           ("table10_hyperparameters", "source_layer = 1"), ("table6_same_vs_cross", "same model"),
                           ("table4_finetuning", "LoRA"), ("table3_latency", "latency_sender_encode_seconds"),
                           ("table5_throughput", "batch16"), ("table9_reasoning", "piqa")]:
        assert expected in (smoke_run / f"figures/{name}.md").read_text(), name
    token_rows = [line.split("|")[1].strip() for line in (smoke_run / "figures/table7_token_scaling.md")
                  .read_text().splitlines() if line.startswith("|") and line.split("|")[1].strip().isdigit()]
    assert token_rows == ["2", "4"]   # M = 4 is the main perceiver run itself
    stores = list((smoke_run / "data/activations/tiny_llama/sst2").glob("*.zarr"))
    assert sorted(p.name for p in stores) == ["train.zarr", "validation.zarr"]


def test_smoke_writes_predictions_and_paired_tests(smoke_run):
    """Every result with accuracy rows has its per-example predictions; collect gathers them; every bridge run
    is tested against its three controls, paired, and table 2 quotes the tests."""
    from interlingua.evaluate import predictions_path

    config = load_config(REPO / "params.yaml", REPO / "config/smoke.yaml")
    for name in study.study_results(config):
        has_accuracy = (pd.read_csv(smoke_run / name).metric == "accuracy").any()
        assert (smoke_run / predictions_path(name)).exists() == has_accuracy, name
    results = pd.read_csv(smoke_run / "results/results.csv", keep_default_na=False, dtype=str)
    predictions = pd.read_csv(smoke_run / "results/predictions.csv", keep_default_na=False, dtype=str)
    keys = ["task", "method", "variant", "sender", "receiver", "bridge", "seed", "fingerprint"]
    runs = predictions.groupby(keys).size()
    accuracy = results[results.metric == "accuracy"]
    assert len(runs) == len(accuracy)
    for _, row in accuracy.iterrows():  # one prediction per scored row
        assert runs[tuple(row[k] for k in keys)] == int(row.n), tuple(row[k] for k in keys)
    tests = pd.read_csv(smoke_run / "results/paired_tests.csv", keep_default_na=False)
    bridges = accuracy[(accuracy.method == "bridge") & (accuracy.variant == "")]
    assert len(tests) == 3 * len(bridges) and (tests.status == "ok").all(), set(tests.status)
    assert ((tests.p_value > 0) & (tests.p_value <= 1)).all()
    assert "McNemar's exact test" in (smoke_run / "figures/table2_main.md").read_text()


def test_a_study_target_on_a_fresh_clone_runs_that_study_alone(tmp_path):
    """figures/README.md lists every study, but `figures_latentwire` must not build the other two for it."""
    smoke = ("--configfile", str(REPO / "config/smoke.yaml"))
    whole = planned_jobs(tmp_path, "figures", *smoke)
    assert {"kv_align", "dense_train", "train_bridge", "figures_readme"} <= whole
    latentwire = planned_jobs(tmp_path, "figures_latentwire", *smoke)
    assert "train_bridge" in latentwire and "figures_readme" in latentwire
    assert not {job for job in latentwire if job.startswith(("kv_", "dense_"))}, latentwire
    alignment = planned_jobs(tmp_path, "figures_kv_alignment", *smoke)
    assert "kv_align" in alignment and not {"train_bridge", "dense_train", "figures_readme"} & alignment


def test_second_run_has_nothing_to_do(smoke_run):
    # whichever target ran last: figures/README.md names the other studies' figures without reading them
    for target in ("figures", "figures_latentwire", "figures_kv_alignment", "figures_dense_kv", "figures"):
        out = snakemake(smoke_run, "-n", target, "--configfile", str(REPO / "config/smoke.yaml"))
        assert "Nothing to be done" in out.stdout + out.stderr, target


def test_figures_hold_only_what_the_current_config_produced(smoke_run):
    """An earlier config's table is removed when the figures' README is rewritten; other studies'
    subfolders stay; afterwards there is still nothing to do."""
    stale, other_study = smoke_run / "figures/table11_earlier_config.md", smoke_run / "figures/kv_alignment/t.md"
    other_study.parent.mkdir(exist_ok=True)
    stale.write_text("left by another config")
    other_study.write_text("another study")
    snakemake(smoke_run, "figures", "--configfile", str(REPO / "config/smoke.yaml"), "--forcerun", "figures_readme")
    config = load_config(REPO / "params.yaml", REPO / "config/smoke.yaml")
    files = {f"figures/{p.name}" for p in (smoke_run / "figures").iterdir() if p.is_file()}
    assert files == set(study.study_figures(config)) | {"figures/README.md"}
    assert other_study.exists()
    assert "table11_earlier_config.md" in (smoke_run / "figures/README.md").read_text()  # said, not silent
    out = snakemake(smoke_run, "-n", "figures", "--configfile", str(REPO / "config/smoke.yaml"))
    assert "Nothing to be done" in out.stdout + out.stderr


def test_new_timestamps_alone_rerun_nothing(smoke_run):
    """As after a `dvc pull`: every file gets a new timestamp, in an order unrelated to the pipeline
    (here: reports first, models last, so every input looks newer than its readers); contents unchanged."""
    for shared in ("figures", "results", "data/relay", "data/checkpoints", "data/activations", "data/tasks",
                   "data/kv_alignment", "data/models"):
        for path in sorted((smoke_run / shared).rglob("*")):
            os.utime(path)
    assert planned_jobs(smoke_run, "figures", "--configfile", str(REPO / "config/smoke.yaml")) == set()


def jobs_after_edit(smoke_run: Path, tmp_path: Path, module: str, old: str, new: str) -> set[str]:
    """The jobs `snakemake -n figures` plans on the smoke run with a copy of the package where `module`
    has `old` replaced by `new` (the jobs' `code` params see the edit)."""
    package = tmp_path / "src/interlingua"
    shutil.copytree(REPO / "src/interlingua", package, ignore=shutil.ignore_patterns("__pycache__"))
    path = package / module
    text = path.read_text()
    path.write_text(text.replace(old, new, 1))
    assert path.read_text() != text, f"{module}: {old!r} not found"
    out = subprocess.run([*SNAKEMAKE, "--directory", str(smoke_run), "--cores", "2", "-n", "figures", "--configfile",
                          str(REPO / "config/smoke.yaml"), "--quiet", "rules"], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(tmp_path / "src")}).stdout
    return {line.split()[0] for line in out.splitlines()
            if line and line.split()[0].isidentifier() and line.split()[-1].isdigit() and line.split()[0] != "total"}


def test_editing_a_bridge_reruns_bridge_training_and_reports_not_extraction(smoke_run, tmp_path):
    """The jobs' `code` params: a changed function body in bridges/perceiver.py reruns what runs it."""
    jobs = jobs_after_edit(smoke_run, tmp_path, "bridges/perceiver.py", "    def forward(self, states, mask):\n",
                           "    def forward(self, states, mask):\n        states = states + 0\n")
    assert {"train_bridge", "collect_results", "report", "measure_speed"} <= jobs
    assert not jobs & {"extract", "materialize_model", "materialize_task", "eval_zero_shot", "eval_few_shot",
                       "generate_relay", "eval_relay", "train_prompt_tuning", "train_finetune", "eval_finetune",
                       "kv_pool_corpus", "kv_pretrain_member", "kv_align", "kv_report"}


def test_editing_a_kv_translator_reruns_alignment_runs_not_the_pool_or_latentwire(smoke_run, tmp_path):
    jobs = jobs_after_edit(smoke_run, tmp_path, "channels/kv/translators/cross_attention.py",
                           "        return F.gelu(self.proj(self.norm(x)))", "        return F.gelu(self.proj(self.norm(x + 0)))")
    assert {"kv_align", "kv_report"} <= jobs
    assert not jobs & {"kv_pool_corpus", "kv_pretrain_member", "extract", "train_bridge", "materialize_model"}


def test_editing_the_collect_code_reruns_every_report_downstream_in_one_invocation(smoke_run, tmp_path):
    """collect_results reruns on a code change; the report behind it and figures/README.md behind that rerun in
    the same `snakemake figures` (their inputs are ancient only while their producers' spec and code hold)."""
    jobs = jobs_after_edit(smoke_run, tmp_path, "paired.py", "    n = b + c\n", "    n = b + c + 0\n")
    assert {"collect_results", "report", "figures_readme"} <= jobs
    assert not jobs & {"train_bridge", "extract", "kv_align", "dense_train"}


def test_bridge_hyperparameter_reruns_training_not_extraction(smoke_run, tmp_path):
    override = tmp_path / "wider.yaml"
    override.write_text(yaml.safe_dump({"bridges": {"perceiver": {"dim": 16}}}))
    jobs = planned_jobs(smoke_run, "figures", "--configfile", str(REPO / "config/smoke.yaml"), str(override))
    assert {"train_bridge", "collect_results", "report", "figures_readme"} <= jobs
    assert not jobs & {"extract", "materialize_model", "materialize_task", "eval_zero_shot", "train_prompt_tuning"}


def test_layer_change_reruns_extraction(smoke_run, tmp_path):
    override = tmp_path / "layer.yaml"
    override.write_text(yaml.safe_dump({"extract": {"layers": [1]}, "bridges": {"perceiver": {"source_layer": 1}}}))
    jobs = planned_jobs(smoke_run, "figures", "--configfile", str(REPO / "config/smoke.yaml"), str(override))
    assert {"extract", "train_bridge", "collect_results"} <= jobs and "materialize_model" not in jobs


def test_bad_config_stops_before_any_job(tmp_path):
    override = tmp_path / "bad.yaml"
    override.write_text(yaml.safe_dump({"study": {"pairs": [{"sender": "tiny_llama", "receiver": "nobody"}]}}))
    result = snakemake(tmp_path, "figures", "--configfile", str(REPO / "config/smoke.yaml"), str(override),
                       check=False)
    assert result.returncode != 0
    assert "config key 'study.pairs[0].receiver': unknown model alias 'nobody'" in result.stdout + result.stderr
    assert not (tmp_path / "data").exists()


def test_bad_data_stops_before_models_are_built(tmp_path):
    mirror = tmp_path / "mirror/sst2"
    mirror.mkdir(parents=True)
    (mirror / "train.jsonl").write_text('{"text": "fine", "label": 0}\n{"text": "odd", "label": 5}\n')
    (mirror / "validation.jsonl").write_text('{"text": "fine", "label": 0}\n')
    # the smoke study's other task gets its real file, so sst2's bad row is the only error
    (tmp_path / "mirror/piqa").mkdir()
    shutil.copy(REPO / "../shared/datasets/piqa/validation.jsonl", tmp_path / "mirror/piqa/validation.jsonl")
    for corpus in ("tinystories_excerpt", "wikitext103_v1"):  # study 2's corpora, unchanged
        (tmp_path / "mirror" / corpus).symlink_to((REPO / "../shared/datasets" / corpus).resolve())
    result = subprocess.run(
        [*SNAKEMAKE, "--directory", str(tmp_path), "--cores", "1", "figures", "--configfile",
         str(REPO / "config/smoke.yaml")], capture_output=True, text=True,
        env={**os.environ, "INTERLINGUA_DATASETS": str(tmp_path / "mirror")})
    assert result.returncode != 0
    log = (tmp_path / "logs/materialize_task/sst2/train.log").read_text()
    assert "train.jsonl:2: label 5 is outside the label list" in log
    assert not (tmp_path / "data/models").exists() or not any((tmp_path / "data/models").iterdir())


@pytest.mark.parametrize("name, trains", [("dense_kv_full", 4 * 3 + 2 + 1), ("dense_kv_paper", 6 * 3 + 2 + 1)])
def test_study3_alternative_configs_plan(tmp_path, monkeypatch, name, trains):
    """config/dense_kv_full.yaml (every direction, 3 seeds, the same-tokenizer pair) and config/dense_kv_paper.yaml (Qwen3-4B/8B/14B, all
    six directions, from the hub) validate and plan every study-3 step (`snakemake -n`; nothing runs, no hub)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = load_config(REPO / "params.yaml", REPO / f"config/{name}.yaml")
    assert len(dense_plan.runs(config)) == trains
    out = snakemake(tmp_path, "-n", "figures_dense_kv", "--configfile", str(REPO / f"config/{name}.yaml"),
                    "--quiet", "rules").stdout
    counts = {line.split()[0]: int(line.split()[-1]) for line in out.splitlines()
              if line and line.split()[0].isidentifier() and line.split()[-1].isdigit()}
    assert counts["dense_train"] == trains and counts["dense_report"] == 1
    # every run scored on each of its tasks (the phase ablation and the fuser on dense_kv.ablation_tasks, later
    # seeds on dense_kv.later_seed_tasks: params.yaml's cuts)
    assert counts["dense_evaluate"] == sum(len(dense_plan.run_tasks(config, v, d, s)) for d, v, s in dense_plan.runs(config))
    every = trains * len(dense_plan.eval_tasks(config))
    assert counts["dense_evaluate"] == every   # both lift params.yaml's cuts (checked on params.yaml in test_dense_kv_plan)
    # the same-tokenizer reference's copy of SmolLM2 is trained by the DAG (the full config), and study 2's
    # shared space of the two is scored on every task in both directions (one pool run)
    assert counts.get("continue_model", 0) == (name == "dense_kv_full")
    full = name == "dense_kv_full"
    assert counts.get("dense_shared_space", 0) == full * 2 * len(dense_plan.eval_tasks(config))
    assert counts.get("kv_align", 0) == full


@pytest.mark.parametrize("name", ["kv_full", "kv_paper"])
def test_study2_alternative_configs_plan(tmp_path, monkeypatch, name):
    """config/kv_full.yaml (SmolLM2 in every setting) and config/kv_paper.yaml (the paper's scale: a Gemma-2-style
    pool, 50k steps) validate and plan every study-2 step (`snakemake -n`; nothing runs)."""
    datasets = REPO.parent / "shared/datasets"
    if not (datasets / "tinystories_excerpt").is_dir():
        pytest.skip("the datasets mirror (../shared/datasets) is not beside the repository")
    monkeypatch.setenv("INTERLINGUA_DATASETS", str(datasets))
    jobs = planned_jobs(tmp_path, "figures_kv_alignment", "--configfile", str(REPO / f"config/{name}.yaml"))
    assert {"kv_pool_corpus", "kv_pretrain_member", "kv_align", "kv_portability", "kv_report"} <= jobs
