
import json
import re
from pathlib import Path

import pytest

from interlingua.config import load_config, load_schema, read_yaml
from interlingua.errors import DataError
from interlingua.tasks import (ROLES, field_root, fit_examples, fit_texts, holdout_rows, materialize_split, normalise,
                               read_jsonl, read_split, role_rows, subsample, template_fields, token_budget,
                               truncate_text)

from conftest import REPO, SENTENCES, TRAIN_SENTENCES, write_jsonl


def test_materialize_writes_rows_and_content_hash(sst2_like_task, toy_mirror, tmp_path):
    meta = materialize_split("toy", sst2_like_task, toy_mirror, "eval", tmp_path / "out/validation.jsonl")
    rows, meta_read = read_split(tmp_path / "out/validation.jsonl")
    assert meta == meta_read and meta["rows"] == len(rows) == 8
    assert set(rows[0]) == {"index", "text", "label"}
    again = materialize_split("toy", sst2_like_task, toy_mirror, "eval", tmp_path / "again.jsonl")
    assert again["content_sha256"] == meta["content_sha256"]


def test_toy_fixture_train_and_eval_are_disjoint(sst2_like_task, toy_mirror, tmp_path):
    meta = materialize_split("toy", sst2_like_task, toy_mirror, "train", tmp_path / "train.jsonl")
    assert meta["rows"] == 16 and meta["eval_overlap_dropped"] == 0
    assert not {normalise(t) for t in TRAIN_SENTENCES} & {normalise(t) for t in SENTENCES}


def test_non_utf8_byte_names_file_and_line(sst2_like_task, toy_mirror, tmp_path):
    path = toy_mirror / "toy/validation.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    lines[2] = b'{"text": "caf\xe9 latte", "label": 0}\n'  # Latin-1, not UTF-8
    path.write_bytes(b"".join(lines))
    with pytest.raises(DataError, match=re.escape(f"{path}:3: not valid UTF-8 (byte 0xe9 at column 14)")):
        materialize_split("toy", sst2_like_task, toy_mirror, "eval", tmp_path / "v.jsonl")


# --- train rows that are eval texts ------------------------------------------------------------

def test_train_drops_eval_texts_after_lowercase_and_whitespace(sst2_like_task, tmp_path):
    evals = [{"text": f"eval sentence {i}", "label": i % 2} for i in range(10)]
    train = [{"text": f"train sentence {i}", "label": i % 2} for i in range(30)]
    train[3]["text"] = "Eval  Sentence 2"                # case and whitespace differ: still the same text
    train[7]["text"] = "eval sentence 9\t"               # an eval row outside the eval subsample
    train[11]["text"] = "eval sentence 4"                # exact
    train[12]["text"] = "eval sentences 4"               # not the same text
    write_jsonl(tmp_path / "m/toy/train.jsonl", train)
    write_jsonl(tmp_path / "m/toy/validation.jsonl", evals)
    task = dict(sst2_like_task, subsample={"train": 20, "eval": 3})
    meta = materialize_split("toy", task, tmp_path / "m", "train", tmp_path / "out/train.jsonl")
    rows, _ = read_split(tmp_path / "out/train.jsonl")
    assert meta["eval_overlap_dropped"] == 3 and meta["rows"] == len(rows) == 20   # the subsample keeps its size
    assert not {3, 7, 11} & {r["index"] for r in rows}
    assert not {normalise(r["text"]) for r in rows} & {normalise(e["text"]) for e in evals}
    assert "eval_overlap_dropped" not in materialize_split("toy", task, tmp_path / "m", "eval", tmp_path / "e.jsonl")


def test_holdout_train_drops_texts_of_the_eval_part(sst2_like_task, tmp_path):
    rows = [{"text": f"row {i}", "label": i % 2} for i in range(20)]
    eval_part = holdout_rows("one", {"eval_rows": 5, "seed": 0}, 20, "eval")
    train_part = holdout_rows("one", {"eval_rows": 5, "seed": 0}, 20, "train")
    rows[train_part[0]]["text"] = "ROW " + str(eval_part[0])    # a duplicate across the partition
    write_jsonl(tmp_path / "one/validation.jsonl", rows)
    task = dict(sst2_like_task, mirror="one/validation.jsonl", splits={"train": "train", "eval": "test"},
                holdout={"eval_rows": 5, "seed": 0})
    meta = materialize_split("one", task, tmp_path, "train", tmp_path / "train.jsonl")
    train, _ = read_split(tmp_path / "train.jsonl")
    assert meta["eval_overlap_dropped"] == 1 and meta["rows"] == 14
    assert train_part[0] not in {r["index"] for r in train}


