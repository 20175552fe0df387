import pytest

from interlingua import study
from interlingua.config import load_config
from interlingua.errors import ConfigError

from conftest import REPO


@pytest.fixture(scope="module")
def smoke():
    return load_config(REPO / "params.yaml", REPO / "config/smoke.yaml")


def test_variant_names_round_trip():
    name = study.variant_name("perceiver", num_queries=16, diversity_weight=0.5)
    assert name == "perceiver~num_queries=16~diversity_weight=0.5"
    assert study.parse_variant(name) == ("perceiver", {"num_queries": 16, "diversity_weight": 0.5})
    with pytest.raises(ConfigError, match="not of the form"):
        study.parse_variant("perceiver~Bad")


def test_settings_precedence_global_then_task_then_variant(smoke):
    config = dict(smoke, tasks=dict(smoke["tasks"]))
    config["tasks"]["sst2"] = dict(config["tasks"]["sst2"], overrides={"bridge": {"dim": 24, "num_queries": 3},
                                                                         "train": {"steps": 9}})
    bridge, train = study.run_settings(config, "perceiver~num_queries=5~diversity_weight=0.0", "sst2")
    assert (bridge["dim"], bridge["num_queries"]) == (24, 5)           # task override, then the variant wins
    assert train["steps"] == 9 and train["diversity_weight"] == 0.0    # training keys go to train
    assert study.run_settings(config, "perceiver", "piqa")[0]["dim"] == 32  # other tasks keep the global entry
    with pytest.raises(ConfigError, match="no entry 'nope'"):
        study.run_settings(config, "nope~dim=3", "sst2")


def test_smoke_study_has_every_kind_of_run(smoke):
    results = study.study_results(smoke)
    kinds = {path.split("/")[1] for path in results}
    assert kinds == {"bridge", "random", "majority", "zero_shot", "few_shot", "prompt_tuning", "relay", "finetune",
                     "speed"}
    runs = study.bridge_runs(smoke)
    assert {r["bridge"] for r in runs} >= {"perceiver", "diffusion", "identity", "perceiver~num_queries=2",
                                           "perceiver~dim=16", "perceiver~source_layer=1"}
    assert {(r["sender"], r["receiver"]) for r in runs} == {
        ("tiny_llama", "tiny_gemma3"), ("tiny_gemma3", "tiny_llama"), ("tiny_llama", "tiny_llama"),
        ("tiny_gemma3", "tiny_gemma3")}
    assert any("cot_relay" in path for path in results)
    figures = study.study_figures(smoke)
    for name in ("table1_architectures", "table2_main", "table3_latency", "table4_finetuning", "table5_throughput",
                 "table6_same_vs_cross", "table7_token_scaling", "table8_bidirectional", "table9_reasoning",
                 "table10_hyperparameters"):
        assert f"figures/{name}.md" in figures
    for name in ("fig2_bridge_vs_prompt_tuning", "fig3_latency", "fig4_same_vs_cross", "fig5_token_scaling",
                 "soft_token_neighbours"):
        assert f"figures/{name}.png" in figures


def test_token_scaling_reuses_the_main_bridge_at_its_own_m(smoke):
    """M = the main bridge's num_queries (4 in smoke) is the main run, not a second identical run."""
    runs = {r["bridge"] for r in study.bridge_runs(smoke)}
    assert "perceiver~num_queries=2" in runs and "perceiver~num_queries=4" not in runs
    view = study.study_view(smoke)
    assert view["main_num_queries"] == 4
    assert study.token_scaling_names(view) == ["perceiver~num_queries=2", "perceiver"]


def test_extraction_stores_every_layer_a_run_reads(smoke):
    assert study.extract_layers(smoke, "tiny_llama", "sst2") == [1, 2]   # the source-layer sweep point
    assert study.extract_layers(smoke, "tiny_gemma3", "sst2") == [2]
    assert study.extract_layers(smoke, "tiny_llama", "piqa") == [2]


def test_unknown_bridge_option_in_a_sweep_is_named():
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['widht'\]"):
        study_with({"hyperparameters": {"tasks": ["sst2"], "sweep": {"widht": [3]}}})


