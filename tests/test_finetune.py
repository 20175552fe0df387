import pandas as pd
import pytest
import torch

from interlingua import finetune as ft
from interlingua import zoo
from interlingua.errors import ConfigError
from interlingua.evaluate import evaluate_bridge, evaluate_prompt_tuning
from interlingua.extract import extract
from interlingua.receiver import Receiver
from interlingua.tasks import materialize_split
from interlingua.train import resume_path_for, train_bridge, train_prompt_tuning

CPU, F32 = torch.device("cpu"), torch.float32
TRAIN = {"steps": 6, "batch_size": 4, "lr": 1e-3, "weight_decay": 0.01, "warmup_steps": 2, "grad_clip": 1.0,
         "diversity_weight": 0.1, "checkpoint_every": 2, "loss": "labels"}
LORA = {"method": "lora", "rank": 8, "alpha": 16, "lr": 1e-2}
LAST2 = {"method": "last_layers", "layers": 2, "lr": 1e-3}
# Tiny Gemma-3 (d=48, 2 heads x 24 = 48 for q, 1 kv head x 24, MLP 96, 3 blocks):
#   LoRA r=8 per block: q 8(48+48) + k 8(48+24) + v 8(48+24) + o 8(48+48) + 3 x 8(48+96) = 6,144; x3 = 18,432
#   a block: q 2304 + k 1152 + v 1152 + o 2304 + q/k norms 48 + MLP 13,824 + 4 norms 192 = 20,976;
#   last 2 blocks + final norm 48 = 42,000
EXPECTED = {"lora": 18_432, "finetune_last2": 42_000}


@pytest.fixture
def split(sst2_like_task, toy_mirror, tmp_path):
    path = tmp_path / "train.jsonl"
    materialize_split("toy", sst2_like_task, toy_mirror, "train", path)
    return path


@pytest.fixture
def captured(monkeypatch):
    """The model `train_finetune` trained, as it is after `fit` (what it saves)."""
    seen = {}
    original = ft.fit

    def spy(module, *args, **kwargs):
        seen["model"] = module
        return original(module, *args, **kwargs)

    monkeypatch.setattr(ft, "fit", spy)
    return seen


def run(split, tiny_models, task, out, spec, train=TRAIN):
    return ft.train_finetune(split, tiny_models["receiver"], out, task=task, train=train, finetune=spec, seed=3,
                             device=CPU, dtype=F32)


def text_scores(receiver, task, split):
    texts = [task["prompts"]["text"].format(text=text) for text in pd.read_json(split, lines=True).text]
    with torch.inference_mode():
        return receiver.class_scores(receiver.text_prompt(texts))


@pytest.mark.parametrize("spec", [LORA, LAST2], ids=["lora", "last2"])
def test_trains_only_what_it_should(spec, split, tiny_models, sst2_like_task, tmp_path, captured):
    payload = torch.load(run(split, tiny_models, sst2_like_task, tmp_path / "f.pt", spec), weights_only=False)
    trained = dict(captured["model"].named_parameters())
    fresh = dict(zoo.load_model(tiny_models["receiver"], CPU, F32).named_parameters())
    name = ft.method_name(spec)
    assert payload["method"] == name and payload["trainable_parameters"] == EXPECTED[name]
    assert sum(t.numel() for t in payload["state_dict"].values()) == EXPECTED[name]
    assert set(payload["state_dict"]) == {n for n, p in trained.items() if p.requires_grad}
    if name == "lora":
        assert all("lora_" in n for n in payload["state_dict"])
        assert any(("lora_B" in n) and t.abs().sum() > 0 for n, t in payload["state_dict"].items())
    else:
        assert set(payload["state_dict"]) == {n for n in fresh if n.startswith(("model.layers.1.", "model.layers.2."))
                                              } | {"model.norm.weight"}
    for key, tensor in payload["state_dict"].items():  # every trained tensor moved
        if key in fresh:
            assert not torch.equal(tensor, fresh[key]), key
    for key, parameter in trained.items():  # everything else, the tied embedding / head included, did not
        if key not in payload["state_dict"]:
            base_key = key.replace(".base_layer", "")
            assert torch.equal(parameter, fresh[base_key]), key
    assert not Receiver(captured["model"], zoo.load_tokenizer(tiny_models["receiver"]),
                        sst2_like_task["verbalizers"]).head.weight.requires_grad


