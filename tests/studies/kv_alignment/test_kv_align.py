"""Study 2's alignment job on a tiny pool: a translator learns, identity is exact, the plan resolves runs."""
from __future__ import annotations

import pandas as pd
import pytest
import torch

from interlingua.errors import ConfigError
from interlingua.studies.kv_alignment import plan
from interlingua.studies.kv_alignment.corpus import CorpusConfig, prepare_corpus
from interlingua.studies.kv_alignment.pretrain import pretrain
from interlingua.studies.kv_alignment.run import align_job

from .mirror import write_mirror

MEMBER = {"hidden": 32, "layers": 2, "heads": 2, "kv_heads": 1, "intermediate": 64, "seq_len": 48, "batch": 16,
          "steps": 300, "warmup": 10, "lr": 1e-2, "min_lr": 1e-3, "eval_every": 300, "eval_tokens": 600,
          "checkpoint_every": 300}
ALIGN = {"steps": 150, "batch": 8, "prefix_tokens": 16, "suffix_tokens": 16, "lr": 3e-3, "warmup": 5,
         "eval_every": 75, "eval_windows": 32, "checkpoint_every": 50}


@pytest.fixture(scope="module")
def pool(tiny_tokenizer, tmp_path_factory):
    """Two members that read their context (stories repeat names and things): a 2-layer d32 one and a
    3-layer d48 one of another seed, on a corpus of 120 stories and 30 articles."""
    root = tmp_path_factory.mktemp("pool")
    tiny_tokenizer.save_pretrained(root / "tokenizer")
    mirror = write_mirror(root / "mirror", stories=120, articles=30)
    corpus = prepare_corpus(mirror, tiny_tokenizer, root / "corpus", CorpusConfig(vocab_size=64, held_out_fraction=0.2))
    small = pretrain({**MEMBER, "seed": 0}, corpus, root / "small", progress=False)
    twin = pretrain({**MEMBER, "seed": 1}, corpus, root / "twin", progress=False)
    wide = pretrain({**MEMBER, "seed": 2, "hidden": 48, "layers": 3}, corpus, root / "wide", progress=False)
    return {"root": root, "corpus": corpus, "tokenizer": root / "tokenizer", "small": small, "twin": twin,
            "wide": wide}


def _final(out) -> pd.DataFrame:
    curves = pd.read_csv(out / "curves.csv")
    return curves[curves.step == curves.step.max()].set_index(["source", "target", "condition"])["nll"]


def test_a_trained_translator_beats_no_prefix_and_the_shuffled_prefix(pool):
    out = align_job({"small": pool["small"], "wide": pool["wide"]}, pool["corpus"], pool["tokenizer"],
                    {**ALIGN, "translator": {"type": "linear", "shared_dim": 64}}, 0, pool["root"] / "linear")
    final = _final(out)
    for src, tgt in [("small", "wide"), ("wide", "small"), ("small", "small")]:
        matched = final[(src, tgt, "matched")]
        assert matched < final[(tgt, tgt, "none")] - 0.02, (src, tgt, final)
        assert matched < final[(src, tgt, "shuffled")] - 0.1, (src, tgt, final)
    curves = pd.read_csv(out / "curves.csv")
    start = curves[(curves.step == 0) & (curves.condition == "matched")].set_index(["source", "target"])["nll"]
    assert final[("small", "wide", "matched")] < start[("small", "wide")]  # it learned
    scores = pd.read_csv(out / "scores.csv")
    assert set(scores.condition) == {"none", "own", "matched", "shuffled", "zero"}
    assert scores.groupby(["source", "target", "condition"]).window.nunique().eq(ALIGN["eval_windows"]).all()