def study_with(changes):
    from interlingua.config import deep_merge, read_yaml, validate_config
    merged = deep_merge(deep_merge(read_yaml(REPO / "params.yaml"), read_yaml(REPO / "config/smoke.yaml")),
                        {"study": changes})
    return validate_config(merged, base_dir=REPO)


@pytest.mark.parametrize("name", ["full", "paper"])
def test_full_and_paper_configs_plan_the_complete_study(name):
    config = load_config(REPO / "params.yaml", REPO / f"config/{name}.yaml")
    figures = study.study_figures(config)
    assert len([f for f in figures if f.endswith(".md")]) == 11   # tables 1-10 and the neighbours
    assert "figures/table_main.md" not in figures                 # table 2 is the main table, once
    assert len(study.study_results(config)) > 100


def test_a_pair_can_run_fewer_tasks_and_seeds_and_skip_the_relay():
    reverse = {"sender": "tiny_gemma3", "receiver": "tiny_llama", "seeds": [5], "tasks": ["sst2"],
               "text_relay": False}
    config = study_with({"seeds": [0, 1], "pairs": [{"sender": "tiny_llama", "receiver": "tiny_gemma3"}, reverse]})
    main_runs = {(r["sender"], r["task"], r["seed"]) for r in study.bridge_runs(config) if r["bridge"] == "perceiver"}
    assert ("tiny_gemma3", "sst2", 5) in main_runs
    assert not {("tiny_gemma3", "piqa", s) for s in (0, 1, 5)} & main_runs        # only its own task
    assert ("tiny_llama", "piqa", 1) in main_runs                                   # the main pair keeps both
    relays = [f for f in study.study_results(config) if f.startswith("results/relay/text_relay/")]
    assert relays and all("/tiny_llama/tiny_gemma3/" in f for f in relays)
    assert all("sender" in r and set(r) == {"sender", "receiver", "bridge", "task", "seed"}
               for r in study.bridge_runs(config))


def test_a_pair_task_outside_the_study_is_refused():
    with pytest.raises(ConfigError, match=r"study.pairs\[1\].tasks\[0\]"):
        study_with({"pairs": [{"sender": "tiny_llama", "receiver": "tiny_gemma3"},
                              {"sender": "tiny_gemma3", "receiver": "tiny_llama", "tasks": ["trec"]}]})


def test_few_shot_seeds_default_to_the_study_seeds():
    from interlingua.config import deep_merge, read_yaml, validate_config
    raw = deep_merge(read_yaml(REPO / "params.yaml"), read_yaml(REPO / "config/smoke.yaml"))
    raw["few_shot"].pop("seeds")
    raw["study"]["seeds"] = [3, 4]
    assert validate_config(raw, base_dir=REPO)["few_shot"]["seeds"] == [3, 4]


def test_main_table_cells_show_n_and_its_caption_no_largest_n(tmp_path):
    """Results are read as text: n compares as numbers ("30" < "100"), every cell shows its own n, and a
    method scored on fewer rows is named (the caption used to print only the largest n)."""
    import pandas as pd

    from interlingua import report
    from interlingua.evaluate import COLUMNS

    study = {"tasks": ["sst2"], "bridges": ["perceiver"], "seeds": [0], "sweep_seeds": [0],
             "pairs": [{"sender": "a", "receiver": "b"}]}
    rows = [{"task": "sst2", "method": "zero_shot", "receiver": "b", "seed": "", "metric": "accuracy",
             "value": 0.7, "n": "100"},
            {"task": "sst2", "method": "text_relay", "sender": "a", "receiver": "b", "seed": "", "metric": "accuracy",
             "value": 0.6, "n": "30"}]
    pd.DataFrame(rows).reindex(columns=COLUMNS).fillna("").to_csv(tmp_path / "r.csv", index=False)
    report.table2_main(tmp_path / "r.csv", tmp_path / "t", study)
    text = (tmp_path / "t.md").read_text()
    assert "0.700 (n=100)" in text and "0.600 (n=30)" in text
    assert "sst2: text relay a -> b (n=30); every other method n=100" in text
    assert "100 examples" not in text and not hasattr(report, "_caption_counts")
