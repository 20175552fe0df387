"""The alignment figure's example on the two real tokenizers: what it shows is what the transfer reads."""
import pandas as pd

from interlingua.channels.kv.dense import aligned_positions
from interlingua.channels.kv.tokens import char_spans
from interlingua.studies.dense_kv import alignment

STRINGS = ["Review: a film", "Review: it's a well-made, self-conscious thriller that doesn't quite cohere."]


def test_picks_an_example_where_the_tokenizations_disagree_both_ways(real_tokenizers):
    s_tok, r_tok = real_tokenizers["smollm2"], real_tokenizers["gemma3"]
    index, frame = alignment.pick(STRINGS, s_tok, r_tok)
    many, shared = alignment.disagreement(frame)
    assert index == 1 and many > 0 and shared > 0
    assert alignment.disagreement(alignment.alignment_rows(STRINGS[0], s_tok, r_tok)) != (many, shared)


def test_rows_are_the_transfer_pooling(real_tokenizers):
    """Each receiver position's sender positions are those its pooling weights read (position 0 reads none)."""
    s_tok, r_tok = real_tokenizers["smollm2"], real_tokenizers["gemma3"]
    frame = alignment.alignment_rows(STRINGS[1], s_tok, r_tok)
    r_ids, r_spans = char_spans(r_tok, STRINGS[1])
    _, s_spans = char_spans(s_tok, STRINGS[1])
    weights, positions = aligned_positions(r_spans, s_spans)
    assert len(frame) == len(r_ids) and frame._read[0] == []
    read = {int(p): [int(s) for s in w.nonzero().flatten()] for p, w in zip(positions, weights)}
    assert {r: frame._read[r] for r in range(len(frame)) if frame._read[r]} == read
    assert " + " in " ".join(frame["sender tokens"])   # a receiver token reading several sender tokens, listed


def test_figure_and_table_written(real_tokenizers, tmp_path):
    _, frame = alignment.pick(STRINGS, real_tokenizers["smollm2"], real_tokenizers["gemma3"])
    paths = alignment.figure(frame, tmp_path / "fig_alignment", "example", ("smollm2", "gemma3"))
    assert all(p.stat().st_size > 0 for p in paths)
    table = (tmp_path / "fig_alignment.md").read_text()
    assert all(str(t) in table for t in pd.Series(frame["receiver token"]).head(5))
