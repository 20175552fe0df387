"""KVBlock: the model's own cache per row, from a store or a run, sliced, joined and handed back to the model."""
import pytest
import torch
from transformers import DynamicCache

from interlingua import zoo
from interlingua.channels.kv.cache import KVBlock, concat, kv_of
from interlingua.errors import DataError
from interlingua.runtime import cache_kwarg
from interlingua.tiny import TINY_GEMMA3, TINY_LLAMA, build_random_model, build_tokenizer

LENGTHS = [21, 4, 13]  # ragged, one row longer than Gemma-3's 16-token window


@pytest.fixture(scope="module", params=["llama", "gemma3"])
def model(request):
    tokenizer = build_tokenizer("bytes")
    return build_random_model(TINY_LLAMA if request.param == "llama" else TINY_GEMMA3, tokenizer).eval()


def rows_of(lengths, seed=0, vocab=200):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(4, vocab, (n,), generator=generator).tolist() for n in lengths]


def own_cache(model, ids):
    """One row alone, no padding: per layer (keys, values) (1, H, T, D)."""
    cache = DynamicCache()
    with torch.no_grad():
        model.model(input_ids=torch.tensor([ids]), use_cache=True, **{cache_kwarg(model.model): cache})
    return [(layer.keys, layer.values) for layer in cache.layers]


def test_kv_of_is_each_rows_own_cache_left_padded(model):
    ids = rows_of(LENGTHS)
    with torch.no_grad():
        block = kv_of(model, ids)
    assert (block.batch, block.length, block.num_layers) == (3, 21, model.config.num_hidden_layers)
    assert block.lengths.tolist() == LENGTHS
    for row, tokens in enumerate(ids):
        n, pad = len(tokens), block.length - len(tokens)
        assert block.mask[row].tolist() == [0] * pad + [1] * n
        assert block.positions[row].tolist() == [0] * pad + list(range(n))
        for layer, (keys, values) in enumerate(own_cache(model, tokens)):
            torch.testing.assert_close(block.keys[layer][row, :, pad:], keys[0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(block.values[layer][row, :, pad:], values[0], atol=1e-5, rtol=1e-5)
            assert block.keys[layer][row, :, :pad].eq(0).all() and block.values[layer][row, :, :pad].eq(0).all()


def test_slice_and_concat_rebuild_the_cache_around_the_attention_sink(model):
    ids = [[1] + row[1:] for row in rows_of(LENGTHS, seed=1)]   # every row starts with the same token (<bos>)
    with torch.no_grad():
        block = kv_of(model, ids)
        sink = kv_of(model, [[1]])                 # position 0 alone: context-free, the same for every row
    rest = block.slice(1)
    assert rest.lengths.tolist() == [n - 1 for n in LENGTHS] and rest.length == 20
    assert rest.positions[1].tolist() == [0] * 17 + [1, 2, 3]
    head = block.slice(0, 5)
    assert head.lengths.tolist() == [5, 4, 5] and head.positions[0].tolist() == [0, 1, 2, 3, 4]
    assert torch.equal(head.keys[0][0], block.keys[0][0, :, :5])                 # row 0 fills the block: no padding
    assert torch.equal(head.keys[0][1, :, 1:], block.keys[0][1, :, -4:])          # row 1 (4 entries) is kept whole
    joined = concat(sink, rest)                    # the batch-1 sink is repeated for every row
    assert torch.equal(joined.mask, block.mask) and torch.equal(joined.positions, block.positions)
    for keys, expected in zip(joined.keys + joined.values, block.keys + block.values):
        torch.testing.assert_close(keys, expected, atol=1e-5, rtol=1e-5)
    shuffled = block.rows([2, 0, 1])
    assert shuffled.lengths.tolist() == [13, 21, 4]
    torch.testing.assert_close(shuffled.keys[1][1], block.keys[1][0])


def test_gradients_flow_through_slice_concat_and_rows():
    keys = torch.randn(2, 1, 4, 3, requires_grad=True)
    values = torch.randn(2, 1, 4, 3, requires_grad=True)
    mask = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 1]])
    positions = torch.tensor([[0, 0, 1, 2], [0, 0, 0, 1]])
    block = KVBlock([keys], [values], mask, positions)
    out = concat(block.slice(1), block.slice(0, 1)).rows([1, 0])
    assert out.lengths.tolist() == [2, 3] and out.positions.tolist() == [[0, 1, 0], [1, 2, 0]]
    (out.keys[0].sum() + 2 * out.values[0].sum()).backward()
    expected = mask[:, None, :, None].float().expand_as(keys)   # each real entry used once, padding never
    assert torch.equal(keys.grad, expected) and torch.equal(values.grad, 2 * expected)