# --- how much of a text a model reads ------------------------------------------------------------

@pytest.fixture(scope="module")
def bpe():
    from interlingua.tiny import build_tokenizer
    return build_tokenizer("bpe")


def test_truncate_text_keeps_a_prefix_of_at_most_max_tokens(bpe):
    text = "a great and moving film " * 2500   # ~12k tokens: extraction once asked for 45 GB
    cut, truncated = truncate_text(bpe, text, 100)
    assert truncated and text.startswith(cut) and len(bpe(cut, add_special_tokens=False)["input_ids"]) == 100
    assert truncate_text(bpe, "a great film", 100) == ("a great film", False)
    assert truncate_text(bpe, "caf\u00e9 " * 50, 7)[0] in ("caf\u00e9 " * 50)  # never inside a character


def test_fit_texts_counts_and_token_budget_respects_positions(bpe):
    examples = [{"text": "short", "label": 0}, {"text": "word " * 600, "label": 1}]
    fitted, cut = fit_texts(bpe, examples, 64)
    assert cut == 1 and fitted[0] is examples[0] and len(bpe(fitted[1]["text"])["input_ids"]) <= 64
    frame = "Review: \nSentiment:"
    frame_tokens = len(bpe(frame)["input_ids"])
    assert token_budget(bpe, 2048, None, frame) == 2048
    assert token_budget(bpe, 2048, 512, frame, extra=2) == 512 - frame_tokens - 2
    assert token_budget(bpe, 2048, 512, frame, slots=3) == (512 - frame_tokens) // 3
    with pytest.raises(DataError, match="tasks.toy.max_tokens"):
        token_budget(bpe, 2048, frame_tokens, frame, where="tasks.toy.max_tokens")

    class Config:
        max_position_embeddings = 40
    fitted, cut = fit_examples({"max_tokens": 2048}, bpe, Config(), examples, frame=frame)
    assert cut == 1 and len(bpe(frame)["input_ids"]) + len(bpe(fitted[1]["text"])["input_ids"]) <= 40


def test_subsample_is_seeded_and_ordered():
    rows = list(range(100))
    assert subsample(rows, 10, 0) == subsample(rows, 10, 0)
    assert subsample(rows, 10, 0) != subsample(rows, 10, 1)
    assert subsample(rows, 10, 0) == sorted(subsample(rows, 10, 0))
    assert subsample(rows, None, 0) == rows


def test_malformed_line_names_file_and_line(sst2_like_task, toy_mirror, tmp_path):
    path = toy_mirror / "toy/validation.jsonl"
    lines = path.read_text().splitlines()
    lines[4] = '{"text": "broken", "label": 1'
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=f"{path}:5: malformed JSON line"):
        materialize_split("toy", sst2_like_task, toy_mirror, "eval", tmp_path / "v.jsonl")


def test_label_outside_label_list(sst2_like_task, toy_mirror, tmp_path):
    write_jsonl(toy_mirror / "toy/validation.jsonl", [{"text": "fine", "label": 0}, {"text": "odd", "label": 2}])
    with pytest.raises(DataError, match=r"validation.jsonl:2: label 2 is outside the label list"):
        materialize_split("toy", sst2_like_task, toy_mirror, "eval", tmp_path / "v.jsonl")


def test_empty_split(sst2_like_task, toy_mirror, tmp_path):
    (toy_mirror / "toy/validation.jsonl").write_text("\n")
    with pytest.raises(DataError, match="split is empty"):
        materialize_split("toy", sst2_like_task, toy_mirror, "eval", tmp_path / "v.jsonl")


def test_missing_file_without_hub_fallback(sst2_like_task, tmp_path):
    with pytest.raises(DataError, match=r"dataset file not found: .*toy/validation.jsonl"):
        materialize_split("toy", sst2_like_task, tmp_path, "eval", tmp_path / "v.jsonl")


def test_missing_field(sst2_like_task, toy_mirror, tmp_path):
    write_jsonl(toy_mirror / "toy/validation.jsonl", [{"sentence": "x", "label": 0}])
    with pytest.raises(DataError, match="validation.jsonl:1: missing field 'text'"):
        materialize_split("toy", sst2_like_task, toy_mirror, "eval", tmp_path / "v.jsonl")


