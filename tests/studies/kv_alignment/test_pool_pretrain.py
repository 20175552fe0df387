"""Pool pre-training on a tiny model: learning, exact resume, expert branching, seeds, the member format."""
from __future__ import annotations

import csv
import json
import os
import signal

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from interlingua.errors import ConfigError
from interlingua.studies.kv_alignment.corpus import heldout_windows, load_corpus, unigram_nll
from interlingua.studies.kv_alignment.pretrain import (DEFAULT_POOL, SIZE_KEYS, PretrainConfig, build_model,
                                                       load_member, load_pretrain_config, pool_member, pretrain)

TINY = {"hidden": 32, "layers": 2, "heads": 2, "kv_heads": 1, "intermediate": 64, "seq_len": 32, "batch": 8,
        "steps": 20, "warmup": 2, "lr": 1e-2, "min_lr": 1e-3, "eval_every": 10, "eval_tokens": 248,
        "checkpoint_every": 5}


def _weights(member_dir) -> dict:
    return AutoModelForCausalLM.from_pretrained(member_dir, dtype=torch.float32).state_dict()


def _rows(member_dir) -> list[dict]:
    with open(member_dir / "loss.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def trained(tiny_corpus, tmp_path_factory):
    """The reference run: 20 steps from scratch with a snapshot at step 10."""
    out = tmp_path_factory.mktemp("runs") / "base"
    return pretrain({**TINY, "snapshots": [10]}, tiny_corpus, out, progress=False)


def test_twenty_steps_lower_held_out_nll_and_the_manifest_is_right(trained, tiny_corpus):
    corpus = load_corpus(tiny_corpus)
    manifest = json.loads((trained / "manifest.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(trained)                  # plain Hugging Face load
    initial = build_model(PretrainConfig(**TINY), corpus.vocab.size, 0, 1)
    rows = _rows(trained)
    for name in ("tinystories", "wikitext"):
        windows = heldout_windows(corpus.heldout[name], 32, corpus.bos, 248)   # (n, 32)
        with torch.no_grad():                                                # HF's own shifted loss
            nll = model(input_ids=windows, labels=windows).loss.item()
            nll0 = initial(input_ids=windows, labels=windows).loss.item()
        h = manifest["heldout"][name]
        assert h["nll"] == pytest.approx(nll, abs=1e-4)
        assert float(rows[0][f"heldout_nll_{name}"]) == pytest.approx(nll0, abs=1e-4)   # step 0 = untrained
        assert nll < nll0 - 0.5
        assert h["unigram_nll"] == pytest.approx(unigram_nll(corpus.train[name], windows[:, 1:].numpy(), 64))
        assert h["gap"] == pytest.approx(h["unigram_nll"] - h["nll"]) and h["tokens"] == windows[:, 1:].numel()
    assert manifest["margin"]["met"] == (min(h["gap"] for h in manifest["heldout"].values()) >= 1.0)
    assert manifest["vocab"]["digest"] == corpus.vocab.digest and manifest["steps"] == 20
    assert [int(r["step"]) for r in rows] == list(range(21))
    assert [r["heldout_nll_wikitext"] != "" for r in rows].count(True) == 3       # steps 0, 10, 20
    _, vocab, _ = load_member(trained)
    assert vocab.digest == corpus.vocab.digest
    snapshot = json.loads((trained.with_name("base_step10") / "manifest.json").read_text())
    assert snapshot["steps"] == 10 and snapshot["snapshot_of"] == "base"


def test_resume_after_interruption_equals_the_uninterrupted_run(trained, tiny_corpus, tmp_path):
    out, state_path = tmp_path / "base", tmp_path / ".base.resume" / "state.pt"

    def terminate(step):                        # SIGTERM (Snakemake's kill): the step finishes, then it stops
        if step == 7:
            os.kill(os.getpid(), signal.SIGTERM)

    def interrupt(step):
        if step == 13:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pretrain({**TINY, "snapshots": [10]}, tiny_corpus, out, on_step=terminate, progress=False)
    assert torch.load(state_path, weights_only=False)["step"] == 7
    with pytest.raises(KeyboardInterrupt):
        pretrain({**TINY, "snapshots": [10]}, tiny_corpus, out, on_step=interrupt, progress=False)
    assert torch.load(state_path, weights_only=False)["step"] == 13 and not out.exists()
    assert (tmp_path / ".base.resume" / "snapshot_step10").is_dir() and not (tmp_path / "base_step10").exists()
    pretrain({**TINY, "snapshots": [10]}, tiny_corpus, out, progress=False)
    for reference, resumed in [(trained, out), (trained.with_name("base_step10"), tmp_path / "base_step10")]:
        reference, resumed = _weights(reference), _weights(resumed)
        for key in reference:
            torch.testing.assert_close(resumed[key], reference[key], rtol=0, atol=0, msg=key)
    assert [r["train_loss"] for r in _rows(out)] == [r["train_loss"] for r in _rows(trained)]
    assert not (tmp_path / ".base.resume").exists()


def test_an_expert_starts_from_its_parents_weights(trained, tiny_corpus, tmp_path):
    expert = {**TINY, "mix": {"wikitext": 1.0}, "steps": 4, "warmup": 1, "lr": 0.0, "min_lr": 0.0, "seed": 3}
    out = pretrain(expert, tiny_corpus, tmp_path / "wiki", parent=trained, progress=False)
    parent, child = _weights(trained), _weights(out)
    for key in parent:                                  # lr 0: four AdamW steps leave the parent's weights
        torch.testing.assert_close(child[key], parent[key], rtol=0, atol=0, msg=key)
    manifest = json.loads((out / "manifest.json").read_text())
    parent_manifest = json.loads((trained / "manifest.json").read_text())
    assert manifest["parent"]["name"] == "base" and manifest["lineage"] == {"steps_before": 20, "ancestors": ["base"]}
    assert manifest["total_steps"] == 24 and manifest["corpora_trained_on"] == ["wikitext"]
    assert manifest["heldout"]["wikitext"]["trained_on"] and not manifest["heldout"]["tinystories"]["trained_on"]
    assert float(_rows(out)[0]["heldout_nll_wikitext"]) == pytest.approx(parent_manifest["heldout"]["wikitext"]["nll"])
    with pytest.raises(ConfigError, match="hidden"):
        pretrain({**expert, "hidden": 64, "heads": 2}, tiny_corpus, tmp_path / "bad", parent=trained, progress=False)


def test_seeds_give_different_weights_and_a_seed_repeats(tiny_corpus, tmp_path):
    short = {**TINY, "steps": 3, "eval_every": 3}
    runs = {name: _weights(pretrain({**short, "seed": seed}, tiny_corpus, tmp_path / name, progress=False))
            for name, seed in [("a", 0), ("b", 1), ("c", 0)]}
    key = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.allclose(runs["a"][key], runs["b"][key])
    assert all(torch.equal(runs["a"][k], runs["c"][k]) for k in runs["a"])


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="unknown key.*'hiden'"):
        load_pretrain_config('{"hiden": 3}')
    with pytest.raises(ConfigError, match="kv_heads=3"):
        load_pretrain_config({"heads": 4, "kv_heads": 3})
    with pytest.raises(ConfigError, match="snapshots"):
        load_pretrain_config({"steps": 10, "warmup": 1, "snapshots": [10]})
    (tmp_path / "c.yaml").write_text("hidden: 64\nheads: 4\n")
    assert load_pretrain_config(str(tmp_path / "c.yaml")).hidden == 64
    assert np.isclose(load_pretrain_config("{}").lr, PretrainConfig().lr)


def test_the_default_pool_is_consistent():
    members = {name: pool_member(name) for name in DEFAULT_POOL}
    for name, (config, parent) in members.items():
        if parent is not None:                                     # experts keep their parent's size
            assert all(getattr(config, k) == getattr(members[parent][0], k) for k in SIZE_KEYS), name
            assert members[parent][1] is None
    seeds = [c.seed for n, (c, p) in members.items() if p is None and c.hidden == PretrainConfig().hidden]
    assert sorted(seeds) == [0, 1, 2]
    assert len({(c.hidden, c.layers) for c, _ in members.values()}) == 2
    assert members["small_s0"][0].snapshots == [250]
    with pytest.raises(ConfigError, match="unknown pool member 'tiny'"):
        pool_member("tiny")


def test_cli_builds_a_corpus_and_a_member(tiny_mirror, tiny_tokenizer, tmp_path):
    from interlingua.cli import main

    tiny_tokenizer.save_pretrained(tmp_path / "tok")
    assert main(["pool-corpus", "--model-dir", str(tmp_path / "tok"), "--datasets", str(tiny_mirror),
                 "--out", str(tmp_path / "corpus"), "--config", '{"vocab_size": 64, "held_out_fraction": 0.2}']) == 0
    config = json.dumps({**TINY, "steps": 4, "warmup": 1, "snapshots": [2]})
    assert main(["pool-pretrain", "--threads", "1", "--config", config, "--corpus", str(tmp_path / "corpus"),
                 "--out", str(tmp_path / "m"), "--snapshot", f"2={tmp_path / 'mid'}"]) == 0
    assert json.loads((tmp_path / "mid" / "manifest.json").read_text())["name"] == "mid"
    assert json.loads((tmp_path / "m" / "manifest.json").read_text())["steps"] == 4
    assert main(["pool-pretrain", "--config", config, "--corpus", str(tmp_path / "corpus"),
                 "--out", str(tmp_path / "m2"), "--snapshot", "mid"]) == 2


def test_a_gemma2_style_member_learns_and_its_keys_unrotate_exactly(tiny_corpus, tmp_path):
    """config/kv_paper.yaml's members: alternating sliding-window and global layers, soft-capping."""
    from interlingua.channels.kv.cache import kv_of
    from interlingua.channels.kv.rotary import rotary_specs, rotate, unrotate

    out = pretrain({**TINY, "architecture": "gemma2", "sliding_window": 8}, tiny_corpus, tmp_path / "g2",
                   progress=False)
    model, _, manifest = load_member(out)
    assert model.config.model_type == "gemma2" and model.config.layer_types[0] == "sliding_attention"
    rows = _rows(out)
    assert float(rows[-1]["heldout_nll_wikitext"]) < float(rows[0]["heldout_nll_wikitext"]) - 0.5
    windows = heldout_windows(load_corpus(tiny_corpus).heldout["tinystories"], 20, 0, 40)
    with torch.no_grad():
        block = kv_of(model, windows.tolist())
    for keys, spec in zip(block.keys, rotary_specs(model.config)):
        free = unrotate(keys, block.positions, spec)
        torch.testing.assert_close(rotate(free, block.positions, spec), keys, atol=1e-5, rtol=1e-5)
    with pytest.raises(ConfigError, match="architecture"):
        PretrainConfig.from_dict({"architecture": "mamba"})
