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
    assert config["study"]["pairs"] == [{"sender": "tiny_llama", "receiver": "tiny_gemma3"}]
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
    (lambda c: c["bridges"]["perceiver"].update(source_layer=7), "bridges.perceiver.source_layer"),
    (lambda c: c["tasks"]["sst2"].update(verbalizers=[" no"] * 3), "tasks.sst2.verbalizers"),
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