@pytest.mark.parametrize("spec", [LORA, LAST2], ids=["lora", "last2"])
def test_a_few_steps_reduce_the_loss_on_a_tiny_batch(spec, split, tiny_models, sst2_like_task, tmp_path):
    train = dict(TRAIN, steps=8, batch_size=16, warmup_steps=0)  # every step sees all 16 rows: same loss surface
    out = run(split, tiny_models, sst2_like_task, tmp_path / "f.pt", dict(spec, lr=1e-2), train)
    log = pd.read_json(out.with_suffix(".log.jsonl"), lines=True)
    assert "diversity" not in log and (log.loss == log.ce).all()  # text prompts: no diversity term
    assert log.ce.iloc[-1] < 0.9 * log.ce.iloc[0]


@pytest.mark.parametrize("spec", [LORA, LAST2], ids=["lora", "last2"])
def test_checkpoint_round_trip_gives_identical_scores(spec, split, tiny_models, sst2_like_task, tmp_path, captured):
    out = run(split, tiny_models, sst2_like_task, tmp_path / "f.pt", spec)
    tokenizer = zoo.load_tokenizer(tiny_models["receiver"])
    expected = text_scores(Receiver(captured["model"], tokenizer, sst2_like_task["verbalizers"]), sst2_like_task, split)
    loaded, _ = ft.load_finetuned(tiny_models["receiver"], out, sst2_like_task, CPU, F32, merge=False)
    assert torch.equal(text_scores(loaded, sst2_like_task, split), expected)
    merged, _ = ft.load_finetuned(tiny_models["receiver"], out, sst2_like_task, CPU, F32)  # LoRA folded in
    torch.testing.assert_close(text_scores(merged, sst2_like_task, split), expected, rtol=1e-4, atol=1e-4)

    frame = pd.read_csv(ft.evaluate_finetune(split, tiny_models["receiver"], out, tmp_path / "eval.csv",
                                             task_name="toy", task=sst2_like_task, receiver_alias="tiny",
                                             batch_size=4, device=CPU, dtype=F32))
    values = frame.set_index("metric").value
    assert list(frame.metric) == ["accuracy", "seconds_per_example", "trainable_parameters"]
    assert set(frame.method) == {ft.method_name(spec)}
    assert values["trainable_parameters"] == EXPECTED[ft.method_name(spec)]
    labels = torch.tensor(pd.read_json(split, lines=True).label.tolist())
    assert values["accuracy"] == pytest.approx((expected.argmax(-1) == labels).float().mean().item())


@pytest.mark.parametrize("spec", [LORA, LAST2], ids=["lora", "last2"])
def test_killed_training_resumes_to_the_same_weights(spec, split, tiny_models, sst2_like_task, tmp_path, monkeypatch):
    reference = torch.load(run(split, tiny_models, sst2_like_task, tmp_path / "a.pt", spec), weights_only=False)
    calls = {"n": 0}
    original = Receiver.text_prompt

    def dies_at_step_five(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt("killed")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Receiver, "text_prompt", dies_at_step_five)
    with pytest.raises(KeyboardInterrupt):
        run(split, tiny_models, sst2_like_task, tmp_path / "b.pt", spec)
    resume = resume_path_for(tmp_path / "b.pt")
    assert resume.exists() and not (tmp_path / "b.pt").exists()
    assert set(torch.load(resume, weights_only=False)["module"]) == set(reference["state_dict"])  # trained tensors only
    monkeypatch.setattr(Receiver, "text_prompt", original)
    resumed = torch.load(run(split, tiny_models, sst2_like_task, tmp_path / "b.pt", spec), weights_only=False)
    assert not resume.exists()
    assert reference["state_dict"].keys() == resumed["state_dict"].keys()
    for name, tensor in reference["state_dict"].items():
        assert torch.equal(tensor, resumed["state_dict"][name]), name
    assert reference["fingerprint"] == resumed["fingerprint"]


