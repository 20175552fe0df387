import pytest
import torch

from interlingua.extract import extract
from interlingua.store import ActivationStore
from interlingua.tasks import materialize_split
from interlingua.train import batches, resume_path_for, train_bridge

TRAIN = {"steps": 6, "batch_size": 4, "lr": 1e-3, "weight_decay": 0.01, "warmup_steps": 2, "grad_clip": 1.0,
         "diversity_weight": 0.1, "checkpoint_every": 2, "loss": "labels"}
BRIDGE = {"type": "perceiver", "source_layer": 2, "dim": 32, "num_queries": 4, "depth": 1, "heads": 2}


@pytest.fixture
def toy_store(tiny_models, sst2_like_task, toy_mirror, tmp_path):
    split = tmp_path / "train.jsonl"
    materialize_split("toy", sst2_like_task, toy_mirror, "train", split)
    return extract(tiny_models["sender"], split, tmp_path / "train.zarr", sender_prompt="Review: {text}", layers=[2],
                   storage_dtype="bfloat16", batch_size=4, device=torch.device("cpu"), dtype=torch.float32)


@pytest.fixture
def toy_eval_store(tiny_models, sst2_like_task, toy_mirror, tmp_path):
    """The eval split's store, separate from the training store (same sender, prompt and layer)."""
    split = tmp_path / "validation.jsonl"
    materialize_split("toy", sst2_like_task, toy_mirror, "eval", split)
    return extract(tiny_models["sender"], split, tmp_path / "validation.zarr", sender_prompt="Review: {text}",
                   layers=[2], storage_dtype="bfloat16", batch_size=4, device=torch.device("cpu"),
                   dtype=torch.float32)


def run(store, tiny_models, task, out):
    return train_bridge(store, tiny_models["receiver"], out, bridge_name="p", bridge_spec=BRIDGE, task=task,
                        train=TRAIN, seed=3, device=torch.device("cpu"), dtype=torch.float32)


def test_batches_cover_every_row_each_epoch():
    plan = list(batches(10, 4, 5, torch.Generator().manual_seed(0)))
    assert len(plan) == 5 and all(len(b) == 4 for b in plan)
    assert sorted(sum(plan[:2], []) + plan[2][:2]) == list(range(10))


def test_killed_training_resumes_to_the_same_weights(toy_store, tiny_models, sst2_like_task, tmp_path, monkeypatch):
    reference = torch.load(run(toy_store, tiny_models, sst2_like_task, tmp_path / "a.pt"), weights_only=False)

    calls = {"n": 0}
    original = ActivationStore.batch

    def dies_at_step_five(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt("killed")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ActivationStore, "batch", dies_at_step_five)
    with pytest.raises(KeyboardInterrupt):
        run(toy_store, tiny_models, sst2_like_task, tmp_path / "b.pt")
    assert resume_path_for(tmp_path / "b.pt").exists() and not (tmp_path / "b.pt").exists()
    monkeypatch.setattr(ActivationStore, "batch", original)
    resumed = torch.load(run(toy_store, tiny_models, sst2_like_task, tmp_path / "b.pt"), weights_only=False)
    assert not resume_path_for(tmp_path / "b.pt").exists()
    for name, tensor in reference["state_dict"].items():
        assert torch.equal(tensor, resumed["state_dict"][name]), name
    assert reference["fingerprint"] == resumed["fingerprint"]


def test_training_refuses_a_damaged_store(toy_store, tiny_models, sst2_like_task, tmp_path):
    from interlingua.errors import DataError

    shard = next(p for p in (toy_store / "hidden").rglob("*") if p.is_file() and "/c/" in p.as_posix())
    shard.write_bytes(shard.read_bytes()[:-5])
    with pytest.raises(DataError, match="fails its integrity check"):
        run(toy_store, tiny_models, sst2_like_task, tmp_path / "c.pt")


def test_training_refuses_a_store_extracted_for_another_request(toy_store, tiny_models, sst2_like_task, tmp_path):
    from interlingua.errors import DataError

    request = {"sender_prompt": "Another prompt: {text}", "extract": {"layers": [2]}}
    with pytest.raises(DataError, match=r"extracted for another request \(sender_prompt\)"):
        train_bridge(toy_store, tiny_models["receiver"], tmp_path / "d.pt", bridge_name="p", bridge_spec=BRIDGE,
                     task=sst2_like_task, train=TRAIN, seed=3, device=torch.device("cpu"), dtype=torch.float32,
                     store_request=request)


