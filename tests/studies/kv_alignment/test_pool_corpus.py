"""Pool corpus: reading, split, pool vocabulary, unigram NLL, windows (tiny tokenizer, tiny text)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from interlingua.errors import ConfigError, DataError
from interlingua.studies.kv_alignment.corpus import (CorpusConfig, PoolVocab, build_vocab, heldout_windows,
                                                     load_corpus, prepare_corpus, read_documents,
                                                     sample_windows, split_documents, unigram_nll)


def test_build_vocab_ranks_by_frequency_keeps_specials_and_maps_the_rest_to_oov():
    ids = np.array([5, 5, 5, 7, 7, 3, 9, 9, 9, 9, 2])
    vocab = build_vocab(ids, size=4, source_size=12, keep=(1,))
    # pool ids: kept id 1 first, then 9 (x4), 5 (x3); OOV = 3
    assert vocab.size == 4 and vocab.oov == 3
    assert vocab.to_source.tolist() == [1, 9, 5, -1]
    assert vocab.encode([1, 9, 5, 7, 3, 0, 11]).tolist() == [0, 1, 2, 3, 3, 3, 3]
    kept = np.array([1, 9, 5])
    assert vocab.decode(vocab.encode(kept)).tolist() == kept.tolist()        # round trip for kept ids
    assert vocab.decode(np.array([vocab.oov])).tolist() == [-1]
    t = torch.tensor([[9, 7], [1, 5]])
    assert torch.equal(vocab.decode(vocab.encode(t)), torch.tensor([[9, -1], [1, 5]]))


def test_build_vocab_breaks_ties_by_smaller_id_and_rejects_bad_sizes():
    vocab = build_vocab(np.array([4, 2, 4, 2, 6]), size=3, source_size=8)
    assert vocab.to_source.tolist() == [2, 4, -1]
    with pytest.raises(ConfigError, match="vocab_size=9"):
        build_vocab(np.array([1, 2]), size=9, source_size=8)
    with pytest.raises(DataError, match=r"\[0, 8\)"):
        build_vocab(np.array([1, 8]), size=3, source_size=8)


def test_vocab_save_load_round_trip(tmp_path):
    vocab = build_vocab(np.arange(50) % 7, size=5, source_size=50, keep=(40,))
    vocab.save(tmp_path / "v.npy")
    loaded = PoolVocab.load(tmp_path / "v.npy")
    assert np.array_equal(loaded.to_pool, vocab.to_pool) and np.array_equal(loaded.to_source, vocab.to_source)
    assert loaded.digest == vocab.digest


def test_unigram_nll_matches_a_hand_computation():
    # counts over V=4: [2, 1, 0, 0], N=3 -> add-one p = [3/7, 2/7, 1/7, 1/7]
    nll = unigram_nll([0, 0, 1], [0, 2, 1], vocab_size=4)
    assert nll == pytest.approx(-(math.log(3 / 7) + math.log(1 / 7) + math.log(2 / 7)) / 3, abs=1e-12)
    with pytest.raises(DataError, match="vocab_size=2"):
        unigram_nll([0, 3], [0], vocab_size=2)


def test_split_holds_out_the_last_documents():
    train, held = split_documents(list("abcdefghij"), 0.25)
    assert train == list("abcdefg") and held == list("hij")
    with pytest.raises(ConfigError, match="held_out_fraction"):
        split_documents(list("ab"), 1.5)


def test_wikitext_documents_are_articles(tiny_mirror):
    articles = read_documents(tiny_mirror, "wikitext")
    assert len(articles) == 20
    assert all(a.startswith(" = The ") for a in articles)
    assert " = = History = = " in articles[0].split("\n")                  # sections stay inside their article
    with pytest.raises(ConfigError, match="unknown pool corpus 'books'"):
        read_documents(tiny_mirror, "books")


def test_prepare_corpus_writes_streams_split_and_vocab(tiny_corpus, tiny_mirror, tiny_tokenizer):
    manifest = json.loads((tiny_corpus / "corpus.json").read_text())
    assert manifest["corpora"]["tinystories"]["documents"] == {"train": 48, "heldout": 12}
    assert manifest["corpora"]["wikitext"]["documents"] == {"train": 16, "heldout": 4}
    corpus = load_corpus(tiny_corpus)
    bos, sep = tiny_tokenizer.bos_token_id, tiny_tokenizer.eos_token_id
    assert corpus.vocab.size == 64 and corpus.vocab.to_source[corpus.bos] == bos
    # the held-out stream is exactly the last 12 stories, each followed by the separator
    stories = read_documents(tiny_mirror, "tinystories")[-12:]
    expected = np.concatenate([tiny_tokenizer(s, add_special_tokens=False)["input_ids"] + [sep] for s in stories])
    stored = np.load(tiny_corpus / "tinystories.heldout.npy")
    assert np.array_equal(stored, expected)
    assert np.array_equal(corpus.heldout["tinystories"], corpus.vocab.encode(expected))
    # the unigram in the manifest is the add-one unigram of the training stream
    uni = unigram_nll(corpus.train["wikitext"], corpus.heldout["wikitext"], 64)
    assert manifest["corpora"]["wikitext"]["unigram_nll_heldout"] == pytest.approx(uni)
    # a second call with the same request keeps the directory
    mtime = (tiny_corpus / "corpus.json").stat().st_mtime_ns
    prepare_corpus(tiny_mirror, tiny_tokenizer, tiny_corpus, CorpusConfig(vocab_size=64, held_out_fraction=0.2))
    assert (tiny_corpus / "corpus.json").stat().st_mtime_ns == mtime


def test_windows_start_with_bos_and_follow_the_stream():
    stream = np.arange(100, 130)
    windows = heldout_windows(stream, seq_len=8, bos=0, max_tokens=15)      # 2 windows of 7 scored tokens
    assert windows.shape == (2, 8) and windows[:, 0].eq(0).all()
    assert windows[1, 1:].tolist() == list(range(107, 114))
    batch = sample_windows({"a": stream, "b": np.arange(500, 540)}, {"a": 1.0, "b": 0.0}, 8, 5, 0,
                           torch.Generator().manual_seed(0))
    assert batch[:, 0].eq(0).all() and batch[:, 1:].ge(100).all() and batch[:, 1:].lt(130).all()
    assert (batch[:, 2:] - batch[:, 1:-1]).eq(1).all()                       # contiguous stream slices


def test_settings_longer_than_a_file_name_are_read_as_json():
    from interlingua.studies.kv_alignment.corpus import read_settings
    from interlingua.studies.kv_alignment.pretrain import PretrainConfig

    long = {"hidden": 32, "layers": 2, "heads": 2, "kv_heads": 1, "intermediate": 64, "seq_len": 48, "batch": 8,
            "steps": 10, "warmup": 2, "eval_every": 15, "eval_tokens": 512, "checkpoint_every": 10, "snapshots": [],
            "lr": 0.003, "min_lr": 0.0003, "mix": {"wikitext": 1.0}}
    import json
    assert read_settings(json.dumps(long), PretrainConfig) == long  # > 255 characters: no stat() of it
