"""The channel (channels/kv/transfer.py): a source's cache as the target's, position by position or pooled
across tokenizers."""
from __future__ import annotations

import pytest
import torch

from interlingua.channels.kv.cache import kv_of
from interlingua.channels.kv.transfer import Endpoint, position_free, translate_block, translate_pooled
from interlingua.channels.kv.translators import CacheShape, LinearConfig, build_translator
from interlingua.errors import ConfigError
from interlingua.tiny import TINY_LLAMA, build_random_model, build_tokenizer

ROWS = [[1, 5, 6, 7, 8], [1, 9, 10]]   # ragged: the second row's body is left-padded in the block


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_random_model(TINY_LLAMA, build_tokenizer("bytes")).eval()


def test_one_to_one_pooling_is_the_plain_translation_row_by_row(model):
    """Pooling each target position on the one source position of the same characters reproduces the
    position-by-position channel, ragged rows included (their bodies are left-padded in the block)."""
    end = Endpoint.of(model, 1)
    shape = CacheShape.from_hf_config(model.config)
    space = build_translator("linear", LinearConfig(shared_dim=32), {"a": shape, "b": shape})
    block = kv_of(model, ROWS)
    width = max(len(r) for r in ROWS) - 1
    pooling = torch.zeros(len(ROWS), width, width)
    mask = torch.zeros(len(ROWS), width, dtype=torch.bool)
    for b, row in enumerate(ROWS):
        n = len(row) - 1
        pooling[b, :n, :n] = torch.eye(n)
        mask[b, :n] = True
    with torch.no_grad():
        pooled = translate_pooled(space, "a", "b", block, end, end, pooling, mask)
        for b, row in enumerate(ROWS):
            plain = translate_block(space, "a", "b", kv_of(model, [row]), end, end)
            mine = pooled.rows([b])
            assert torch.equal(mine.positions, plain.positions) and torch.equal(mine.mask, plain.mask)
            for got, want in zip(mine.keys + mine.values, plain.keys + plain.values):
                torch.testing.assert_close(got, want)


def test_a_target_position_reads_the_mean_of_its_source_positions(model):
    end = Endpoint.of(model, 1)
    shape = CacheShape.from_hf_config(model.config)
    space = build_translator("linear", LinearConfig(shared_dim=32), {"a": shape, "b": shape})
    block = kv_of(model, ROWS[:1])                                    # body: 4 source positions
    pooling = torch.tensor([[[0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5]]])    # 2 target positions, 2 sources each
    with torch.no_grad():
        out = translate_pooled(space, "a", "b", block, end, end, pooling, torch.ones(1, 2, dtype=torch.bool))
        z = space.encode("a", position_free(block.slice(1), end))          # (1, 4, Q)
        want = space.decode("b", pooling @ z)
    assert out.length == 3 and out.positions.tolist() == [[0, 1, 2]]   # own sink, then target positions 1..2
    for got, value in zip(out.values, want.values):
        torch.testing.assert_close(got[:, :, 1:], value)


def test_pooling_needs_a_shared_space(model):
    end = Endpoint.of(model, 1)

    class Direct:   # a translator without a shared space (e.g. ridge's direct maps)
        def translate(self, *args):
            raise AssertionError("never called")

    with pytest.raises(ConfigError, match="shared space"):
        translate_pooled(Direct(), "a", "b", kv_of(model, ROWS[:1]), end, end, torch.ones(1, 1, 4),
                         torch.ones(1, 1, dtype=torch.bool))