def test_train_bridge_command_evaluates_in_the_same_process_as_eval_bridge_would(
        toy_store, toy_eval_store, tiny_models, sst2_like_task, tmp_path, monkeypatch):
    """`train-bridge --eval-out` writes the same rows as a separate `eval-bridge` on its checkpoint,
    and loads the frozen receiver once for both."""
    import json

    import pandas as pd

    from interlingua import zoo
    from interlingua.cli import main

    task = {k: sst2_like_task[k] for k in ("label_names", "prompts", "verbalizers")}
    spec = json.dumps({"runtime": {"device": "cpu", "dtype": "float32"}, "bridge": BRIDGE, "train": TRAIN,
                       "task": task, "evaluate": {"batch_size": 3}})
    loads = []
    original = zoo.AutoModelForCausalLM.from_pretrained
    monkeypatch.setattr(zoo.AutoModelForCausalLM, "from_pretrained",
                        lambda *a, **k: loads.append(a) or original(*a, **k))
    common = ["--spec", spec, "--receiver-dir", str(tiny_models["receiver"]), "--task", "toy", "--sender", "s",
              "--receiver", "r", "--bridge", "perceiver"]
    assert main(["train-bridge", *common, "--store", str(toy_store), "--seed", "1", "--out", str(tmp_path / "b.pt"),
                 "--eval-store", str(toy_eval_store), "--eval-out", str(tmp_path / "merged.csv")]) == 0
    assert len(loads) == 1
    eval_spec = json.dumps({"runtime": {"device": "cpu", "dtype": "float32"}, "task": task, "batch_size": 3})
    common[1] = eval_spec
    assert main(["eval-bridge", *common, "--store", str(toy_eval_store), "--checkpoint", str(tmp_path / "b.pt"),
                 "--out", str(tmp_path / "separate.csv")]) == 0
    merged, separate = (pd.read_csv(tmp_path / f"{name}.csv") for name in ("merged", "separate"))
    columns = ["variant", "metric", "value", "n", "fingerprint"]
    accuracy = lambda frame: frame[frame.metric != "seconds_per_example"][columns].reset_index(drop=True)  # noqa: E731
    pd.testing.assert_frame_equal(accuracy(merged), accuracy(separate))
    assert set(merged.variant.fillna("")) == {"", "shuffled_source", "zero_source"}


def test_train_command_refuses_an_evaluation_without_its_inputs(toy_store, tiny_models, tmp_path, capsys):
    from interlingua.cli import main

    code = main(["train-bridge", "--spec", "{}", "--bridge", "perceiver", "--store", str(toy_store),
                 "--receiver-dir", str(tiny_models["receiver"]), "--out", str(tmp_path / "x.pt"),
                 "--eval-out", str(tmp_path / "x.csv")])
    assert code == 2 and "--eval-out needs --eval-store" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()


def test_shared_frozen_models_only_inside_the_block(tiny_models):
    from interlingua import zoo

    cpu = torch.device("cpu")
    with zoo.shared_frozen_models():
        first = zoo.load_model(tiny_models["receiver"], cpu, torch.float32)
        assert zoo.load_model(tiny_models["receiver"], cpu, torch.float32) is first
        assert zoo.load_model(tiny_models["receiver"], cpu, torch.float32, frozen=False) is not first
        assert zoo.load_tokenizer(tiny_models["receiver"]) is zoo.load_tokenizer(tiny_models["receiver"])
    assert zoo.load_model(tiny_models["receiver"], cpu, torch.float32) is not first


def test_input_free_fit_takes_the_same_steps_as_the_whole_batch(tiny_models, sst2_like_task):
    """Prompt tuning's shortcut (one row per distinct label, weighted) follows the full batch's trajectory."""
    from interlingua import zoo
    from interlingua.receiver import Receiver
    from interlingua.train import fit, make_prompt_embedding, soft_prompts

    cpu = torch.device("cpu")
    receiver = Receiver(zoo.load_model(tiny_models["receiver"], cpu, torch.float32),
                        zoo.load_tokenizer(tiny_models["receiver"]), [" negative", " positive", " so so"])
    labels = torch.tensor([0, 1, 1, 2, 0, 1, 1, 1, 2, 0, 1, 0])
    weights = {}
    for input_free in (False, True):
        prompt = make_prompt_embedding(receiver.model, 3, seed=0)
        indices = torch.arange(3)
        make = soft_prompts(lambda rows: prompt(indices).unsqueeze(0).expand(len(rows), -1, -1), receiver,
                            sst2_like_task["prompts"]["instruction"])
        log = fit(prompt, make, labels, receiver, TRAIN, 1e-2, seed=0, diversity_weight=0.0, desc="pt",
                  input_free=input_free)
        weights[input_free] = (prompt.embedding.weight.detach().clone(), [r["ce"] for r in log])
    torch.testing.assert_close(weights[True][0], weights[False][0], atol=1e-5, rtol=1e-4)
    assert weights[True][1] == pytest.approx(weights[False][1], rel=1e-4)


