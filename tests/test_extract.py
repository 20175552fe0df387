import json

import numpy as np
import pytest
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
        spans = store.row_spans(r)   # each token's characters in the prompt string, for token alignment
        assert len(spans) == len(ids) and "".join(f"Review: {text}"[a:b] for a, b in spans) == f"Review: {text}"
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


def _split(tmp_path, sst2_like_task, toy_mirror):
    split = tmp_path / "validation.jsonl"
    materialize_split("toy", sst2_like_task, toy_mirror, "eval", split)
    return split


def test_kv_cache_read_back_continues_like_the_cache_in_memory(tiny_models, sst2_like_task, toy_mirror, tmp_path):
    """Gemma-3 layout (grouped-query heads, sliding-window layers): continue from the stored cache."""
    from transformers import DynamicCache

    split = _split(tmp_path, sst2_like_task, toy_mirror)
    model_dir = tiny_models["receiver"]
    long_prompt = "Here is a review of a film, written by a critic: {text}. What did the critic think of it?"
    out = extract(model_dir, split, tmp_path / "kv.zarr", sender_prompt=long_prompt, layers=[1],
                  storage_dtype="float16", kv_cache=True, batch_size=3, device=torch.device("cpu"),
                  dtype=torch.float32, shard_tokens=128, chunk_tokens=32)
    store = ActivationStore(out)
    kv = store.manifest["kv"]
    model = zoo.load_model(model_dir, torch.device("cpu"), torch.float32)
    assert kv["num_layers"] == model.config.num_hidden_layers and kv["num_kv_heads"] == 1 and kv["head_dim"] == 24
    assert kv["layer_types"] == ["sliding_attention", "sliding_attention", "full_attention"] and kv["grouped_query"]
    row = int(np.argmax(np.diff(store.offsets)))          # the longest row: longer than the sliding window
    ids = torch.tensor([store.row_tokens(row).tolist()])
    assert ids.shape[1] > model.config.sliding_window
    next_token = torch.tensor([[7]])
    with torch.no_grad():
        reference_cache = model(ids, use_cache=True).past_key_values
        reference = model(next_token, past_key_values=reference_cache, use_cache=True).logits
        cache, mask = store.to_cache([row], model.config)
        assert isinstance(cache, DynamicCache) and cache.get_seq_length() == ids.shape[1]
        continued = model(next_token, past_key_values=cache,
                          attention_mask=torch.cat([mask, torch.ones(1, 1, dtype=mask.dtype)], 1), use_cache=True).logits
    torch.testing.assert_close(continued, reference, atol=2e-3, rtol=1e-2)  # 16-bit rounding of the cache


def test_superset_store_is_reused(tiny_models, sst2_like_task, toy_mirror, tmp_path):
    split = _split(tmp_path, sst2_like_task, toy_mirror)
    kwargs = dict(sender_prompt="Review: {text}", storage_dtype="bfloat16", batch_size=4,
                  device=torch.device("cpu"), dtype=torch.float32)
    out = extract(tiny_models["sender"], split, tmp_path / "s.zarr", layers=[1, 2], **kwargs)
    stamp = (out / "zarr.json").stat().st_mtime_ns
    extract(tiny_models["sender"], split, out, layers=[2], **kwargs)           # narrower: reused as is
    assert (out / "zarr.json").stat().st_mtime_ns == stamp
    extract(tiny_models["sender"], split, out, layers=[3], **kwargs)           # not covered: re-extracted
    assert ActivationStore(out).layers == [3]


