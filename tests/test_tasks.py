
import pytest

from interlingua.errors import DataError
from interlingua.tasks import materialize_split, read_split, subsample

from conftest import write_jsonl


def test_materialize_writes_rows_and_content_hash(sst2_like_task, toy_mirror, tmp_path):
    meta = materialize_split("toy", sst2_like_task, toy_mirror, "eval", tmp_path / "out/validation.jsonl")
    rows, meta_read = read_split(tmp_path / "out/validation.jsonl")
    assert meta == meta_read and meta["rows"] == len(rows) == 8
    assert set(rows[0]) == {"index", "text", "label"}
    again = materialize_split("toy", sst2_like_task, toy_mirror, "eval", tmp_path / "again.jsonl")
    assert again["content_sha256"] == meta["content_sha256"]


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