def test_to_cache_keeps_every_position_and_continues_like_the_model(model):
    ids = rows_of(LENGTHS, seed=2)
    nxt = [7, 9, 11]
    with torch.no_grad():
        cache, mask = kv_of(model, ids).to_cache()
        assert cache.get_seq_length() == 21 and len(cache.layers) == model.config.num_hidden_layers
        assert all(type(layer).__name__ == "DynamicLayer" for layer in cache.layers)  # nothing trimmed to a window
        positions = torch.tensor([[len(row)] for row in ids])
        logits = model(input_ids=torch.tensor(nxt)[:, None], attention_mask=torch.cat([mask, torch.ones(3, 1).long()], 1),
                       position_ids=positions, use_cache=True, **{cache_kwarg(model): cache}).logits[:, -1]
        for row, (tokens, token) in enumerate(zip(ids, nxt)):
            reference = model(input_ids=torch.tensor([tokens + [token]])).logits[0, -1]
            torch.testing.assert_close(logits[row], reference, atol=1e-4, rtol=1e-4)


def test_from_store_reads_the_extracted_cache(tiny_models, sst2_like_task, toy_mirror, tmp_path):
    from interlingua.extract import extract
    from interlingua.store import ActivationStore
    from interlingua.tasks import materialize_split

    split = tmp_path / "validation.jsonl"
    materialize_split("toy", sst2_like_task, toy_mirror, "eval", split)
    out = extract(tiny_models["receiver"], split, tmp_path / "kv.zarr", sender_prompt="A review: {text}. Done.",
                  layers=[1], storage_dtype="float32", kv_cache=True, batch_size=4, device=torch.device("cpu"),
                  dtype=torch.float32, shard_tokens=128, chunk_tokens=32)
    store = ActivationStore(out)
    assert [layer["type"] for layer in store.manifest["kv"]["rotary"]["layers"]] == store.manifest["kv"]["layer_types"]
    rows = [0, 3, 5]
    block = KVBlock.from_store(store, rows)
    model = zoo.load_model(tiny_models["receiver"], torch.device("cpu"), torch.float32)
    with torch.no_grad():
        expected = kv_of(model, [store.row_tokens(r).tolist() for r in rows])
    assert torch.equal(block.mask, expected.mask) and torch.equal(block.positions, expected.positions)
    for keys, reference in zip(block.keys + block.values, expected.keys + expected.values):
        torch.testing.assert_close(keys, reference, atol=1e-5, rtol=1e-5)


def test_bad_blocks_are_refused():
    keys = torch.zeros(2, 1, 3, 4)
    mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    with pytest.raises(DataError, match="layer 0"):
        KVBlock([keys], [torch.zeros(2, 1, 2, 4)], mask, mask)
    with pytest.raises(DataError, match="left-padded"):
        KVBlock([keys], [keys], torch.tensor([[1, 1, 0], [1, 1, 1]]), mask)
    with pytest.raises(DataError, match="batch, layers"):
        concat(KVBlock([keys], [keys], mask, mask), KVBlock([keys] * 2, [keys] * 2, mask, mask))
    with pytest.raises(DataError, match="empty row"):
        kv_of(None, [[1, 2], []])