def test_hub_fallback_renames_fields_and_reports_both_failures(sst2_like_task, tmp_path, monkeypatch):
    import datasets

    task = dict(sst2_like_task, hub_id="someone/toy", hub_fields={"text": "sentence"})
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: [{"sentence": "nice", "label": 1}])
    meta = materialize_split("toy", task, tmp_path, "eval", tmp_path / "v.jsonl")
    assert meta["origin"] == "hub:someone/toy"
    assert read_split(tmp_path / "v.jsonl")[0] == [{"index": 0, "text": "nice", "label": 1}]

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match=r"dataset file not found: .*validation.jsonl, and the fallback hub "
                                        r"dataset 'someone/toy' split 'validation' could not be loaded: no network"):
        materialize_split("toy", task, tmp_path, "eval", tmp_path / "v.jsonl")


# --- multi-field inputs (text_template) and raw labels (label_values) ----------------------------

QUESTIONS = [("Where do fish live?", ["desert", "water", "sky"], "B"),
             ("What melts in the sun?", ["ice", "stone", "glass"], "A"),
             ("What do cows drink?", ["milk", "oil", "water"], "C")]


@pytest.fixture
def choice_task(sst2_like_task) -> dict:
    """A CommonsenseQA-like task: question + nested choices, letter answers."""
    task = {k: v for k, v in sst2_like_task.items() if k != "text_field"}
    return dict(task, mirror="mc/{split}.jsonl", label_field="answerKey", label_names=["A", "B", "C"],
                label_values=["A", "B", "C"], verbalizers=[" A", " B", " C"],
                text_template="Q: {question}\nA: {choices[text][0]}\nB: {choices[text][1]}\nC: {choices[text][2]}")


@pytest.fixture
def choice_mirror(tmp_path) -> Path:
    rows = [{"question": q, "choices": {"label": ["A", "B", "C"], "text": t}, "answerKey": k} for q, t, k in QUESTIONS]
    write_jsonl(tmp_path / "mirror/mc/validation.jsonl", rows)
    return tmp_path / "mirror"


def test_text_template_renders_nested_fields_and_label_values_map_letters(choice_task, choice_mirror, tmp_path):
    materialize_split("mc", choice_task, choice_mirror, "eval", tmp_path / "v.jsonl")
    rows, _ = read_split(tmp_path / "v.jsonl")
    assert rows[0] == {"index": 0, "label": 1,
                       "text": "Q: Where do fish live?\nA: desert\nB: water\nC: sky"}
    assert [r["label"] for r in rows] == [1, 0, 2]


def test_parts_are_kept_beside_the_text_and_a_missing_field_is_named(sst2_like_task, tmp_path):
    """Study 3's context-unaware receiver reads BoolQ's question alone: a task can keep named parts of a row."""
    task = dict(sst2_like_task, mirror="qa/{split}.jsonl", text_field=None, text_template="P: {passage}\nQ: {question}",
                parts={"question": "{question}"})
    task.pop("text_field")
    path = write_jsonl(tmp_path / "qa/validation.jsonl", [{"passage": "fish swim", "question": "do fish swim", "label": 1},
                                                          {"passage": "cats sleep", "question": "do cats fly", "label": 0}])
    materialize_split("qa", task, tmp_path, "eval", tmp_path / "v.jsonl")
    rows, _ = read_split(tmp_path / "v.jsonl")
    assert rows[0]["parts"] == {"question": "do fish swim"} and rows[0]["text"] == "P: fish swim\nQ: do fish swim"
    write_jsonl(path, [{"passage": "fish swim", "question": "do fish swim", "label": 1}, {"passage": "x", "label": 0}])
    with pytest.raises(DataError, match=re.escape("validation.jsonl:2: missing field 'question'")):
        materialize_split("qa", task, tmp_path, "eval", tmp_path / "v.jsonl")


