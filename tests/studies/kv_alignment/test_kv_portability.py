"""Figure 5's portability job on tiny members: a ported soft prompt round-trips exactly through identity adapters
between a member and its copy, tuning beats the random prompt, and every condition is scored for every prompt."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from interlingua.channels.kv.translators import build_translator, translator_config
from interlingua.errors import ConfigError, DataError
from interlingua.runtime import atomic_save
from interlingua.studies.kv_alignment.corpus import load_corpus, source_streams
from interlingua.studies.kv_alignment.portability import (CONDITIONS, COLUMNS, PortabilityConfig, completion_nll,
                                                          document_openings, hidden_prompts, init_soft,
                                                          portability_job, sample_completions, soft_block)
from interlingua.studies.kv_alignment.pretrain import pretrain
from interlingua.studies.kv_alignment.run import load_pool

MEMBER = {"hidden": 32, "layers": 2, "heads": 2, "kv_heads": 1, "intermediate": 64, "seq_len": 48, "batch": 16,
          "steps": 120, "warmup": 10, "lr": 1e-2, "min_lr": 1e-3, "eval_every": 120, "eval_tokens": 300,
          "checkpoint_every": 120}
TASK = {"prompt_tokens": 8, "meta_train_prompts": 4, "heldout_prompts": 4, "completions": 6, "heldout_completions": 2,
        "completion_tokens": 8, "soft_tokens": 3, "soft_steps": 25, "soft_lr": 0.1, "meta_steps": 3, "meta_batch": 2,
        "prompt_batch": 4}


@pytest.fixture(scope="module")
def pool(tiny_corpus, tiny_tokenizer, tmp_path_factory):
    """Member `a`, `twin` (a byte-for-byte copy of a) and `b` (another seed and size), and the bos id."""
    root = tmp_path_factory.mktemp("portability")
    tiny_tokenizer.save_pretrained(root / "tokenizer")
    a = pretrain({**MEMBER, "seed": 0}, tiny_corpus, root / "a", progress=False)
    b = pretrain({**MEMBER, "seed": 1, "hidden": 48}, tiny_corpus, root / "b", progress=False)
    shutil.copytree(a, root / "twin")
    bos = int(load_corpus(tiny_corpus).manifest["source"]["bos"])
    return {"root": root, "corpus": tiny_corpus, "tokenizer": root / "tokenizer", "a": a, "b": b,
            "twin": root / "twin", "bos": bos}


def _translator(pool, kind: dict, names: list[str]):
    members = load_pool({n: pool[n] for n in names}, pool["tokenizer"], pool["bos"])
    translator = build_translator(*translator_config(kind), {n: m.shape for n, m in members.items()})
    path = pool["root"] / f"{kind['type']}_{'_'.join(names)}.pt"
    atomic_save(path, {"state": translator.state_dict(), "translator": kind,
                       "shapes": {n: m.shape for n, m in members.items()}, "members": names})
    return path


@pytest.fixture(scope="module")
def round_trip(pool):
    """The job with identity adapters from a to its copy."""
    translator = _translator(pool, {"type": "identity"}, ["a", "twin"])
    out = portability_job({"a": pool["a"], "twin": pool["twin"]}, pool["corpus"], pool["tokenizer"], translator,
                          {**TASK, "source": "a", "target": "twin"}, 0, pool["root"] / "round_trip")
    return pd.read_csv(out / "scores.csv"), json.loads((out / "summary.json").read_text())


def _wide(scores: pd.DataFrame, split: str = "heldout") -> pd.DataFrame:
    return scores[scores.split == split].pivot(index="prompt", columns="condition", values="nll")


def test_a_ported_soft_prompt_round_trips_exactly_through_identity_adapters(round_trip):
    """a -> S -> twin (an exact copy): the twin's own sink, rotary removed and re-applied at the same positions,
    the same cache otherwise: the ported prompt's NLL on the twin is a's own NLL with its tuned prompt."""
    scores, summary = round_trip
    for split in ("meta_train", "heldout"):
        wide = _wide(scores, split)
        torch.testing.assert_close(torch.tensor(wide.ported_pretrained.values), torch.tensor(wide.tuned_A.values),
                                   rtol=1e-5, atol=1e-5)
        assert (wide.ported_meta == wide.ported_pretrained).all()      # identity: nothing to meta-train
        assert not np.allclose(wide.ported_pretrained, wide.no_prompt)  # the module is not the sink alone
    assert summary["meta_training"]["trained"] is False
    assert set(scores[scores.condition == "tuned_A"].model) == {"a"}
    assert set(scores[scores.condition != "tuned_A"].model) == {"twin"}


def test_a_tuned_soft_prompt_beats_the_random_one_on_its_own_model(round_trip):
    scores, summary = round_trip
    wide = _wide(scores)
    assert wide.tuned_B.mean() < wide.random_B.mean() - 0.05, wide
    for part in ("A/meta_train", "A/heldout", "B/meta_train", "B/heldout"):
        tuning = summary["soft_prompt_tuning"][part]
        assert tuning["end"] < tuning["start"] - 0.1, (part, tuning)


def test_every_condition_is_scored_for_every_prompt_and_meta_training_moves_only_the_path(pool):
    translator = _translator(pool, {"type": "linear", "shared_dim": 16}, ["a", "b"])
    out = portability_job({"a": pool["a"], "b": pool["b"]}, pool["corpus"], pool["tokenizer"], translator,
                          TASK, 1, pool["root"] / "linear")
    scores = pd.read_csv(out / "scores.csv")
    summary = json.loads((out / "summary.json").read_text())
    assert list(scores.columns) == COLUMNS
    for split, count in (("heldout", TASK["heldout_prompts"]), ("meta_train", TASK["meta_train_prompts"])):
        part = scores[scores.split == split]
        assert part.groupby("condition").prompt.apply(sorted).apply(tuple).to_dict() == \
            {c: tuple(range(count)) for c in CONDITIONS}
    assert (scores.n_tokens == TASK["heldout_completions"] * (TASK["completion_tokens"] - 1)).all()
    assert np.isfinite(scores.nll).all()
    assert (summary["source"], summary["target"], summary["sampler"]) == ("a", "b", "a")
    meta = summary["meta_training"]
    assert meta["trained"] and len(meta["curve"]) == TASK["meta_steps"]
    linear = build_translator(*translator_config({"type": "linear", "shared_dim": 16}),
                              torch.load(translator, weights_only=False)["shapes"])
    assert meta["count"] == sum(p.numel() for p in (*linear.encoders["a"].parameters(),
                                                     *linear.decoders["b"].parameters()))
    wide = _wide(scores)
    assert not np.allclose(wide.ported_meta, wide.ported_pretrained)  # meta-training changed the path
    assert set(summary["splits"]) == {"meta_train", "heldout"}
    assert "gap_closed" in summary["splits"]["heldout"]["ported_meta"]


def test_soft_prompt_scoring_matches_the_models_own_forward(pool):
    """completion_nll after soft_block == cross-entropy of the HF model over [bos, soft, completion] in one pass,
    on completion tokens 2..L."""
    member = load_pool({"a": pool["a"]}, pool["tokenizer"], pool["bos"])["a"]
    soft = init_soft(member, 2, 3, torch.Generator().manual_seed(0))                     # (2, 3, d)
    completions = torch.randint(5, 60, (2, 3, 6), generator=torch.Generator().manual_seed(1))  # pool ids < 60
    inverse = {int(member.to_model[s]): s for s in range(len(member.to_model))}
    completions = completions.apply_(lambda i: inverse[i])                              # as SmolLM2 ids
    got = completion_nll(member, soft_block(member, soft, pool["bos"]), completions)    # (2,)
    embed = member.model.get_input_embeddings()
    first = embed(member.ids(torch.tensor([pool["bos"]])))                               # (1, d)
    expected = []
    for p in range(2):
        rows = []
        for c in member.ids(completions[p]):                                            # (L,)
            x = torch.cat([first, soft[p], embed(c)])[None]                             # (1, 1 + M + L, d)
            logits = member.model(inputs_embeds=x).logits[0, 1 + 3:-1]                  # predicts c[1:]
            rows.append(F.cross_entropy(logits, c[1:]))
        expected.append(torch.stack(rows).mean())
    torch.testing.assert_close(got, torch.stack(expected).detach(), rtol=1e-5, atol=1e-5)


def test_sampling_is_seeded_never_draws_the_oov_id_and_follows_the_model(pool):
    member = load_pool({"a": pool["a"]}, pool["tokenizer"], pool["bos"])["a"]
    prompts = torch.as_tensor(source_streams(pool["corpus"], "train")["tinystories"][:5])[None]  # (1, 5) SmolLM2 ids

    def draw(seed, temperature=1.0):
        return sample_completions(member, prompts, pool["bos"], 4, 6, temperature, torch.Generator().manual_seed(seed))

    first, again = draw(0), draw(0)
    assert first.shape == (1, 4, 6) and torch.equal(first, again) and not torch.equal(first, draw(1))
    oov = int(member.to_model.max())
    assert (first >= 0).all() and (member.ids(first) != oov).all()
    # near-zero temperature is greedy decoding: compare with the model's own full forward, step by step
    ids = member.ids(torch.cat([torch.tensor([[pool["bos"]]]), prompts], 1))            # (1, 1 + P)
    for _ in range(6):
        logits = member.model(input_ids=ids).logits[:, -1]
        logits[:, oov] = float("-inf")
        ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], 1)
    assert torch.equal(member.ids(draw(0, 1e-4)[0, 0]), ids[0, -6:])


def test_hidden_prompts_are_document_openings_and_too_few_documents_name_the_key():
    stream = np.array([5, 6, 7, 2, 8, 2, 9, 10, 11, 12, 2, 13, 14, 15])  # sep = 2; the second document is short
    np.testing.assert_array_equal(document_openings(stream, 2, 3), [[5, 6, 7], [9, 10, 11], [13, 14, 15]])
    other = np.where(stream == 2, 2, stream + 100)                       # the same documents, other ids
    prompts, corpora = hidden_prompts({"x": stream, "y": other}, ["x", "y"], 3, 3, 2, "heldout_prompts")
    assert corpora == ["x", "y", "x"] and prompts[:, 0].tolist() == [5, 105, 13]
    with pytest.raises(DataError, match="heldout_prompts"):
        hidden_prompts({"x": stream}, ["x"], 4, 3, 2, "heldout_prompts")
    with pytest.raises(ConfigError, match="corpora"):
        hidden_prompts({"x": stream}, ["z"], 1, 3, 2, "heldout_prompts")


def test_bad_settings_name_their_key(pool):
    with pytest.raises(ConfigError, match="heldout_completions"):
        PortabilityConfig(completions=4, heldout_completions=4)
    with pytest.raises(ConfigError, match="soft_step"):
        PortabilityConfig.from_settings({"soft_step": 3})
    translator = _translator(pool, {"type": "identity"}, ["a", "twin"])
    with pytest.raises(ConfigError, match="'b'"):
        portability_job({"a": pool["a"], "b": pool["b"]}, pool["corpus"], pool["tokenizer"], translator, TASK, 0,
                        pool["root"] / "bad")
    with pytest.raises(ConfigError, match="target"):
        portability_job({"a": pool["a"], "twin": pool["twin"]}, pool["corpus"], pool["tokenizer"], translator,
                        {**TASK, "target": "c"}, 0, pool["root"] / "bad")