def test_specs_from_the_config_section_and_their_errors():
    specs = ft.method_specs({"lora": {"rank": 8, "alpha": 16, "lr": 2e-4},
                             "last_layers": {"layers": [2, 8], "lr": 1e-5}})
    assert list(specs) == ["lora", "finetune_last2", "finetune_last8"]
    assert specs["lora"]["target_modules"] == ft.PROJECTIONS and specs["finetune_last8"]["layers"] == 8
    with pytest.raises(ConfigError, match="unknown method"):
        ft.check_spec({"method": "full"})
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['rank'\]"):
        ft.check_spec({"method": "last_layers", "layers": 2, "lr": 1e-5, "rank": 8})


def test_last_layers_refuses_more_blocks_than_the_receiver_has(split, tiny_models, sst2_like_task, tmp_path):
    with pytest.raises(ConfigError, match="has 3 blocks"):
        run(split, tiny_models, sst2_like_task, tmp_path / "f.pt", dict(LAST2, layers=4))


def test_bridge_and_prompt_tuning_report_trainable_parameters(split, tiny_models, sst2_like_task, tmp_path):
    train = dict(TRAIN, steps=1)
    prompt = train_prompt_tuning(split, tiny_models["receiver"], tmp_path / "pt.pt", task=sst2_like_task,
                                 train=train, prompt_tuning={"num_virtual_tokens": 4, "lr": 1e-2}, seed=0,
                                 device=CPU, dtype=F32)
    frame = pd.read_csv(evaluate_prompt_tuning(split, tiny_models["receiver"], prompt, tmp_path / "pt.csv",
                                               task_name="toy", task=sst2_like_task, receiver_alias="tiny",
                                               batch_size=8, device=CPU, dtype=F32))
    assert frame.set_index("metric").value["trainable_parameters"] == 4 * 48  # M x d_receiver

    store = extract(tiny_models["sender"], split, tmp_path / "train.zarr", sender_prompt="Review: {text}", layers=[2],
                    storage_dtype="bfloat16", batch_size=8, device=CPU, dtype=F32)
    spec = {"type": "mlp", "source_layer": 2, "num_queries": 2, "hidden_dim": 16}
    bridge = train_bridge(store, tiny_models["receiver"], tmp_path / "b.pt", bridge_name="m", bridge_spec=spec,
                          task=sst2_like_task, train=train, seed=0, device=CPU, dtype=F32)
    frame = pd.read_csv(evaluate_bridge(store, tiny_models["receiver"], bridge, tmp_path / "b.csv", task_name="toy",
                                        task=sst2_like_task, sender="s", receiver_alias="tiny", bridge_name="m",
                                        batch_size=8, device=CPU, dtype=F32))
    counted = frame[frame.metric == "trainable_parameters"]
    payload = torch.load(bridge, weights_only=False)
    buffers = {"alpha", "sender_norm.mean", "sender_norm.std", "sender_norm.sink_norm"}  # fitted, not learned
    assert buffers <= set(payload["state_dict"])
    parameters = sum(t.numel() for name, t in payload["state_dict"].items() if name not in buffers)
    assert len(counted) == 1 and counted.value.item() == parameters


def test_cli_trains_and_evaluates(split, tiny_models, sst2_like_task, tmp_path):
    import json

    from interlingua.cli import main

    spec = {"task": sst2_like_task, "train": dict(TRAIN, steps=2), "finetune": LAST2, "batch_size": 8,
            "runtime": {"device": "cpu", "dtype": "float32"}}
    out = tmp_path / "last2.pt"
    assert main(["train-finetune", "--spec", json.dumps(spec), "--split", str(split), "--receiver-dir",
                 str(tiny_models["receiver"]), "--seed", "1", "--out", str(out)]) == 0
    assert main(["eval-finetune", "--spec", json.dumps(spec), "--task", "toy", "--receiver", "tiny", "--split",
                 str(split), "--receiver-dir", str(tiny_models["receiver"]), "--checkpoint", str(out),
                 "--out", str(tmp_path / "eval.csv")]) == 0
    frame = pd.read_csv(tmp_path / "eval.csv")
    assert set(frame.method) == {"finetune_last2"} and set(frame.seed) == {1}
