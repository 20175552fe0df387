import torch

from interlingua import zoo
from interlingua.evaluate import predict, predict_texts
from interlingua.receiver import Receiver


def test_length_sorted_batches_predict_the_same_classes_in_example_order(tiny_models):
    cpu = torch.device("cpu")
    receiver = Receiver(zoo.load_model(tiny_models["receiver"], cpu, torch.float32),
                        zoo.load_tokenizer(tiny_models["receiver"]), [" negative", " positive"])
    texts = [f"Review: {'so ' * (7 * i % 11)}good {i}\nSentiment:" for i in range(13)]
    one_by_one = torch.cat([predict(receiver, lambda rows: receiver.text_prompt([text]), 1, 1, "one")
                            for text in texts])
    scores = torch.stack([receiver.class_scores(receiver.text_prompt([text]))[0] for text in texts])
    assert len(set(scores.argmax(-1).tolist())) == 2  # both classes occur: the order is observable
    assert torch.equal(one_by_one, scores.argmax(-1))
    assert torch.equal(predict_texts(receiver, texts, batch_size=4, desc="sorted"), one_by_one)


def test_shuffled_source_control_reads_a_derangement_of_every_row(tiny_models, sst2_like_task, toy_mirror, tmp_path,
                                                                   monkeypatch):
    """The shuffled-source control: every row reads another row's states (a seeded derangement of all rows)."""
    from interlingua import evaluate
    from interlingua.evaluate import derangement, evaluate_bridge
    from interlingua.extract import extract
    from interlingua.store import ActivationStore
    from interlingua.tasks import materialize_split
    from interlingua.train import train_bridge

    cpu = torch.device("cpu")
    split = tmp_path / "validation.jsonl"
    materialize_split("toy", sst2_like_task, toy_mirror, "eval", split)
    store = extract(tiny_models["sender"], split, tmp_path / "v.zarr", sender_prompt="Review: {text}", layers=[2],
                    storage_dtype="float32", batch_size=4, device=cpu, dtype=torch.float32)
    train = {"steps": 1, "batch_size": 4, "lr": 1e-3, "weight_decay": 0.0, "warmup_steps": 0, "grad_clip": 1.0,
             "diversity_weight": 0.0, "checkpoint_every": 1, "loss": "labels"}
    bridge = {"type": "perceiver", "source_layer": 2, "dim": 16, "num_queries": 2, "depth": 1, "heads": 2}
    checkpoint = train_bridge(store, tiny_models["receiver"], tmp_path / "b.pt", bridge_name="p", bridge_spec=bridge,
                              task=sst2_like_task, train=train, seed=4, device=cpu, dtype=torch.float32)
    sources, original = [], evaluate.soft_tokens
    monkeypatch.setattr(evaluate, "soft_tokens", lambda store, bridge, source, *args, zero=False, **kwargs: (
        sources.append((source.clone(), zero)), original(store, bridge, source, *args, zero=zero, **kwargs))[1])
    evaluate_bridge(store, tiny_models["receiver"], checkpoint, tmp_path / "e.csv", task_name="toy",
                    task=sst2_like_task, sender="s", receiver_alias="r", bridge_name="p", batch_size=3, device=cpu,
                    dtype=torch.float32)
    n = len(ActivationStore(store))
    identity, shuffled, zero = sources
    assert torch.equal(identity[0], torch.arange(n)) and not identity[1]
    assert sorted(shuffled[0].tolist()) == list(range(n)) and not shuffled[1]       # every row, once
    assert not (shuffled[0] == torch.arange(n)).any()                               # none reads its own states
    assert torch.equal(shuffled[0], derangement(n, 4))                              # seeded by the run's seed
    assert zero[1]