def test_boolean_labels_map_by_type_and_value(sst2_like_task, tmp_path):
    task = dict(sst2_like_task, mirror="yn/{split}.jsonl", label_field="answer", label_values=[False, True],
                text_field="question")
    path = write_jsonl(tmp_path / "yn/validation.jsonl", [{"question": "is it?", "answer": True},
                                                          {"question": "is it not?", "answer": False}])
    materialize_split("yn", task, tmp_path, "eval", tmp_path / "v.jsonl")
    assert [r["label"] for r in read_split(tmp_path / "v.jsonl")[0]] == [1, 0]
    # JSON 1 equals Python True, but it is not a listed value: a silent match would hide a wrong field.
    write_jsonl(path, [{"question": "is it?", "answer": True}, {"question": "x", "answer": 1}])
    with pytest.raises(DataError, match=re.escape("validation.jsonl:2: label 1 in field 'answer' is not one of "
                                                  "label_values [false, true]")):
        materialize_split("yn", task, tmp_path, "eval", tmp_path / "v.jsonl")


@pytest.mark.parametrize("broken, message", [
    ({"choices": {"label": ["A"], "text": ["a", "b", "c"]}, "answerKey": "A"}, "missing field 'question'"),
    ({"question": "q", "choices": {"text": ["a", "b"]}, "answerKey": "A"},
     "text_template field 'choices[text][2]' cannot be looked up in this row (IndexError"),
    ({"question": "q", "choices": ["a", "b", "c"], "answerKey": "A"},
     "text_template field 'choices[text][0]' cannot be looked up in this row (TypeError"),
    ({"question": " ", "choices": {"text": ["a", "b", "c"]}, "answerKey": "A"}, "field 'question' is empty"),
    ({"question": "q", "choices": {"text": ["a", 7, "c"]}, "answerKey": "A"},
     "field 'choices[text][1]' is empty or not a string"),
    ({"question": "q", "choices": {"text": ["a", "b", "c"]}}, "missing field 'answerKey'"),
    ({"question": "q", "choices": {"text": ["a", "b", "c"]}, "answerKey": "D"},
     "label \"D\" in field 'answerKey' is not one of label_values [\"A\", \"B\", \"C\"]"),
])
def test_bad_row_names_line_and_field(choice_task, choice_mirror, tmp_path, broken, message):
    path = choice_mirror / "mc/validation.jsonl"
    lines = path.read_text().splitlines()
    lines[1] = json.dumps(broken)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=re.escape(f"{path}:2: {message}")):
        materialize_split("mc", choice_task, choice_mirror, "eval", tmp_path / "v.jsonl")


def test_template_fields_and_roots():
    fields = template_fields("Q: {question}\n{choices[text][0]!r} {{literal}} {n:>4}")
    assert fields == ["question", "choices[text][0]", "n"]
    assert [field_root(f) for f in fields] == ["question", "choices", "n"]
    with pytest.raises(ValueError):
        template_fields("Q: {question")


# --- holdout: one source file, two disjoint roles --------------------------------------------------

PINNED_EVAL_ROWS = [4, 7, 9]  # first 3 of rows 0..9 ranked by sha256("0:<row>")


def test_holdout_partitions_disjoint_covering_and_stable():
    holdout = {"eval_rows": 30, "seed": 0}
    train, test = holdout_rows("t", holdout, 100, "train"), holdout_rows("t", holdout, 100, "eval")
    assert len(test) == 30 and len(train) == 70
    assert not set(train) & set(test) and sorted(train + test) == list(range(100))
    assert train == sorted(train) and test == sorted(test)
    assert holdout_rows("t", holdout, 100, "eval") == test                       # same call, same rows
    assert holdout_rows("t", {"eval_rows": 30, "seed": 1}, 100, "eval") != test  # the seed draws anew
    # Pinned: sha256 ranking, so the partition cannot drift with Python's random module or the platform.
    assert holdout_rows("t", {"eval_rows": 3, "seed": 0}, 10, "eval") == PINNED_EVAL_ROWS


def test_holdout_then_subsample_stays_inside_the_role(sst2_like_task):
    task = dict(sst2_like_task, holdout={"eval_rows": 40, "seed": 3}, subsample={"train": 25, "eval": 10})
    train, test = role_rows("t", task, 100, "train"), role_rows("t", task, 100, "eval")
    assert len(train) == 25 and len(test) == 10
    assert set(test) <= set(holdout_rows("t", task["holdout"], 100, "eval"))
    assert set(train) <= set(holdout_rows("t", task["holdout"], 100, "train"))
    assert role_rows("t", task, 100, "train") == train


