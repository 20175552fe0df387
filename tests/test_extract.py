import json

import torch

from interlingua import zoo
from interlingua.extract import capture_layers, decoder_of, extract, extraction_fingerprint
from interlingua.store import ActivationStore
from interlingua.tasks import materialize_split


def test_store_matches_model_config_and_hf_hidden_states(tiny_models, sst2_like_task, toy_mirror, tmp_path):
    split = tmp_path / "validation.jsonl"
    materialize_split("toy", sst2_like_task, toy_mirror, "eval", split)
    out = extract(tiny_models["sender"], split, tmp_path / "validation.zarr", sender_prompt="Review: {text}",
                  layers=[0, 2], storage_dtype="bfloat16", batch_size=3, device=torch.device("cpu"),
                  dtype=torch.float32, shard_tokens=128, chunk_tokens=32)
    store = ActivationStore(out)
    model = zoo.load_model(tiny_models["sender"], torch.device("cpu"), torch.float32)
    tokenizer = zoo.load_tokenizer(tiny_models["sender"])
    assert store.hidden_size == model.config.hidden_size
    assert store.manifest["num_model_layers"] == model.config.num_hidden_layers
    assert len(store) == 8 and store.manifest["tokens"] == int(store.offsets[-1])
    rows = [json.loads(line) for line in split.read_text().splitlines()]
    for r in range(len(store)):
        text = rows[store.example_index[r]]["text"]
        ids = tokenizer(f"Review: {text}")["input_ids"]
        assert store.row_tokens(r).tolist() == ids
        assert store.labels[r] == rows[store.example_index[r]]["label"]
        reference = model(torch.tensor([ids]), output_hidden_states=True).hidden_states
        for layer in (0, 2):  # hidden_states[l] = output of block l; the last entry is post-norm
            torch.testing.assert_close(store.row_hidden(r, layer).float(), reference[layer][0].to(torch.bfloat16).float(),
                                       atol=0.02, rtol=0.02)


def test_blocks_past_the_deepest_layer_never_run(tiny_models):
    model = zoo.load_model(tiny_models["sender"], torch.device("cpu"), torch.float32)
    decoder = decoder_of(model)
    calls = []
    handles = [block.register_forward_hook(lambda *_ , i=i: calls.append(i)) for i, block in enumerate(decoder.layers)]
    with capture_layers(decoder, [1, 2]) as captured:
        decoder(input_ids=torch.tensor([[5, 6, 7]]), use_cache=False)
    assert calls == [0, 1] and set(captured) == {1, 2}
    assert len(decoder.layers) == model.config.num_hidden_layers  # restored
    for h in handles:
        h.remove()


def test_fingerprint_depends_on_what_determines_the_states():
    base = dict(model_fp="m", task_sha="t", sender_prompt="{text}", layers=[15], storage_dtype="bfloat16",
                compute_dtype="float32")
    fp = extraction_fingerprint(**base)
    assert fp == extraction_fingerprint(**dict(base, layers=[15]))
    for key, value in [("layers", [14, 15]), ("task_sha", "t2"), ("model_fp", "m2"), ("sender_prompt", "x {text}"),
                       ("storage_dtype", "float16")]:
        assert extraction_fingerprint(**dict(base, **{key: value})) != fp
