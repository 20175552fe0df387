"""What study 3 plans: runs, and what each run scores beyond the transfer and its shuffled control."""
from pathlib import Path

import pytest

from interlingua.config import load_config
from interlingua.errors import ConfigError
from interlingua.studies.dense_kv import plan

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def config():
    return load_config(REPO / "params.yaml")


def test_default_runs_headline_seeds_reverse_and_phase_ablation(config):
    runs = plan.runs(config)
    assert [r for r in runs if r[1] == "both"] == [("smollm2_gemma3", "both", s) for s in (0, 1, 2)] + \
        [("gemma3_smollm2", "both", 0)]
    assert {r for r in runs if r[1] != "both"} == {("smollm2_gemma3", v, 0) for v in ("phase1", "phase2", "fuser")}
    # the fuser fuses into the receiver's own cache of the eval inputs: their stores are planned
    assert {("gemma3", t, "eval") for t in plan.eval_tasks(config)} <= plan.stores(config)


def test_run_independent_rows_and_sweep_once(config):
    """The zeroed cache and the receiver alone do not depend on the trained maps: scored once per direction;
    the duality sweep only in the headline's first run, on its duality tasks."""
    options = {(d, v, s, t): plan.eval_options(config, d, v, s, t)
               for d, v, s in plan.runs(config) for t in plan.eval_tasks(config)}
    sweep = {key for key, o in options.items() if o["keep_fractions"]}
    assert sweep == {("smollm2_gemma3", "both", 0, t) for t in config["dense_kv"]["duality_tasks"]}
    for direction in plan.directions(config):
        once = [key for key, o in options.items() if key[0] == direction and o["zero"] and o["alone"]]
        assert {key[1:3] for key in once} == {("both", plan.directions(config)[direction]["seeds"][0])}
        assert {key[3] for key in once} == set(plan.eval_tasks(config))


def test_duality_task_not_scored_is_refused(config):
    config["dense_kv"]["duality_tasks"] = ["sst2", "banking77"]
    with pytest.raises(ConfigError, match="duality_tasks: 'banking77'"):
        plan.check(config)


def test_phase_ablation_scored_on_ablation_tasks_only(config):
    """The method's runs are scored on every task (ood included); the phase ablation and the fuser baseline on
    `ablation_tasks`."""
    head = "smollm2_gemma3"
    config["dense_kv"]["ablation_tasks"] = ["sst2"]
    assert plan.run_tasks(config, "phase1", head, 0) == plan.run_tasks(config, "phase2", head, 0) == ["sst2"]
    assert plan.run_tasks(config, "fuser", head, 0) == ["sst2"]
    assert plan.run_tasks(config, "both", head, 0) == plan.eval_tasks(config)
    del config["dense_kv"]["ablation_tasks"]
    assert plan.run_tasks(config, "phase2", head, 0) == plan.eval_tasks(config)
    config["dense_kv"]["ablation_tasks"] = ["banking77"]
    with pytest.raises(ConfigError, match="ablation_tasks: 'banking77'"):
        plan.check(config)


def test_later_seeds_scored_on_later_seed_tasks_only(config):
    """A direction's first seed is scored on every task; its later seeds on `later_seed_tasks` (params.yaml:
    BoolQ on seed 0 only); the main table's seeds per task follow."""
    assert plan.task_seeds(config, "smollm2_gemma3", "boolq") == [0]          # params.yaml's budget cut
    assert plan.task_seeds(config, "smollm2_gemma3", "trec") == [0, 1, 2]
    config["dense_kv"]["later_seed_tasks"] = ["sst2", "trec"]
    assert plan.run_tasks(config, "both", "smollm2_gemma3", 0) == plan.eval_tasks(config)
    assert plan.run_tasks(config, "both", "smollm2_gemma3", 1) == plan.run_tasks(config, "both", "smollm2_gemma3", 2) \
        == ["sst2", "trec"]
    assert plan.task_seeds(config, "smollm2_gemma3", "trec") == [0, 1, 2]
    assert plan.task_seeds(config, "smollm2_gemma3", "boolq") == [0]
    assert plan.task_seeds(config, "gemma3_smollm2", "trec") == [0]
    del config["dense_kv"]["later_seed_tasks"]
    assert plan.run_tasks(config, "both", "smollm2_gemma3", 2) == plan.eval_tasks(config)
    config["dense_kv"]["later_seed_tasks"] = ["banking77"]
    with pytest.raises(ConfigError, match="later_seed_tasks: 'banking77'"):
        plan.check(config)


def test_shared_space_baseline_names_the_members_of_a_study2_run(config):
    """`dense_kv.shared_space: {direction: kv run}`: the run's members that are the direction's two models."""
    config["kv_alignment"]["members"].update({"smollm2": {"model": "smollm2"}, "gemma3": {"model": "gemma3"}})
    config["kv_alignment"]["settings"]["zoo"] = ["smollm2", "gemma3"]
    config["dense_kv"]["shared_space"] = {"smollm2_gemma3": "pool_zoo"}
    assert plan.shared_space(config) == {"smollm2_gemma3": {"run": "pool_zoo", "seed": 0, "sender": "smollm2",
                                                            "receiver": "gemma3"}}
    assert plan.shared_space_results(config) == [f"results/dense_kv/smollm2_gemma3/shared_space/seed0/{t}.csv"
                                                 for t in plan.eval_tasks(config)]
    config["dense_kv"]["shared_space"] = {"smollm2_gemma3": "pool_seeds"}
    with pytest.raises(ConfigError, match="the sender 'smollm2' is not a member of the kv_alignment run 'pool_seeds'"):
        plan.check(config)
    config["kv_alignment"]["ablations"]["setting"] = "zoo"
    config["dense_kv"]["shared_space"] = {"smollm2_gemma3": "translator_ridge"}    # pairwise maps, no space
    with pytest.raises(ConfigError, match="trains a 'ridge' translator, not a shared space"):
        plan.check(config)
    config["dense_kv"]["shared_space"] = {"nowhere": "pool_zoo"}
    with pytest.raises(ConfigError, match="'nowhere' is not a direction"):
        plan.check(config)
    config["dense_kv"]["shared_space"] = {"smollm2_gemma3": "pool_missing"}
    with pytest.raises(ConfigError, match="unknown run 'pool_missing'"):
        plan.check(config)
