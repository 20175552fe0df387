"""Study 3 end to end on tiny models of different tokenizers: stores -> two phases -> evaluation rows."""
from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from interlingua.errors import ConfigError, DataError
from interlingua.evaluate import predictions_path
from interlingua.extract import extract
from interlingua.studies.dense_kv.configs import DenseRunConfig
from interlingua.studies.dense_kv.run import evaluate_job, train_job
from interlingua.tasks import materialize_split

torch.set_num_threads(1)
PROMPTS = {"toy": {"unaware": "\nSentiment:"}}


@pytest.fixture
def stores(tiny_models, sst2_like_task, toy_mirror, tmp_path):
    out = {}
    for role, name in (("train", "train"), ("eval", "validation")):
        split = tmp_path / f"{name}.jsonl"
        materialize_split("toy", sst2_like_task, toy_mirror, role, split)
        out[f"{role}_split"] = split
        for model in ("sender", "receiver"):
            out[f"{role}_{model}"] = extract(tiny_models[model], split, tmp_path / f"{model}_{name}.zarr",
                                             sender_prompt=sst2_like_task["prompts"]["sender"], layers=[1],
                                             storage_dtype="float32", batch_size=4, device=torch.device("cpu"),
                                             dtype=torch.float32, kv_cache=True)
    return out


def test_a_direction_trains_and_is_scored_with_its_controls(tiny_models, sst2_like_task, stores, tmp_path):
    tasks = {"toy": {"task": sst2_like_task, "split": stores["train_split"], "sender_store": stores["train_sender"],
                     "receiver_store": stores["train_receiver"]}}
    config = {"steps": 4, "batch": 4, "lr": 1e-3, "warmup": 1, "transform": {"layer_window": 3}}
    out = train_job(tiny_models["sender"], tiny_models["receiver"], tasks, PROMPTS, config, 0, tmp_path / "run")
    record = json.loads((out / "record.json").read_text())
    error = record["phase1"]["toy"]
    assert error["key_relative_error"] < 1 and error["value_relative_error"] < 1     # better than a zero cache
    assert [p["step"] for p in record["curve"]] == [1, 2, 3, 4]
    assert {p["mode"] for p in record["curve"]} == {"unaware", "aware"}             # joint: both prompts

    result = evaluate_job(out, tiny_models["sender"], tiny_models["receiver"], "toy", sst2_like_task,
                          stores["eval_split"], stores["eval_sender"], PROMPTS, tmp_path / "toy.csv",
                          base={"sender": "sender", "receiver": "receiver", "bridge": "dense", "fingerprint": "f"},
                          seed=0, keep_fractions=[0.5])
    rows = pd.read_csv(result)
    accuracy = rows[rows.metric == "accuracy"]
    runs = set(zip(accuracy.method, accuracy.variant.fillna("")))
    for mode in ("unaware", "aware"):
        assert {(f"cache_{mode}", v) for v in ("", "shuffled_source", "zero_source", "keep_0.5")} <= runs
        assert (f"alone_{mode}", "") in runs
    assert set(accuracy.n) == {8}                                                  # every method, the same rows
    predictions = pd.read_csv(predictions_path(result))
    assert predictions.groupby(["method", "variant"], dropna=False).example.apply(sorted).map(tuple).nunique() == 1
    assert int(rows[rows.metric == "trainable_parameters"].value.iloc[0]) == record["trainable_parameters"]
    flops = rows[rows.metric == "flops_per_example"].set_index("method").value
    for mode in ("unaware", "aware"):   # the cache path prices the sender's reading, the map and the receiver
        parts = rows[(rows.method == f"cache_{mode}") & rows.metric.str.endswith("_flops_per_example")].value
        assert flops[f"cache_{mode}"] == pytest.approx(parts.sum()) and flops[f"cache_{mode}"] > flops[f"alone_{mode}"]
    assert flops["alone_aware"] > flops["alone_unaware"]                           # aware reads the input too


