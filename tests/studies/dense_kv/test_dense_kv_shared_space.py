"""Study 2's shared space as a study-3 baseline (studies/dense_kv/shared_space.py), on tiny models."""
from __future__ import annotations

import pandas as pd
import pytest
import torch

from interlingua import zoo
from interlingua.channels.kv.cache import KVBlock
from interlingua.channels.kv.translators import KV, CacheShape, build_translator, translator_config
from interlingua.errors import DataError
from interlingua.extract import extract
from interlingua.runtime import atomic_save
from interlingua.store import ActivationStore
from interlingua.studies.dense_kv.data import load_task
from interlingua.studies.dense_kv.shared_space import ThroughSharedSpace, shared_space_job
from interlingua.studies.dense_kv.train import Ends, transferred
from interlingua.studies.kv_alignment.run import load_translator
from interlingua.tasks import materialize_split

torch.set_num_threads(1)
PROMPTS = {"toy": {"unaware": "\nSentiment:"}}
BASE = {"sender": "a", "receiver": "b", "bridge": "shared_space", "fingerprint": "f"}


def space(kind: str, shape: CacheShape, **options):
    config = translator_config({"type": kind, **options})[1]
    return build_translator(kind, config, {"a": shape, "b": shape, "c": shape})


def save(translator, kind: str, path, **options):
    atomic_save(path, {"state": translator.state_dict(), "translator": {"type": kind, **options},
                       "shapes": translator.shapes, "members": translator.members})
    return path


@pytest.fixture
def one_model(tiny_models, sst2_like_task, toy_mirror, tmp_path):
    """The tiny Gemma-3 (BPE) on both ends: one tokenizer; its KV store of the eval split."""
    split = tmp_path / "validation.jsonl"
    materialize_split("toy", sst2_like_task, toy_mirror, "eval", split)
    store = extract(tiny_models["receiver"], split, tmp_path / "eval.zarr", sender_prompt=sst2_like_task["prompts"]["sender"],
                    layers=[1], storage_dtype="float32", batch_size=4, device=torch.device("cpu"),
                    dtype=torch.float32, kv_cache=True)
    return {"model": tiny_models["receiver"], "split": split, "store": store,
            "shape": CacheShape.of(KVBlock.from_store(ActivationStore(store), [0]))}


def test_a_path_through_the_space_is_a_transformation_of_the_cache(one_model):
    shared = space("linear", one_model["shape"], shared_dim=16)
    path = ThroughSharedSpace(shared, "a", "b")
    shape = one_model["shape"]
    keys = [torch.randn(2, shape.heads(layer), 5, shape.dim(layer)) for layer in range(shape.num_layers)]
    values = [torch.randn(2, shape.heads(layer), 5, shape.dim(layer)) for layer in range(shape.num_layers)]
    out_keys, out_values = path(keys, values)
    expected = shared.translate("a", "b", KV(keys, values))
    assert all(torch.equal(x, y) for x, y in zip(out_keys + out_values, list(expected.keys) + list(expected.values)))
    # a position's compute: a's encoder and b's decoder only (compute.transform_flops)
    encoder, decoder = shared.encoders["a"], shared.decoders["b"]
    assert sum(p.numel() for p in path.weight.values()) == \
        sum(p.numel() for p in (*encoder.parameters(), *decoder.parameters())) > 0
    with pytest.raises(DataError, match=r"no member \['z'\]"):
        ThroughSharedSpace(shared, "a", "z")


def test_identity_space_on_one_model_hands_the_receiver_its_own_cache(one_model, sst2_like_task):
    """Through the identity space, sender == receiver: the transferred positions are the model's own cache
    (un-rotated, then re-rotated at the same positions), its sink first."""
    path = ThroughSharedSpace(space("identity", one_model["shape"]), "a", "b")
    tokenizer = zoo.load_tokenizer(one_model["model"])
    model = zoo.load_model(one_model["model"], torch.device("cpu"), torch.float32)
    data = load_task("toy", sst2_like_task, one_model["split"], one_model["store"], (tokenizer, model.config),
                     tokenizer, PROMPTS)
    ends = Ends(model.config, model, tokenizer)
    batch = data.examples[:3]
    block = transferred(path, data, batch, ends)
    own = KVBlock.from_store(data.store, [e.row for e in batch])
    for b, example in enumerate(batch):
        count = int(example.positions.numel())
        assert torch.equal(example.positions, torch.arange(1, count + 1))            # one tokenizer: i -> i
        for got, want in zip(block.keys + block.values, own.keys + own.values):
            real_got, real_want = got[b][:, block.mask[b].bool()], want[b][:, own.mask[b].bool()]
            assert torch.allclose(real_got[:, 1:], real_want[:, 1:count + 1], atol=1e-5)


def test_the_job_scores_both_modes_with_the_shuffled_control_on_the_same_rows(one_model, sst2_like_task, tmp_path):
    translator = save(space("linear", one_model["shape"], shared_dim=16), "linear", tmp_path / "translator.pt",
                      shared_dim=16)
    result = shared_space_job(translator, "a", "b", one_model["model"], one_model["model"], "toy", sst2_like_task,
                              one_model["split"], one_model["store"], PROMPTS, tmp_path / "toy.csv", base=BASE, seed=0)
    rows = pd.read_csv(result)
    accuracy = rows[rows.metric == "accuracy"]
    assert set(zip(accuracy.method, accuracy.variant.fillna(""))) == {
        (f"cache_{mode}", v) for mode in ("unaware", "aware") for v in ("", "shuffled_source")}
    assert set(accuracy.n) == {8} and set(accuracy.bridge) == {"shared_space"}
    encoder, decoder = load_translator(translator, {}).encoders["a"], load_translator(translator, {}).decoders["b"]
    assert rows[rows.metric == "trainable_parameters"].value.item() == \
        sum(p.numel() for p in (*encoder.parameters(), *decoder.parameters()))  # the path's adapters
    transform = rows[(rows.metric == "transform_flops_per_example") & (rows.method == "cache_unaware")].value.item()
    assert transform > 0


def test_models_of_two_tokenizers_are_refused(tiny_models, one_model, sst2_like_task, tmp_path):
    translator = save(space("identity", one_model["shape"]), "identity", tmp_path / "translator.pt")
    with pytest.raises(DataError, match="different tokenizers"):
        shared_space_job(translator, "a", "b", tiny_models["sender"], tiny_models["receiver"], "toy", sst2_like_task,
                         one_model["split"], one_model["store"], PROMPTS, tmp_path / "toy.csv", base=BASE, seed=0)