def test_bridge_evaluation_reading_distinct_soft_tokens_once_matches_reading_every_row(
        toy_store, toy_eval_store, tiny_models, sst2_like_task, tmp_path):
    import pandas as pd

    from interlingua import zoo
    from interlingua.evaluate import derangement, evaluate_bridge, predict
    from interlingua.receiver import Receiver
    from interlingua.train import load_bridge

    cpu = torch.device("cpu")
    checkpoint = run(toy_store, tiny_models, sst2_like_task, tmp_path / "e.pt")
    frame = pd.read_csv(evaluate_bridge(toy_eval_store, tiny_models["receiver"], checkpoint, tmp_path / "e.csv",
                                        task_name="toy", task=sst2_like_task, sender="s", receiver_alias="r",
                                        bridge_name="p", batch_size=5, device=cpu, dtype=torch.float32))
    store, (bridge, payload) = ActivationStore(toy_eval_store), load_bridge(checkpoint, cpu)
    receiver = Receiver(zoo.load_model(tiny_models["receiver"], cpu, torch.float32),
                        zoo.load_tokenizer(tiny_models["receiver"]), sst2_like_task["verbalizers"])
    sources = {"": torch.arange(len(store)), "shuffled_source": derangement(len(store), payload["seed"]),
               "zero_source": torch.arange(len(store))}
    for variant, source in sources.items():
        def prompts(rows):
            states, mask, _ = store.batch(source[rows].tolist(), 2, torch.float32, cpu)
            states = torch.zeros_like(states) if variant == "zero_source" else states
            return receiver.soft_prompt(bridge(states, mask), sst2_like_task["prompts"]["instruction"])
        every_row = predict(receiver, prompts, len(store), 5, "every row")
        reported = frame[(frame.variant.fillna("") == variant) & (frame.metric == "accuracy")].value.item()
        assert reported == pytest.approx((every_row == store.labels).float().mean().item())


# -- identity checks: what a checkpoint and a store were made from ------------------------------------------
def test_resume_key_and_fingerprint_cover_the_verbalizers(toy_store, tiny_models, sst2_like_task, tmp_path):
    """Other label words train other weights: a killed run must not resume under new verbalizers."""
    other = dict(sst2_like_task, verbalizers=[" bad", " good"])
    first = torch.load(run(toy_store, tiny_models, sst2_like_task, tmp_path / "a.pt"), weights_only=False)
    second = torch.load(run(toy_store, tiny_models, other, tmp_path / "b.pt"), weights_only=False)
    assert first["fingerprint"] != second["fingerprint"]
    assert second["verbalizers"] == [" bad", " good"]


def test_store_check_compares_the_model_and_the_task_data(toy_store, tiny_models, sst2_like_task, tmp_path):
    from interlingua import zoo
    from interlingua.errors import DataError
    from interlingua.store import with_split

    sender = zoo.read_manifest(tiny_models["sender"])["source"]
    receiver = zoo.read_manifest(tiny_models["receiver"])["source"]
    split = tmp_path / "train.jsonl"
    ActivationStore(toy_store, request=with_split({"model": sender, "sender_prompt": "Review: {text}"}, split))
    with pytest.raises(DataError, match=r"extracted for another request \(model: fingerprint"):
        ActivationStore(toy_store, request={"model": receiver})
    with pytest.raises(DataError, match=r"task data: split content"):
        ActivationStore(toy_store, request={"task_sha256": "0" * 64})
    with pytest.raises(DataError, match=r"extraction code: c2 asked"):
        ActivationStore(toy_store, request={"code": "c2"})


def test_evaluation_refuses_a_checkpoint_of_another_receiver_or_sender_store(
        toy_store, toy_eval_store, tiny_models, sst2_like_task, tmp_path):
    from interlingua.errors import DataError
    from interlingua.evaluate import evaluate_bridge

    checkpoint = run(toy_store, tiny_models, sst2_like_task, tmp_path / "a.pt")
    evaluate = dict(out_path=tmp_path / "r.csv", task_name="toy", sender="s", receiver_alias="r", bridge_name="p",
                    batch_size=4, device=torch.device("cpu"), dtype=torch.float32)
    with pytest.raises(DataError, match=r"receiver: trained for fingerprint \w+, given 'sender'"):
        evaluate_bridge(toy_eval_store, tiny_models["sender"], checkpoint, task=sst2_like_task, **evaluate)
    other_prompt = extract(tiny_models["sender"], tmp_path / "train.jsonl", tmp_path / "other.zarr",
                           sender_prompt="Text: {text}", layers=[1, 3], storage_dtype="bfloat16", batch_size=4,
                           device=torch.device("cpu"), dtype=torch.float32)
    with pytest.raises(DataError) as error:
        evaluate_bridge(other_prompt, tiny_models["receiver"], checkpoint, task=sst2_like_task, **evaluate)
    assert "sender prompt: trained on 'Review: {text}', eval store has 'Text: {text}'" in str(error.value)
    assert "source layer: the bridge reads layer 2, the eval store has [1, 3]" in str(error.value)
    with pytest.raises(DataError, match=r"verbalizers: trained with \[' negative', ' positive'\]"):
        evaluate_bridge(toy_eval_store, tiny_models["receiver"], checkpoint,
                        task=dict(sst2_like_task, verbalizers=[" no", " yes"]), **evaluate)
    assert not (tmp_path / "r.csv").exists()