def test_holdout_materializes_disjoint_splits_from_one_file(sst2_like_task, tmp_path):
    write_jsonl(tmp_path / "one/validation.jsonl", [{"text": f"row {i}", "label": i % 2} for i in range(20)])
    task = dict(sst2_like_task, mirror="one/validation.jsonl", splits={"train": "train", "eval": "test"},
                holdout={"eval_rows": 5, "seed": 0})
    metas = {role: materialize_split("one", task, tmp_path, role, tmp_path / f"out/{role}.jsonl") for role in ROLES}
    rows = {role: read_split(tmp_path / f"out/{role}.jsonl")[0] for role in ROLES}
    indices = {role: [r["index"] for r in rows[role]] for role in ROLES}
    assert sorted(indices["train"] + indices["eval"]) == list(range(20))
    assert all(r["text"] == f"row {r['index']}" for role in ROLES for r in rows[role])  # index = source row
    assert metas["eval"]["holdout"] == {"eval_rows": 5, "seed": 0} and metas["eval"]["split"] == "test"


def test_holdout_must_leave_training_rows(sst2_like_task, toy_mirror, tmp_path):
    task = dict(sst2_like_task, mirror="toy/validation.jsonl", holdout={"eval_rows": 8, "seed": 0})
    with pytest.raises(DataError, match=r"task 'toy': holdout.eval_rows = 8 must be between 1 and 7 "
                                        r"\(the source has 8 rows"):
        materialize_split("toy", task, toy_mirror, "train", tmp_path / "t.jsonl")


def test_workflow_request_keeps_every_row_deciding_key():
    """A task key that decides a split's rows must reach the materialize job's request (common.smk)."""
    keep = re.search(r"keep = \((.*?)\)", (REPO / "workflow/rules/common.smk").read_text(), re.S).group(1)
    task_keys = set(load_schema()["properties"]["tasks"]["additionalProperties"]["properties"])
    # added per role, or not about rows (prompts, training overrides, how much of a text models read)
    per_role_or_prompt_only = {"splits", "subsample", "verbalizers", "prompts", "overrides", "max_tokens"}
    assert task_keys - per_role_or_prompt_only <= set(re.findall(r'"(\w+)"', keep))


# --- the real task entries of params.yaml, against the shared datasets mirror ----------------------

PARAMS_TASKS = sorted(read_yaml(REPO / "params.yaml")["tasks"])  # listed at collection, validated below


@pytest.fixture(scope="module")
def real_config():
    config = load_config(REPO / "params.yaml")
    if not Path(config["paths"]["datasets"], "MANIFEST.json").exists():
        pytest.skip(f"datasets mirror not found at {config['paths']['datasets']}")
    return config


def expected_rows(task: dict, manifest: dict, role: str) -> int:
    """Rows a role should get, from MANIFEST.json row counts: holdout part, then subsample."""
    files = {s["file"]: s["rows"] for d in manifest["datasets"].values() for s in d["splits"].values()}
    source = files[task["mirror"].format(split=task["splits"][role])]
    if "holdout" in task:
        held = task["holdout"]["eval_rows"]
        source = held if role == "eval" else source - held
    size = task["subsample"][role]
    return source if size is None else min(size, source)


@pytest.mark.parametrize("name", PARAMS_TASKS)
def test_params_task_materializes_from_the_mirror(real_config, name, tmp_path):
    task, datasets = real_config["tasks"][name], real_config["paths"]["datasets"]
    manifest = json.loads(Path(datasets, "MANIFEST.json").read_text())
    indices = {}
    for role in ROLES:
        out = tmp_path / f"{task['splits'][role]}.jsonl"
        meta = materialize_split(name, task, datasets, role, out)
        rows, _ = read_split(out)
        assert meta["rows"] == len(rows) == expected_rows(task, manifest, role)
        assert all(0 <= r["label"] < len(task["label_names"]) and r["text"].strip() for r in rows)
        indices[role] = [r["index"] for r in rows]
        assert indices[role] == sorted(set(indices[role]))
    if "holdout" in task:
        assert not set(indices["train"]) & set(indices["eval"])


# Train rows whose text is an eval text (lower case, whitespace collapsed), measured on the mirror: TREC 11
# of the 500 test questions are training questions (10 exactly), AG News 9 of 7,600 (10 train rows: one
# twice), Banking77 7 of 3,080 (case or spacing only).
OVERLAP = {"ag_news": 10, "trec": 11, "banking77": 7}


