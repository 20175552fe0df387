"""A model briefly trained further on a corpus (continued.py): study 3's same-tokenizer reference."""
import json

import pytest
import torch

from interlingua import zoo
from interlingua.continued import ContinuedConfig, materialize_continued
from interlingua.errors import ConfigError

ARTICLE = (" = Lobster = \n The lobster is a crustacean of the sea . It walks on the floor of the sea and eats fish . "
           "Lobsters live for many years and grow large claws .")


@pytest.fixture
def mirror(tmp_path):
    root = tmp_path / "mirror" / "wikitext103_v1"
    root.mkdir(parents=True)
    rows = [{"text": line} for i in range(30) for line in ARTICLE.replace("Lobster", f"Lobster {i}").split("\n")]
    for name in ("validation", "test"):
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path / "mirror"


def test_the_copy_moves_towards_the_corpus_and_loads_as_a_zoo_model(tiny_models, mirror, tmp_path):
    spec = {"continued": {"base": "sender", "corpus": "wikitext", "steps": 12, "lr": 3e-3, "batch": 4, "seq_len": 32,
                          "warmup": 1, "held_out": 5, "eval_windows": 8}, "storage_dtype": "float32",
            "files": {"base": "x"}}
    out = materialize_continued("sender_wiki", spec, tiny_models["sender"], mirror, tmp_path / "sender_wiki")
    manifest = zoo.read_manifest(out)
    record = manifest["continued"]
    assert record["held_out_nll_after"] < record["held_out_nll_before"]           # it learned the new text
    assert len(record["curve"]) == 12 and manifest["alias"] == "sender_wiki"
    base, copy = (zoo.load_model(d, torch.device("cpu"), torch.float32) for d in (tiny_models["sender"], out))
    assert base.config.to_dict()["num_hidden_layers"] == copy.config.to_dict()["num_hidden_layers"]
    assert any(not torch.equal(a, b) for a, b in zip(base.parameters(), copy.parameters()))   # other weights
    assert zoo.load_tokenizer(out).get_vocab() == zoo.load_tokenizer(tiny_models["sender"]).get_vocab()  # same tokenizer


def test_bad_settings_name_the_key():
    with pytest.raises(ConfigError, match="needs `base`"):
        ContinuedConfig.from_dict({"corpus": "wikitext"})
    with pytest.raises(ConfigError, match="unknown key"):
        ContinuedConfig.from_dict({"base": "smollm2", "stepz": 3})