# -- a known answer through evaluate_bridge -----------------------------------------------------------------
def signal_store(path, labels, signals, width):
    """A store whose row i ends with a token state pointing at class signals[i] (5 x one-hot)."""
    from interlingua.extract import extraction_fingerprint
    from interlingua.store import StoreWriter

    n = len(labels)
    writer = StoreWriter(path, key="known", lengths=[2] * n, labels=labels, example_index=list(range(n)),
                         arrays={"token_ids": ((), "int32"), "hidden/layer_1": ((width,), "float32")})
    for row, signal in enumerate(signals):
        states = torch.zeros(2, width)
        states[0, -1] = 1.0                   # the first token points nowhere; the bridge reads the last
        states[1, signal] = 5.0
        writer.add(row, {"token_ids": torch.tensor([1, 2], dtype=torch.int32).numpy(), "hidden/layer_1": states})
    identity = {"model_fingerprint": "m", "task_sha256": "t", "sender_prompt": "{text}", "layers": [1],
                "storage_dtype": "float32", "compute_dtype": "float32"}
    fp = extraction_fingerprint("m", "t", "{text}", [1], "float32", "float32")
    return writer.finish(dict(identity, task="toy", hidden_size=width, fingerprint=fp))


class ScoresFromSoftTokens:
    """A receiver whose class scores are the first C coordinates of the last soft token: known answers."""

    def __init__(self, classes):
        self.classes = classes

    def soft_prompt(self, soft, instruction):
        return soft

    def class_scores(self, soft):
        return soft[:, -1, :self.classes]


def test_bridge_accuracy_and_controls_are_the_known_answer(tiny_models, tmp_path, monkeypatch):
    """Identity bridge (M = 1) over states that point at a class; the receiver scores that pointer.
    Row 4 points at the wrong class: accuracy 4/5. Labels are distinct, so every other example's states
    (the shuffled-source control, a derangement) point at a wrong class: 0. All-zero states score every
    class alike, so class 0 wins: 1/5 (one row is class 0). No learned parameters: 0."""
    import pandas as pd

    from interlingua import evaluate

    width = zoo_width = 48  # the tiny receiver's embedding size: the identity bridge needs no projection
    labels, signals = [0, 1, 2, 3, 4], [0, 1, 2, 3, 0]
    train, held_out = (signal_store(tmp_path / f"{name}.zarr", labels, signals, width) for name in ("t", "e"))
    task = {"label_names": list("abcde"), "verbalizers": [" a", " b", " c", " d", " e"],
            "prompts": {"instruction": "{soft_tokens}"}}
    checkpoint = train_bridge(train, tiny_models["receiver"], tmp_path / "id.pt", bridge_name="identity",
                              bridge_spec={"type": "identity", "source_layer": 1, "num_queries": 1}, task=task,
                              train=TRAIN, seed=0, device=torch.device("cpu"), dtype=torch.float32)
    assert zoo_width == torch.load(checkpoint, weights_only=False)["config"]["receiver_dim"]
    monkeypatch.setattr(evaluate, "_receiver", lambda *args: ScoresFromSoftTokens(len(labels)))
    frame = pd.read_csv(evaluate.evaluate_bridge(held_out, tiny_models["receiver"], checkpoint, tmp_path / "k.csv",
                                                 task_name="toy", task=task, sender="s", receiver_alias="r",
                                                 bridge_name="identity", batch_size=2, device=torch.device("cpu"),
                                                 dtype=torch.float32), keep_default_na=False)
    values = {(row.variant, row.metric): (row.value, row.n) for row in frame.itertuples()}
    assert values[("", "accuracy")] == (0.8, 5)
    assert values[("shuffled_source", "accuracy")] == (0.0, 5)
    assert values[("zero_source", "accuracy")] == (0.2, 5)
    assert values[("", "trainable_parameters")] == (0, 5)
