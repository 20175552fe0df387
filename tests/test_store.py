import numpy as np
import pytest
import torch

from interlingua.errors import DataError
from interlingua.store import (ActivationStore, StoreWriter, export_hdf5, from_storage, import_hdf5, read_manifest,
                               summary, to_storage, verify, writer_lock)


def write_store(path, lengths, d=8, layers=(1, 3), dtype="bfloat16", shard_tokens=64, chunk_tokens=16, stop_after=None):
    arrays = {"token_ids": ((), "int32"), **{f"hidden/layer_{l}": ((d,), dtype) for l in layers}}
    writer = StoreWriter(path, key="test", lengths=lengths, labels=[i % 3 for i in range(len(lengths))],
                         example_index=[100 + i for i in range(len(lengths))], arrays=arrays,
                         shard_tokens=shard_tokens, chunk_tokens=chunk_tokens)
    generator = torch.Generator().manual_seed(0)
    rows = []
    for i, length in enumerate(lengths):
        values = {"token_ids": np.arange(length, dtype=np.int32) + i,
                  **{f"hidden/layer_{l}": torch.randn(length, d, generator=generator) * 10 ** (i % 4) for l in layers}}
        rows.append(values)
        if i >= writer.first_row_to_compute:
            writer.add(i, values)
        if stop_after is not None and i == stop_after:
            return rows  # as if killed here: only whole flushed shards are durable
    writer.finish({"layers": list(layers), "hidden_size": d, "fingerprint": "test", "model": "m", "task": "t",
                   "split": "s", "storage_dtype": dtype})
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
    for r, values in enumerate(rows):
        assert store.row_tokens(r).tolist() == values["token_ids"].tolist()
        for layer in (1, 3):
            got = store.row_hidden(r, layer)
            assert got.dtype == getattr(torch, dtype)
            assert torch.equal(got, values[f"hidden/layer_{layer}"].to(getattr(torch, dtype)))


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
    info = summary(tmp_path / "s.zarr")
    assert info["files"] <= 24  # 6 arrays: metadata + 2 shards each; not one file per chunk


def test_interrupted_write_resumes_to_an_identical_store(tmp_path):
    lengths = [7, 30, 12, 50, 3, 41, 22, 9, 60, 5]
    write_store(tmp_path / "full.zarr", lengths)
    write_store(tmp_path / "resumed.zarr", lengths, stop_after=6)           # killed mid-way
    assert not (tmp_path / "resumed.zarr").exists()                            # never visible half-written
    with pytest.raises(DataError, match="interrupted write"):
        read_manifest(tmp_path / "resumed.zarr")
    write_store(tmp_path / "resumed.zarr", lengths)                            # the rerun
    full, resumed = ActivationStore(tmp_path / "full.zarr"), ActivationStore(tmp_path / "resumed.zarr")
    for key in ("token_ids", "hidden/layer_1", "hidden/layer_3", "offsets", "labels", "example_index"):
        assert np.array_equal(full.group[key][:], resumed.group[key][:]), key
    assert full.manifest["checksums"] == resumed.manifest["checksums"]


def test_flipped_byte_and_truncation_are_detected(tmp_path):
    write_store(tmp_path / "s.zarr", [40, 40, 40])
    assert verify(tmp_path / "s.zarr") == []
    shard = next((tmp_path / "s.zarr/hidden/layer_3/c").rglob("*"))
    while shard.is_dir():
        shard = next(shard.iterdir())
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    problems = verify(tmp_path / "s.zarr")
    assert len(problems) == 1 and "array 'hidden/layer_3'" in problems[0] and "checksum" in problems[0]
    with pytest.raises(DataError, match="fails its integrity check.*hidden/layer_3"):
        ActivationStore(tmp_path / "s.zarr")
    offsets = next((tmp_path / "s.zarr/token_ids/c").iterdir())
    offsets.write_bytes(offsets.read_bytes()[:-3])
    assert any("array 'token_ids'" in p for p in verify(tmp_path / "s.zarr"))


def test_hdf5_round_trip_is_exact(tmp_path):
    write_store(tmp_path / "s.zarr", [3, 17, 40, 9])
    export_hdf5(tmp_path / "s.zarr", tmp_path / "s.h5")
    import_hdf5(tmp_path / "s.h5", tmp_path / "back.zarr")
    original, back = ActivationStore(tmp_path / "s.zarr"), ActivationStore(tmp_path / "back.zarr")
    for key in ("token_ids", "hidden/layer_1", "hidden/layer_3", "offsets", "labels", "example_index"):
        assert np.array_equal(original.group[key][:], back.group[key][:]), key
        assert original.group[key].dtype == back.group[key].dtype
    strip = lambda m: {k: v for k, v in m.items() if k != "checksums"}
    assert strip(original.manifest) == strip(back.manifest)
    assert torch.equal(original.row_hidden(2, 3), back.row_hidden(2, 3))


def test_one_writer_per_store(tmp_path):
    with writer_lock(tmp_path / "s.zarr"):
        with pytest.raises(DataError, match="being written by another process"):
            with writer_lock(tmp_path / "s.zarr"):
                pass


def test_missing_layer_is_a_clear_error(tmp_path):
    write_store(tmp_path / "s.zarr", [3])
    with pytest.raises(DataError, match="layer 7 not stored"):
        ActivationStore(tmp_path / "s.zarr").row_hidden(0, 7)


def test_chunk_cache_returns_the_same_rows_and_respects_its_budget(tmp_path):
    rows = write_store(tmp_path / "s.zarr", [7, 30, 12, 50, 3, 41, 22, 9, 60, 5], chunk_tokens=16)
    store = ActivationStore(tmp_path / "s.zarr", cache_bytes=3 * 16 * 8 * 2)  # three decoded chunks
    for _ in range(2):
        for r in (9, 0, 3, 8, 3, 1):
            assert torch.equal(store.row_hidden(r, 1), rows[r]["hidden/layer_1"].to(torch.bfloat16))
    assert store._cached <= 3 * 16 * 8 * 2 or len(store._chunks) == 1