def test_the_fuser_baseline_trains_from_phase_1_and_is_scored_with_its_controls(tiny_models, sst2_like_task, stores,
                                                                                  tmp_path):
    """The C2C-style fuser (fuse.py): the phase-1 maps inside its gates, trained on the receiver's loss with the
    fused own cache; scored aware only beside another example's sender cache, a zeroed one and no fusion."""
    from interlingua.studies.dense_kv.fuse import stretch
    from interlingua.studies.dense_kv.train import load_transform

    tasks = {"toy": {"task": sst2_like_task, "split": stores["train_split"], "sender_store": stores["train_sender"],
                     "receiver_store": stores["train_receiver"]}}
    config = {"steps": 3, "batch": 4, "lr": 1e-2, "warmup": 1, "transform": {"layer_window": 3},
              "phases": ["reconstruction", "fusion"]}
    out = train_job(tiny_models["sender"], tiny_models["receiver"], tasks, PROMPTS, config, 0, tmp_path / "fuser")
    record = json.loads((out / "record.json").read_text())
    assert [p["mode"] for p in record["curve"]] == ["aware"] * 3
    fuser, _ = load_transform(out)
    assert hasattr(fuser, "gate") and record["trainable_parameters"] == sum(p.numel() for p in fuser.parameters())
    moved = [float(g) for g in fuser.gate.values()]
    assert any(g != -2.0 for g in moved)                                           # the gates trained
    result = evaluate_job(out, tiny_models["sender"], tiny_models["receiver"], "toy", sst2_like_task,
                          stores["eval_split"], stores["eval_sender"], PROMPTS, tmp_path / "fuser.csv",
                          base={"sender": "sender", "receiver": "receiver", "bridge": "fuser", "fingerprint": "f"},
                          seed=0, receiver_store=stores["eval_receiver"])
    accuracy = pd.read_csv(result, keep_default_na=False).query("metric == 'accuracy'")
    assert set(zip(accuracy.method, accuracy.variant)) == {("fuser_aware", v) for v in
                                                         ("", "shuffled_source", "zero_source", "own_cache")}
    assert set(accuracy.n) == {8}
    with pytest.raises(DataError, match="extracted from another split"):   # its own cache of the training split
        evaluate_job(out, tiny_models["sender"], tiny_models["receiver"], "toy", sst2_like_task, stores["eval_split"],
                     stores["eval_sender"], PROMPTS, tmp_path / "wrong.csv", base={}, seed=0,
                     receiver_store=stores["train_receiver"])
    weights = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]])                    # 3 positions reading 2
    assert torch.equal(stretch(weights, 6), weights[[0, 0, 1, 1, 2, 2]]) and torch.equal(stretch(weights, 3), weights)


def test_text_communication_is_priced_from_the_relay_rows(tiny_models, sst2_like_task, tmp_path):
    """Study 1's relay accuracy rows, with the generation and the receiver's reading priced in FLOPs."""
    from interlingua.studies.dense_kv.compute import generation_flops
    from interlingua.studies.dense_kv.text import text_rows
    from interlingua.zoo import load_config

    messages = tmp_path / "relay.jsonl"
    messages.write_text("\n".join(json.dumps({"index": i, "relay": "a fine film", "generated_tokens": g,
                                              "input_tokens": 12, "seconds": 0.1, "finished": True})
                                  for i, g in enumerate([4, 8])) + "\n")
    result = tmp_path / "relay.csv"
    pd.DataFrame([{"task": "toy", "method": "text_relay", "variant": "", "sender": "s", "receiver": "r",
                   "bridge": "", "seed": 0, "metric": "accuracy", "value": 0.5, "n": 2, "fingerprint": "f"}]
                 ).to_csv(result, index=False)
    out = text_rows(messages, result, tiny_models["sender"], tiny_models["receiver"], sst2_like_task
                    ).set_index("metric").value
    config = load_config(tiny_models["sender"])
    sender = (generation_flops(config, 12, 4) + generation_flops(config, 12, 8)) / 2
    assert out["sender_flops_per_example"] == pytest.approx(sender)
    assert out["flops_per_example"] == pytest.approx(sender + out["receiver_flops_per_example"])
    assert out["accuracy"] == 0.5 and out["generated_tokens"] == 6


def test_bad_run_settings_name_the_key():
    with pytest.raises(ConfigError, match="phases"):
        DenseRunConfig.from_dict({"phases": ["pretraining"]})
    with pytest.raises(ConfigError, match="unknown key"):
        DenseRunConfig.from_dict({"stepz": 3})
    with pytest.raises(ConfigError, match="odd"):
        DenseRunConfig.from_dict({"transform": {"layer_window": 2}})
