"""The dense cross-model cache transformation (channels/kv/dense.py) on tiny models."""
from __future__ import annotations

import pytest
import torch

from interlingua.channels.kv.cache import KVBlock, kv_of
from interlingua.channels.kv.dense import (DenseConfig, DenseTransform, Phase1, aligned_positions, layer_windows,
                                          pool, position_free, transfer)
from interlingua.channels.kv.tokens import char_spans
from interlingua.channels.kv.transfer import Endpoint
from interlingua.channels.kv.translators import CacheShape
from interlingua.errors import ConfigError
from interlingua.receiver import Prompt, Receiver
from interlingua.tiny import TINY_GEMMA3, TINY_LLAMA, build_random_model, build_tokenizer

torch.set_num_threads(1)

TEXTS = ["Review: a great and moving film", "Review: dull , boring and bad", "Review: wonderful acting",
         "Review: an awful mess", "Review: clever story and charming", "Review: the jokes fall flat",
         "Review: heartfelt comedy", "Review: badly written picture", "Review: a charming story",
         "Review: the plot is dull", "Review: funny and heartfelt", "Review: a mess of a picture"]
LABELS = [1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0]


def test_layer_windows_stay_inside_the_sender():
    assert layer_windows(30, 18, 3)[0] == [0, 1, 2] and layer_windows(30, 18, 3)[-1] == [27, 28, 29]
    assert layer_windows(4, 4, 1) == [[0], [1], [2], [3]]
    assert layer_windows(2, 3, 3) == [[0, 1]] * 3
    with pytest.raises(ConfigError, match="odd"):
        DenseConfig(layer_window=2)


def rows_of(model, tokenizer, texts, add_bos: bool):
    """Each text's ids and character spans (a <bos> with an empty span first if `add_bos`)."""
    out = []
    for text in texts:
        ids, spans = char_spans(tokenizer, text, add_special_tokens=False)
        if add_bos:
            ids, spans = [tokenizer.bos_token_id] + ids, [(0, 0)] + spans
        out.append((ids, spans))
    return out


def sender_block(model, rows) -> KVBlock:
    with torch.no_grad():
        return kv_of(model, [ids for ids, _ in rows])


def alignments(receiver_rows, sender_rows):
    pairs = [aligned_positions(r_spans, s_spans) for (_, r_spans), (_, s_spans) in zip(receiver_rows, sender_rows)]
    return [w for w, _ in pairs], [p for _, p in pairs]


@pytest.mark.parametrize("architecture,add_bos", [(TINY_GEMMA3, True), (TINY_LLAMA, False)], ids=["gemma3", "llama"])
def test_identity_transformation_on_one_model_gives_its_own_cache_and_logits(architecture, add_bos):
    tokenizer = build_tokenizer("bpe")
    model = build_random_model(architecture, tokenizer).eval()
    rows = rows_of(model, tokenizer, TEXTS[:3], add_bos)
    own = sender_block(model, rows)
    end = Endpoint.of(model, rows[0][0][0])   # the first token is the same in every row (<bos> or "Review")
    transform = DenseTransform(CacheShape.of(own), CacheShape.of(own), DenseConfig(layer_window=3)).set_identity()
    weights, positions = alignments(rows, rows)
    with torch.no_grad():
        moved = transfer(transform, own, weights, positions, end, end)
    torch.testing.assert_close(moved.mask, own.mask)
    for got, want in zip(moved.keys + moved.values, own.keys + own.values):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    receiver = Receiver(model, tokenizer, [" negative", " positive"])
    tail = receiver.ids_embeds(tokenizer("\nSentiment:", add_special_tokens=False)["input_ids"])
    prompt = lambda block: Prompt(tail.expand(3, -1, -1), torch.ones(3, tail.shape[0], dtype=torch.long), block)
    with torch.no_grad():
        torch.testing.assert_close(receiver.class_scores(prompt(moved)), receiver.class_scores(prompt(own)),
                                   atol=1e-4, rtol=1e-4)


def test_two_phases_on_a_tiny_pair_of_different_vocabularies():
    """Phase 1 reconstructs the receiver's cache better than a zero cache; phase 2 then lowers the answer
    loss below phase 1 alone."""
    s_tok, r_tok = build_tokenizer("bytes"), build_tokenizer("bpe")
    sender = build_random_model(TINY_LLAMA, s_tok, seed=1).eval().requires_grad_(False)
    receiver_model = build_random_model(TINY_GEMMA3, r_tok, seed=2).eval().requires_grad_(False)
    s_rows, r_rows = rows_of(sender, s_tok, TEXTS, False), rows_of(receiver_model, r_tok, TEXTS, True)
    assert [len(i) for i, _ in s_rows] != [len(i) for i, _ in r_rows]           # the tokenizers differ
    s_end, r_end = Endpoint.of(sender, s_rows[0][0][0]), Endpoint.of(receiver_model, r_tok.bos_token_id)
    block, own = sender_block(sender, s_rows), sender_block(receiver_model, r_rows)
    weights, positions = alignments(r_rows, s_rows)
    transform = DenseTransform(CacheShape.of(block), CacheShape.of(own), DenseConfig(layer_window=3, ridge_lambda=0.1))

    # phase 1 on the first 8 rows: pooled sender features vs the receiver's own cache at those positions
    def pairs(index):
        src = block.rows(index)
        aligned = pool(KVBlock(*position_free(src, s_end), src.mask, src.positions),
                       [weights[i] for i in index], [positions[i] for i in index])
        mine = own.rows(index).at([positions[i] for i in index])
        assert torch.equal(mine.positions, aligned.positions)
        return aligned, KVBlock(*position_free(mine, r_end), mine.mask, mine.positions)

    phase1 = Phase1(transform)
    src, tgt = pairs(list(range(8)))
    phase1.add((src.keys, src.values), (tgt.keys, tgt.values), src.mask)
    phase1.fit()
    src, tgt = pairs(list(range(8, 12)))                                       # held-out rows
    keys, values = transform(src.keys, src.values)
    mask = src.mask[:, None, :, None].bool()
    error = sum(((a - b)[mask.expand_as(a)] ** 2).sum() for a, b in zip(keys + values, tgt.keys + tgt.values))
    zero = sum((b[mask.expand_as(b)] ** 2).sum() for b in tgt.keys + tgt.values)
    assert error < 0.5 * zero

    # phase 2: the receiver's loss on the answer, through the transferred cache
    receiver = Receiver(receiver_model, r_tok, [" negative", " positive"])
    tail = receiver.ids_embeds(r_tok("\nSentiment:", add_special_tokens=False)["input_ids"])
    labels = torch.tensor(LABELS[:8])

    def loss():
        moved = transfer(transform, block.rows(list(range(8))), weights[:8], positions[:8], s_end, r_end)
        prompt = Prompt(tail.expand(8, -1, -1), torch.ones(8, tail.shape[0], dtype=torch.long), moved)
        return receiver.label_loss(prompt, labels)

    with torch.no_grad():
        after_phase1 = float(loss())
    optimizer = torch.optim.Adam(transform.parameters(), lr=1e-3)
    for _ in range(30):
        optimizer.zero_grad()
        value = loss()
        value.backward()
        optimizer.step()
    with torch.no_grad():
        assert float(loss()) < after_phase1 - 0.05
