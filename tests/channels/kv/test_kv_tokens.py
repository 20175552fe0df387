"""Token alignment (channels/kv/tokens.py): on hand-made spans and on the two real tokenizers."""
import pytest
import torch

from interlingua.channels.kv.tokens import align, char_spans, decoded_spans, stretch
from interlingua.errors import DataError

TEXTS = [
    "Review: it's a charming,   often affecting journey. naïve café",
    "Article: Wall St. Bears Claw Back Into the Black (Reuters) -- short-sellers, 1,234.5%\nsee\tmore",
    "Passage: 日本語のテキスト and emoji 🎉🎉 mixed; ''quoted'' — dashes\n\nQuestion: is it?",
]


def test_hand_made_spans_give_monotone_ranges():
    receiver = [(0, 0), (0, 3), (3, 4), (4, 5), (5, 7)]      # <bos> "▁it" "'" "s" "▁a"
    sender = [(0, 3), (3, 5), (5, 7)]                        # "Ġit" "'s" "Ġa"
    alignment = align(receiver, sender)
    assert (alignment.lo, alignment.hi) == ([0, 0, 1, 1, 2], [0, 1, 2, 2, 3])
    assert alignment.kept == [1, 2, 3, 4]
    pooling = alignment.pooling()
    assert pooling.shape == (4, 3) and torch.allclose(pooling.sum(1), torch.ones(4))


def test_a_receiver_token_spanning_several_sender_tokens_pools_them():
    alignment = align([(0, 7)], [(0, 2), (2, 5), (5, 7)])
    assert (alignment.lo, alignment.hi) == ([0], [3])
    assert torch.allclose(alignment.pooling(), torch.full((1, 3), 1 / 3))


def test_skipped_sender_positions_are_read_by_nobody():
    # The sender's position 0 is its attention sink: a receiver token covered only by it is left out.
    alignment = align([(0, 6), (6, 7), (7, 10)], [(0, 6), (6, 7), (7, 10)], skip={0})
    assert alignment.kept == [1, 2]
    assert alignment.pooling()[:, 0].abs().sum() == 0


def test_spans_out_of_order_are_refused():
    with pytest.raises(DataError, match="not monotone"):
        align([(0, 3), (1, 2)], [(0, 3)])


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("receiver,sender", [("gemma3", "smollm2"), ("smollm2", "gemma3")])
def test_real_tokenizers_cover_every_character_monotonically(real_tokenizers, text, receiver, sender):
    r_ids, r_spans = char_spans(real_tokenizers[receiver], text)
    s_ids, s_spans = char_spans(real_tokenizers[sender], text)
    for spans in (r_spans, s_spans):   # every character of the text lies in some token of each tokenizer
        covered = set()
        for a, b in spans:
            covered.update(range(a, b))
        assert covered == set(range(len(text)))
    alignment = align(r_spans, s_spans)
    assert alignment.lo == sorted(alignment.lo) and alignment.hi == sorted(alignment.hi)
    for r, (a, b) in enumerate(r_spans):
        if b > a:   # every real receiver token reads exactly the sender tokens sharing a character with it
            overlapping = [s for s, (c, d) in enumerate(s_spans) if d > c and c < b and d > a]
            assert overlapping == list(range(alignment.lo[r], alignment.hi[r]))
        else:       # special tokens (<bos>) read nothing
            assert alignment.lo[r] == alignment.hi[r]


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("pool,own", [("smollm2", "gemma3"), ("gemma3", "smollm2")])
def test_given_ids_get_spans_of_their_decoded_text(real_tokenizers, text, pool, own):
    """A pool's window is token ids, not text: decoded_spans gives each id its characters of the decoded text
    (monotone, covering it), so another tokenizer's tokens of that text align to the ids."""
    ids = real_tokenizers[pool](text, add_special_tokens=False).input_ids
    decoded, spans = decoded_spans(real_tokenizers[pool], ids)
    assert decoded == real_tokenizers[pool].decode(ids, clean_up_tokenization_spaces=False)
    assert len(spans) == len(ids) and spans[0][0] == 0 and spans[-1][1] == len(decoded)
    assert all(a <= b and b == c for (a, b), (c, _) in zip(spans, spans[1:]))   # contiguous, in order
    for token, (a, b) in zip(ids, spans):
        piece = real_tokenizers[pool].decode([token])
        if "\ufffd" not in piece and b > a:   # a whole-character token: exactly its own text
            assert decoded[a:b] == piece
    _, own_spans = char_spans(real_tokenizers[own], decoded, add_special_tokens=False)
    alignment = align(own_spans, spans)
    assert len(alignment.kept) == sum(b > a for a, b in own_spans)   # every real token reads some id


def test_stretch_lays_another_texts_tokens_over_this_text():
    assert stretch([(0, 2), (2, 4)], 8) == [(0, 4), (4, 8)]
    assert stretch([(0, 0)], 5) == [(0, 0)]