def test_identity_between_same_shape_members_is_exact_on_the_cycle(pool):
    """m -> S -> m through identity adapters rebuilds m's own cache: the cyclic NLL equals `own` exactly
    (sink kept, rotary removed and re-applied at the same positions)."""
    out = align_job({"small": pool["small"], "twin": pool["twin"]}, pool["corpus"], pool["tokenizer"],
                    {**ALIGN, "steps": 0, "translator": {"type": "identity"}}, 0, pool["root"] / "identity")
    scores = pd.read_csv(out / "scores.csv").set_index(["window", "source", "target", "condition"])["nll"]
    for m in ("small", "twin"):
        own = scores.xs((m, m, "own"), level=["source", "target", "condition"])
        cyc = scores.xs((m, m, "matched"), level=["source", "target", "condition"])
        torch.testing.assert_close(torch.tensor(cyc.values), torch.tensor(own.values), rtol=1e-4, atol=1e-4)
    # across members of one shape the caches are another model's: identity is a baseline, not exact
    assert (scores.xs(("small", "twin", "matched"), level=["source", "target", "condition"]).values !=
            scores.xs(("twin", "twin", "own"), level=["source", "target", "condition"]).values).any()


def test_identity_scores_only_paths_between_members_of_one_shape(pool):
    out = align_job({"small": pool["small"], "wide": pool["wide"]}, pool["corpus"], pool["tokenizer"],
                    {**ALIGN, "steps": 0, "translator": {"type": "identity"}}, 0, pool["root"] / "identity_mixed")
    matched = pd.read_csv(out / "scores.csv").query("condition == 'matched'")
    assert set(zip(matched.source, matched.target)) == {("small", "small"), ("wide", "wide")}


CONFIG = {"kv_alignment": {
    "members": {"s0": {"pretrain": {"snapshots": [250]}}, "s1": {"pretrain": {"seed": 1}},
                "s3": {"pretrain": {"seed": 3}}, "big": {"model": "smollm2"}},
    "settings": {"checkpoints": ["s0@250", "s0"], "seeds": ["s0", "s1"], "sizes": ["s0", "big"]},
    "train": {"steps": 100}, "seeds": [0, 1],
    "extensibility": {"setting": "seeds", "new": "s3", "with": ["s0"]},
    "ablations": {"setting": "seeds", "translators": {"linear": {"type": "linear"}},
                  "paths_per_step": [1, 2], "reconstruction_weight": [0, 0.5]}}}


def test_a_member_added_to_a_saved_space_is_the_same_on_every_run(pool):
    """Extensibility (start_from + train_members): the newcomer's adapters are initialised from the run's seed,
    so two runs of one job, whatever the process's random state before, give the same translator and scores."""
    base = align_job({"small": pool["small"], "wide": pool["wide"]}, pool["corpus"], pool["tokenizer"],
                     {**ALIGN, "steps": 4, "translator": {"type": "linear", "shared_dim": 64}}, 0, pool["root"] / "base")
    runs = []
    for attempt in range(2):
        torch.manual_seed(100 + attempt)   # another global random state before each job
        out = align_job({"small": pool["small"], "wide": pool["wide"], "twin": pool["twin"]}, pool["corpus"],
                        pool["tokenizer"], {**ALIGN, "steps": 4, "translator": {"type": "linear", "shared_dim": 64}},
                        0, pool["root"] / f"extend{attempt}", train_members=["twin"],
                        paths=[("small", "twin"), ("twin", "small")], start_from=base / "translator.pt")
        runs.append(out)
    first, second = (torch.load(out / "translator.pt", weights_only=False)["state"] for out in runs)
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    assert (runs[0] / "scores.csv").read_text() == (runs[1] / "scores.csv").read_text()


