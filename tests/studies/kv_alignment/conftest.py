"""Tiny pool corpora for study 2's tests: a datasets mirror with TinyStories- and WikiText-shaped files."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from interlingua.studies.kv_alignment.corpus import CorpusConfig, prepare_corpus
from interlingua.tiny import build_tokenizer

from .mirror import write_mirror


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run fastest on one thread, and the machine is shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tokenizer("bpe")


@pytest.fixture(scope="session")
def tiny_mirror(tmp_path_factory) -> Path:
    return write_mirror(tmp_path_factory.mktemp("mirror"))


@pytest.fixture(scope="session")
def tiny_corpus(tiny_mirror, tiny_tokenizer, tmp_path_factory) -> Path:
    """A prepared pool corpus over the tiny mirror: 64-id pool vocabulary, 20% held out."""
    return prepare_corpus(tiny_mirror, tiny_tokenizer, tmp_path_factory.mktemp("corpus") / "pool",
                          CorpusConfig(vocab_size=64, held_out_fraction=0.2))