@pytest.mark.parametrize("name", ["ag_news", "trec", "banking77", "boolq"])
def test_real_train_splits_drop_every_eval_text(real_config, name, tmp_path):
    task, datasets = real_config["tasks"][name], real_config["paths"]["datasets"]
    for role in ROLES:
        materialize_split(name, task, datasets, role, tmp_path / f"{role}.jsonl")
    meta = read_split(tmp_path / "train.jsonl")[1]
    assert meta["eval_overlap_dropped"] == OVERLAP.get(name, 0)
    from interlingua.tasks import eval_texts
    train = {normalise(r["text"]) for r in read_split(tmp_path / "train.jsonl")[0]}
    assert not train & eval_texts(name, task, datasets)


def test_real_multi_field_tasks_render_the_source_rows(real_config, tmp_path):
    datasets = Path(real_config["paths"]["datasets"])
    tasks = real_config["tasks"]
    boolq_source = read_jsonl(datasets / "boolq/validation.jsonl")
    materialize_split("boolq", tasks["boolq"], datasets, "eval", tmp_path / "boolq.jsonl")
    for row in read_split(tmp_path / "boolq.jsonl")[0][:20]:
        source = boolq_source[row["index"]]
        assert row["label"] == int(source["answer"])
        assert row["text"] == f"Passage: {source['passage']}\nQuestion: {source['question']}?"
    # The template reads choices by position, so the letters must be A-E in order in every row.
    for split in ("train", "validation"):
        assert all(r["choices"]["label"] == tasks["commonsense_qa"]["label_values"]
                   for r in read_jsonl(datasets / f"commonsense_qa/{split}.jsonl"))
    materialize_split("ag_news", tasks["ag_news"], datasets, "eval", tmp_path / "ag.jsonl")
    ag_source = read_jsonl(datasets / "ag_news/test.jsonl")
    assert all(r["text"] == ag_source[r["index"]]["description"] for r in read_split(tmp_path / "ag.jsonl")[0])


# --- every model job reading task texts cuts them to max_tokens and counts it ----------------------

def test_text_baselines_cut_long_rows_and_count_them(tiny_models, sst2_like_task, tmp_path, monkeypatch):
    """0-shot, k-shot, the relay's sender input and fine-tuning read at most max_tokens of a text (a row of
    2,500 repetitions, ~50k tokens, once made extraction ask for 45 GB) and say how many they cut."""
    import pandas as pd
    import torch

    from interlingua import finetune, relay, zoo
    from interlingua.evaluate import evaluate_zero_shot
    from interlingua.few_shot import evaluate_few_shot
    from interlingua.receiver import Receiver

    long_text = "the jokes fall flat " * 2500
    write_jsonl(tmp_path / "m/toy/train.jsonl", [{"text": long_text, "label": 0}, {"text": "a great film", "label": 1}])
    write_jsonl(tmp_path / "m/toy/validation.jsonl", [{"text": "an awful mess", "label": 0},
                                                      {"text": "x " + long_text, "label": 1}])
    task = dict(sst2_like_task, max_tokens=24)
    split = {role: tmp_path / f"{role}.jsonl" for role in ROLES}
    for role in ROLES:
        materialize_split("toy", task, tmp_path / "m", role, split[role])
    cpu, f32, receiver = torch.device("cpu"), torch.float32, tiny_models["receiver"]
    widest = []
    original = Receiver._left_pad
    monkeypatch.setattr(Receiver, "_left_pad", lambda self, rows: widest.append(max(len(r) for r in rows))
                        or original(self, rows))

    def truncated(path):
        frame = pd.read_csv(path)
        return frame[frame.metric == "truncated_inputs"].value.tolist()

    evaluate_zero_shot(split["eval"], receiver, tmp_path / "z.csv", task_name="toy", task=task, model_alias="r",
                       batch_size=2, device=cpu, dtype=f32)
    assert truncated(tmp_path / "z.csv") == [1] and max(widest) <= 24 + 16     # the text and its short prompt
    evaluate_few_shot(split["train"], split["eval"], receiver, tmp_path / "k.csv", task_name="toy", task=task,
                      model_alias="r", shots=2, seed=0, batch_size=2, device=cpu, dtype=f32)
    assert truncated(tmp_path / "k.csv") == [2]                                  # a demonstration and a query
    assert max(widest) <= 24 + 16

    sent = []
    monkeypatch.setattr(relay, "generate_batch", lambda model, tokenizer, prompts, max_new_tokens, *stop: sent.extend(prompts)
                        or [{"relay": "bad", "generated_tokens": 1, "finished": True} for _ in prompts])
    out = relay.generate_relay(tiny_models["sender"], split["eval"], tmp_path / "relay.jsonl", task=task,
                               mode="summary", max_new_tokens=4, batch_size=2, device=cpu, dtype=f32)
    assert json.loads(relay.relay_meta_path(out).read_text())["truncated_inputs"] == 1
    frame = relay.chat_ids(zoo.load_tokenizer(tiny_models["sender"]), relay.sender_message(task, "", "summary"))
    assert max(len(p) for p in sent) <= len(frame) + 24

    train = {"steps": 1, "batch_size": 2, "lr": 1e-3, "weight_decay": 0.0, "warmup_steps": 0, "grad_clip": 1.0,
             "diversity_weight": 0.0, "checkpoint_every": 1, "loss": "labels"}
    spec = {"method": "lora", "rank": 2, "alpha": 4, "lr": 1e-3}
    checkpoint = finetune.train_finetune(split["train"], receiver, tmp_path / "f.pt", task=task, train=train,
                                         finetune=spec, seed=0, device=cpu, dtype=f32)
    assert torch.load(checkpoint, weights_only=False)["truncated_inputs"] == 1
    finetune.evaluate_finetune(split["eval"], receiver, checkpoint, tmp_path / "f.csv", task_name="toy", task=task,
                               receiver_alias="r", batch_size=2, device=cpu, dtype=f32)
    assert truncated(tmp_path / "f.csv") == [1] and max(widest) <= 24 + 16


