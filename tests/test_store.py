from pathlib import Path

import numpy as np
import pytest
import torch

from interlingua.errors import DataError
from interlingua.store import ActivationStore, StoreWriter, from_storage, read_manifest, to_storage


def write_store(path, lengths, d=8, layers=(1, 3), dtype="bfloat16", shard_tokens=64, chunk_tokens=16):
    writer = StoreWriter(path, d, list(layers), dtype, shard_tokens=shard_tokens, chunk_tokens=chunk_tokens)
    rows = []
    for i, length in enumerate(lengths):
        hidden = {l: torch.randn(length, d) * 10 ** (i % 4) for l in layers}
        ids = np.arange(length) + i
        writer.add(ids, hidden, label=i % 3, example_index=100 + i)
        rows.append((ids, hidden))
    writer.finish({"layers": list(layers), "hidden_size": d, "fingerprint": "test"})
    return rows


def test_bf16_round_trip_is_bit_exact():
    x = torch.randn(5, 7).to(torch.bfloat16)
    back = from_storage(to_storage(x, "bfloat16"), "bfloat16")
    assert back.dtype == torch.bfloat16
    assert torch.equal(back.view(torch.int16), x.view(torch.int16))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_ragged_rows_round_trip_across_shards(tmp_path, dtype):
    lengths = [3, 17, 1, 40, 9, 64, 2, 30]  # 166 tokens: several 64-token shards plus a remainder
    rows = write_store(tmp_path / "s.zarr", lengths, dtype=dtype)
    store = ActivationStore(tmp_path / "s.zarr")
    assert len(store) == len(lengths)
    assert store.offsets.tolist() == np.concatenate([[0], np.cumsum(lengths)]).tolist()
    assert store.example_index.tolist() == [100 + i for i in range(len(lengths))]
    assert store.manifest["arrays"]["hidden/layer_3"]["logical_dtype"] == dtype
    for r, (ids, hidden) in enumerate(rows):
        assert store.row_tokens(r).tolist() == ids.tolist()
        for layer in (1, 3):
            got = store.row_hidden(r, layer)
            assert got.dtype == getattr(torch, dtype)
            assert torch.equal(got, hidden[layer].to(getattr(torch, dtype)))


def test_padded_batch_and_mask(tmp_path):
    write_store(tmp_path / "s.zarr", [3, 5, 2])
    store = ActivationStore(tmp_path / "s.zarr")
    states, mask, labels = store.batch([2, 0], layer=1)
    assert states.shape == (2, 3, 8) and states.dtype == torch.float32
    assert mask.tolist() == [[True, True, False], [True, True, True]]
    assert labels.tolist() == [2, 0]
    assert torch.equal(states[0, 2], torch.zeros(8))


def test_store_is_a_handful_of_files(tmp_path):
    write_store(tmp_path / "s.zarr", [50] * 40, shard_tokens=1024, chunk_tokens=64)  # 2,000 tokens
    files = [p for p in (tmp_path / "s.zarr").rglob("*") if p.is_file()]
    assert len(files) <= 16, files


def test_incomplete_store_is_not_readable(tmp_path):
    writer = StoreWriter(tmp_path / "s.zarr", 4, [1], shard_tokens=64, chunk_tokens=16)
    writer.add(np.arange(3), {1: torch.randn(3, 4)}, 0, 0)
    assert not (tmp_path / "s.zarr").exists()  # only the .partial exists until finish()
    with pytest.raises(DataError, match="interrupted write"):
        read_manifest(tmp_path / "s.zarr")


def test_missing_layer_is_a_clear_error(tmp_path):
    write_store(tmp_path / "s.zarr", [3])
    with pytest.raises(DataError, match="layer 7 not stored"):
        ActivationStore(tmp_path / "s.zarr").row_hidden(0, 7)
