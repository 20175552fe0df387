import pytest
import torch

from interlingua.extract import extract
from interlingua.store import ActivationStore
from interlingua.tasks import materialize_split
from interlingua.train import batches, resume_path_for, train_bridge

TRAIN = {"steps": 6, "batch_size": 4, "lr": 1e-3, "weight_decay": 0.01, "warmup_steps": 2, "grad_clip": 1.0,
         "diversity_weight": 0.1, "checkpoint_every": 2}
BRIDGE = {"type": "perceiver", "source_layer": 2, "dim": 32, "num_queries": 4, "depth": 1, "heads": 2}


@pytest.fixture
def toy_store(tiny_models, sst2_like_task, toy_mirror, tmp_path):
    split = tmp_path / "train.jsonl"
    materialize_split("toy", sst2_like_task, toy_mirror, "train", split)
    return extract(tiny_models["sender"], split, tmp_path / "train.zarr", sender_prompt="Review: {text}", layers=[2],
                   storage_dtype="bfloat16", batch_size=4, device=torch.device("cpu"), dtype=torch.float32)


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