# --- verbalizers on the two real tokenizers (as materialized: the packaged GGUF's tokenizer) ---------

@pytest.mark.parametrize("model", ["gemma3", "smollm2"])
def test_params_verbalizers_on_the_real_tokenizers(real_tokenizers, model):
    from interlingua.receiver import SOFT, verbalizer_trie

    tokenizer = real_tokenizers[model]
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731 (as Receiver does)
    tasks = read_yaml(REPO / "params.yaml")["tasks"]
    for name, task in tasks.items():
        ids = [encode(v) for v in task["verbalizers"]]
        assert all(ids), (model, name)
        assert len({tuple(i) for i in ids}) == len(ids), (model, name)   # every label is its own token sequence
        firsts = [i[0] for i in ids]
        if name != "banking77":  # first-token scoring (one forward pass) is what these tasks' comments promise
            assert len(set(firsts)) == len(firsts) and all(len(i) == 1 for i in ids), (model, name)
        trie = verbalizer_trie(ids)                                      # constrained decoding over the labels
        assert sorted(trie.roots) == sorted(set(firsts)) and set(trie.step_classes) <= set(range(len(ids)))
        # The leading space is read as the receiver reads it after its prompts: scoring the verbalizer's own
        # tokens after the prompt's equals tokenizing prompt + verbalizer as one string (k-shot demonstrations).
        after_soft = task["prompts"]["instruction"].partition(SOFT)[2]
        text_prompt = task["prompts"]["text"].format(text="an example input")
        for prompt in (after_soft, text_prompt):
            for verbalizer, tokens in zip(task["verbalizers"], ids):
                assert encode(prompt + verbalizer) == encode(prompt) + tokens, (model, name, prompt, verbalizer)


def test_banking77_labels_part_ways_only_inside_the_trie(real_tokenizers):
    """Banking77's verbalizers share first words: only the trie tells them apart (77 distinct paths)."""
    from interlingua.receiver import verbalizer_trie
    verbalizers = read_yaml(REPO / "params.yaml")["tasks"]["banking77"]["verbalizers"]
    for tokenizer in real_tokenizers.values():
        ids = [tokenizer(v, add_special_tokens=False)["input_ids"] for v in verbalizers]
        trie = verbalizer_trie(ids)
        assert len(set(trie.firsts)) < 77 and len(trie.roots) == len(set(trie.firsts))
        # every class past the root is scored at each node where labels part ways
        shared = [c for c, i in enumerate(ids) if trie.firsts.count(i[0]) > 1]
        assert shared and set(shared) <= set(trie.step_classes)


def test_truncation_on_the_real_tokenizers(real_tokenizers):
    text = "The passage goes on and on, café ünïcode 東京 naïve. " * 300
    for tokenizer in real_tokenizers.values():
        cut, truncated = truncate_text(tokenizer, text, 100)
        assert truncated and text.startswith(cut)
        assert 95 <= len(tokenizer(cut, add_special_tokens=False)["input_ids"]) <= 100