def test_the_plan_names_runs_members_and_reuses_the_default():
    runs = plan.runs(CONFIG)
    assert runs["pool_checkpoints"]["members"] == {"s0_step250": "s0@250", "s0": "s0"}
    assert plan.member_dir(CONFIG, "s0@250") == "data/kv_alignment/snapshots/s0/step250"
    assert plan.member_dir(CONFIG, "big") == "data/models/smollm2"
    ext = runs["extend_s3"]
    assert ext["train_members"] == ["s3"] and ext["start_from"] == "pool_seeds"
    assert sorted(ext["paths"]) == [("s0", "s3"), ("s3", "s0"), ("s3", "s3")]
    # paths_per_step 2 and reconstruction 0 are the default run: they resolve to it, not a copy
    assert plan.resolve(CONFIG, "paths2")[0] == "pool_seeds"
    assert plan.resolve(CONFIG, "recon0")[0] == "pool_seeds"
    assert plan.resolve(CONFIG, "paths1")[0] == "paths1"
    dirs = plan.run_dirs(CONFIG)
    assert "results/kv_alignment/pool_seeds/seed1" in dirs and "results/kv_alignment/paths1/seed0" in dirs
    assert "results/kv_alignment/paths1/seed1" not in dirs  # ablations run on the first seed only


def test_the_plan_names_a_bad_reference():
    with pytest.raises(ConfigError, match="s9"):
        plan.member_dir(CONFIG, "s9")
    with pytest.raises(ConfigError, match="step 100"):
        plan.member_dir(CONFIG, "s0@100")


def test_a_member_of_another_tokenizer_joins_by_characters(pool, tiny_models):
    """A model reading bytes (the pool reads BPE ids) joins: its positions are its own tokens of the windows'
    text, pooled onto the pool's positions by characters. Trained as a source, its translated prefix beats
    the shuffled one (another window's bytes stretched over this text) and no prefix; as a target, every
    condition is scored on its own tokens of the same suffix text."""
    out = align_job({"small": pool["small"], "bytes": tiny_models["sender"]}, pool["corpus"], pool["tokenizer"],
                    {**ALIGN, "translator": {"type": "linear", "shared_dim": 64}}, 0, pool["root"] / "join",
                    paths=[("bytes", "small")])
    final = _final(out)
    matched = final[("bytes", "small", "matched")]
    assert matched < final[("bytes", "small", "shuffled")] - 0.05, final
    assert matched < final[("small", "small", "none")] - 0.02, final
    scores = pd.read_csv(out / "scores.csv")
    into = scores[scores.target == "bytes"]
    assert set(into.condition) == {"none", "own", "matched", "shuffled", "zero"} and into.nll.notna().all()
    with pytest.raises(ConfigError, match="another tokenizer"):
        align_job({"small": pool["small"], "bytes": tiny_models["sender"]}, pool["corpus"], pool["tokenizer"],
                  {**ALIGN, "translator": {"type": "ridge"}}, 0, pool["root"] / "join_ridge")


def test_the_plan_joins_a_model_of_another_tokenizer_and_names_bad_joins():
    import copy

    config = copy.deepcopy(CONFIG)
    config["models"] = {"smollm2": {}, "gemma3": {}}
    config["kv_alignment"]["tokenizer"] = "smollm2"
    config["kv_alignment"]["members"]["gemma"] = {"model": "gemma3"}
    config["kv_alignment"]["join"] = {"setting": "seeds", "new": "gemma", "with": ["s0"], "train": {"steps": 5}}
    join = plan.runs(config)["join_gemma"]
    assert join["train_members"] == ["gemma"] and join["start_from"] == "pool_seeds"
    assert sorted(join["paths"]) == [("gemma", "gemma"), ("gemma", "s0"), ("s0", "gemma")]
    assert join["train"]["steps"] == 5 and "gemma" in join["members"]
    plan.check(config)
    for change, message in [({"new": "s3"}, "is a pool member"), ({"with": ["s9"]}, "s9"),
                            ({"train": {"stpes": 5}}, "stpes"),
                            ({"train": {"translator": {"type": "ridge"}}}, "shared space")]:
        bad = copy.deepcopy(config)
        bad["kv_alignment"]["join"].update(change)
        with pytest.raises(ConfigError, match=message):
            plan.check(bad)