def test_killed_extraction_resumes_to_an_identical_store(tiny_models, sst2_like_task, tmp_path):
    """A real SIGKILL in the middle of extraction, then a rerun; compare with an uninterrupted store."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import SENTENCES, write_jsonl

    rows = [{"text": f"{SENTENCES[i % 8]} " * (1 + i % 7), "label": i % 2} for i in range(600)]
    write_jsonl(tmp_path / "mirror/toy/validation.jsonl", rows)
    split = tmp_path / "validation.jsonl"
    materialize_split("toy", sst2_like_task, tmp_path / "mirror", "eval", split)
    spec = json.dumps({"sender_prompt": "Review: {text}", "extract": {"layers": [1, 3], "storage_dtype": "bfloat16"}})

    def command(out):
        return [sys.executable, "-m", "interlingua", "extract", "--model-dir", str(tiny_models["sender"]),
                "--split", str(split), "--out", str(out), "--spec", spec, "--batch-size", "4",
                "--shard-tokens", "512", "--chunk-tokens", "128", "--threads", "1"]

    subprocess.run(command(tmp_path / "full.zarr"), check=True, capture_output=True)
    victim = subprocess.Popen(command(tmp_path / "killed.zarr"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    progress = tmp_path / "killed.zarr.partial/progress.json"
    deadline = time.time() + 120
    while time.time() < deadline:
        if progress.exists() and json.loads(progress.read_text() or "{}").get("tokens", 0) > 1024:
            break
        time.sleep(0.05)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    state = json.loads(progress.read_text())
    assert 0 < state["tokens"] < state["total"], "the kill must land mid-way"
    assert not (tmp_path / "killed.zarr").exists()
    subprocess.run(command(tmp_path / "killed.zarr"), check=True, capture_output=True)
    full, resumed = ActivationStore(tmp_path / "full.zarr"), ActivationStore(tmp_path / "killed.zarr")
    for key in ("token_ids", "char_spans", "hidden/layer_1", "hidden/layer_3", "offsets", "labels", "example_index"):
        assert np.array_equal(full.group[key][:], resumed.group[key][:]), key
    assert full.manifest["checksums"] == resumed.manifest["checksums"]


def test_second_writer_is_refused(tiny_models, sst2_like_task, toy_mirror, tmp_path):
    from interlingua.errors import DataError
    from interlingua.store import writer_lock

    split = _split(tmp_path, sst2_like_task, toy_mirror)
    with writer_lock(tmp_path / "s.zarr"):
        with pytest.raises(DataError, match="being written by another process"):
            extract(tiny_models["sender"], split, tmp_path / "s.zarr", sender_prompt="{text}", layers=[1],
                    storage_dtype="bfloat16", batch_size=4, device=torch.device("cpu"), dtype=torch.float32)


def test_layer_beyond_the_depth_stops_before_the_model_loads(tiny_models, sst2_like_task, toy_mirror, tmp_path,
                                                             monkeypatch):
    from interlingua.errors import ConfigError
    split = _split(tmp_path, sst2_like_task, toy_mirror)
    monkeypatch.setattr(zoo, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(ConfigError, match=r"layer\(s\) \[9\] requested \(extract.layers, or a bridge's "
                                          r"source_layer\) but model sender has 4 blocks"):
        extract(tiny_models["sender"], split, tmp_path / "s.zarr", sender_prompt="Review: {text}", layers=[2, 9],
                storage_dtype="bfloat16", batch_size=4, device=torch.device("cpu"), dtype=torch.float32,
                model_alias="sender")


@pytest.mark.parametrize("max_tokens, bound", [(64, None), (2048, 512)])  # 512: the tiny sender's positions
def test_a_row_longer_than_max_tokens_is_cut_and_counted(tiny_models, sst2_like_task, tmp_path, max_tokens, bound):
    from conftest import write_jsonl
    rows = [{"text": "a great film", "label": 0}, {"text": "the jokes fall flat " * 2500, "label": 1}]
    write_jsonl(tmp_path / "m/toy/validation.jsonl", rows)
    split = tmp_path / "validation.jsonl"
    materialize_split("toy", sst2_like_task, tmp_path / "m", "eval", split)
    out = extract(tiny_models["sender"], split, tmp_path / "v.zarr", sender_prompt="Review: {text}", layers=[1],
                  storage_dtype="bfloat16", batch_size=2, device=torch.device("cpu"), dtype=torch.float32,
                  max_tokens=max_tokens)
    store = ActivationStore(out)
    assert store.manifest["truncated_rows"] == 1 and store.manifest["max_tokens"] == max_tokens
    lengths = {int(store.example_index[r]): len(store.row_tokens(r)) for r in range(len(store))}
    tokenizer = zoo.load_tokenizer(tiny_models["sender"])
    assert lengths[0] == len(tokenizer("Review: a great film")["input_ids"])     # short rows are untouched
    bound = bound or max_tokens + len(tokenizer("Review: ")["input_ids"])            # the text, in its prompt
    assert bound - 8 < lengths[1] <= bound                                           # cut to the budget
    fp = extraction_fingerprint("m", "t", "{text}", [1], "bfloat16", "float32", max_tokens=2048)
    assert extraction_fingerprint("m", "t", "{text}", [1], "bfloat16", "float32", max_tokens=64) != fp


def test_a_row_limit_stores_the_first_rows_and_is_part_of_the_request(tiny_models, sst2_like_task, toy_mirror,
                                                                      tmp_path):
    """Study 3 reads fewer training rows than the split holds: the store keeps the first `limit` rows (their
    positions in the split), and a store of another limit is not taken for it."""
    split = _split(tmp_path, sst2_like_task, toy_mirror)
    kwargs = dict(sender_prompt="Review: {text}", storage_dtype="float32", batch_size=4, layers=[1],
                  device=torch.device("cpu"), dtype=torch.float32)
    full = ActivationStore(extract(tiny_models["sender"], split, tmp_path / "full.zarr", **kwargs))
    out = extract(tiny_models["sender"], split, tmp_path / "s.zarr", limit=3, **kwargs)
    store = ActivationStore(out)
    assert len(store) == 3 and sorted(int(i) for i in store.example_index) == [0, 1, 2]
    assert store.manifest["row_limit"] == 3 and store.manifest["fingerprint"] != full.manifest["fingerprint"]
    extract(tiny_models["sender"], split, out, limit=5, **kwargs)              # another limit: re-extracted
    assert len(ActivationStore(out)) == 5
