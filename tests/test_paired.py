"""Paired tests: McNemar's exact test against hand-computed values, pairing by example id (never by
position), refusal of rows that are not the same examples, the per-example predictions every result
file carries, and the paired-test notes under the tables."""
from __future__ import annotations

import random
from math import comb

import pandas as pd
import pytest
import torch

from interlingua import cli, report
from interlingua.errors import DataError
from interlingua.evaluate import PREDICTION_COLUMNS, predictions_path, rows_for, write_rows
from interlingua.paired import PairingError, bridge_tests, mcnemar, mcnemar_exact

SPLIT = "a" * 64


def test_mcnemar_exact_known_values():
    # b=1, c=9: n=10, P[X <= 1] = (1 + 10) / 2^10; two-sided doubles it
    assert mcnemar_exact(1, 9) == pytest.approx(2 * 11 / 1024)
    # b=3, c=12: (C(15,0) + C(15,1) + C(15,2) + C(15,3)) = 576
    assert mcnemar_exact(3, 12) == pytest.approx(2 * 576 / 2 ** 15) == pytest.approx(0.03515625)
    assert mcnemar_exact(12, 3) == mcnemar_exact(3, 12)
    assert mcnemar_exact(0, 0) == 1.0 and mcnemar_exact(5, 5) == 1.0        # capped at 1
    assert mcnemar_exact(0, 6) == pytest.approx(2 / 64)
    # large counts stay exact (no float overflow of 2^n): 400 vs 600 discordant rows
    expected = 2 * sum(comb(1000, k) for k in range(401)) / 2 ** 1000
    assert mcnemar_exact(400, 600) == pytest.approx(expected) and 0 < expected < 1e-9


def frame(correct: list[bool], *, ids=None, labels=None, split=SPLIT) -> pd.DataFrame:
    ids = list(range(len(correct))) if ids is None else ids
    labels = [i % 2 for i in range(len(correct))] if labels is None else labels
    return pd.DataFrame({"split": split[:16], "example": ids, "label": labels,
                         "predicted": [y if ok else 1 - y for y, ok in zip(labels, correct)]})


def test_mcnemar_counts_discordant_rows_by_example_id():
    a = [True] * 12 + [False] * 3 + [True] * 5 + [False] * 5   # 12 only-A, 3 only-B, 5 both, 5 neither
    b = [False] * 12 + [True] * 3 + [True] * 5 + [False] * 5
    result = mcnemar(frame(a), frame(b))
    assert (result["n"], result["a_only"], result["b_only"]) == (25, 12, 3)
    assert result["accuracy_a"] == pytest.approx(17 / 25) and result["accuracy_b"] == pytest.approx(8 / 25)
    assert result["p_value"] == pytest.approx(mcnemar_exact(3, 12))
    # the same predictions in another row order pair by example id: the same test
    shuffled = frame(b).sample(frac=1.0, random_state=3)
    assert mcnemar(frame(a), shuffled) == result


def test_mcnemar_refuses_rows_that_are_not_the_same_examples():
    a = frame([True, False, True, True])
    with pytest.raises(PairingError, match="not scored on the same rows"):
        mcnemar(a, frame([True, False, True, True], ids=[0, 1, 2, 7]))
    with pytest.raises(PairingError, match="not scored on the same rows"):
        mcnemar(a, frame([True, False, True]))                              # a subset (e.g. a relay's 30 rows)
    with pytest.raises(PairingError, match="different eval splits"):
        mcnemar(a, frame([True, False, True, True], split="b" * 64))
    with pytest.raises(PairingError, match="gold label"):
        mcnemar(a, frame([True, False, True, True], labels=[1, 1, 0, 1]))
    with pytest.raises(PairingError, match="repeated"):
        mcnemar(a, frame([True, False, True, True], ids=[0, 1, 1, 3]))


def test_write_rows_writes_the_predictions_beside_the_result(tmp_path):
    base = {"task": "sst2", "method": "zero_shot", "sender": "", "receiver": "b", "bridge": "", "seed": "",
            "fingerprint": "fp"}
    labels, predicted = torch.tensor([0, 1, 1, 0]), torch.tensor([0, 1, 0, 0])
    out = write_rows(rows_for(base, predicted, labels, 1.0, examples=[3, 0, 2, 1], split=SPLIT),
                     tmp_path / "sst2.csv")
    results = pd.read_csv(out, keep_default_na=False)
    assert "per_example" not in results.columns and results.value[0] == 0.75
    predictions = pd.read_csv(predictions_path(out), keep_default_na=False)
    assert predictions_path(out).name == "sst2.predictions.csv"
    assert list(predictions.columns) == PREDICTION_COLUMNS
    assert predictions.example.tolist() == [3, 0, 2, 1] and predictions.predicted.tolist() == [0, 1, 0, 0]
    assert set(predictions.split) == {SPLIT[:16]} and set(predictions.method) == {"zero_shot"}
    with pytest.raises(ValueError):
        rows_for(base, predicted, labels, 1.0, examples=[0, 1], split=SPLIT)


# --- a hand-made study: one bridge run, its controls and the majority class, through collect and the tables

LABELS = [i % 2 for i in range(100)]


def predictions_of(correct_rows: set[int], order_seed: int) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Predictions right exactly on `correct_rows`, listed in a seeded order (stores are length-sorted)."""
    order = list(range(100))
    random.Random(order_seed).shuffle(order)
    labels = torch.tensor([LABELS[i] for i in order])
    predicted = torch.tensor([LABELS[i] if i in correct_rows else 1 - LABELS[i] for i in order])
    return predicted, labels, order


def write_study(tmp_path, bridge_split=SPLIT) -> list:
    bridge_base = {"task": "sst2", "method": "bridge", "sender": "a", "receiver": "b", "bridge": "perceiver",
                   "seed": 0, "fingerprint": "fp"}
    majority_right = {i for i in range(100) if LABELS[i] == 0} | {1, 3, 5, 7, 9, 11, 13, 15, 17}  # 59 rows
    sets = {"": set(range(85)), "shuffled_source": set(range(50)), "zero_source": majority_right}
    rows = []
    for variant, right in sets.items():
        predicted, labels, order = predictions_of(right, order_seed=1)
        rows += rows_for(bridge_base, predicted, labels, 1.0, variant, examples=order, split=bridge_split)
    bridge_csv = write_rows(rows, tmp_path / "bridge.csv")
    predicted, labels, order = predictions_of(majority_right, order_seed=2)
    majority_base = {"task": "sst2", "method": "majority", "sender": "", "receiver": "", "bridge": "", "seed": "",
                     "fingerprint": "m"}
    majority_csv = write_rows(rows_for(majority_base, predicted, labels, 0.0, examples=order, split=SPLIT)[:1],
                              tmp_path / "majority.csv")
    return [str(bridge_csv), str(majority_csv)]


def expected_p(bridge_right: set[int], control_right: set[int]) -> float:
    return mcnemar_exact(len(bridge_right - control_right), len(control_right - bridge_right))


def test_bridge_tests_against_each_control_and_the_best(tmp_path):
    inputs = write_study(tmp_path)
    out = tmp_path / "results.csv"
    report.collect(inputs, out, tmp_path / "predictions.csv", tmp_path / "paired_tests.csv")
    tests = pd.read_csv(tmp_path / "paired_tests.csv", keep_default_na=False).set_index("control")
    assert list(tests.index) == ["shuffled_source", "zero_source", "majority"]
    assert (tests.status == "ok").all() and (tests.n == 100).all()
    assert tests.bridge_accuracy.tolist() == [0.85] * 3
    assert tests.control_accuracy.tolist() == [0.50, 0.59, 0.59]
    # shuffled-source: right on 0..49, a subset of the bridge's 0..84: b = 35, c = 0
    assert (tests.bridge_only["shuffled_source"], tests.control_only["shuffled_source"]) == (35, 0)
    assert tests.p_value["shuffled_source"] == pytest.approx(mcnemar_exact(35, 0))
    majority_right = {i for i in range(100) if LABELS[i] == 0} | {1, 3, 5, 7, 9, 11, 13, 15, 17}
    assert tests.p_value["majority"] == pytest.approx(expected_p(set(range(85)), majority_right))
    # a tie in accuracy (zero-source and majority both 0.59) goes to the larger p; the run beats it
    assert tests.best_control.sum() == 1 and tests.best_control[["zero_source", "majority"]].any()
    assert tests.beats_best.all() and tests.significant.all()
    predictions = pd.read_csv(tmp_path / "predictions.csv")
    assert len(predictions) == 400 and list(predictions.columns) == PREDICTION_COLUMNS


def test_bridge_tests_never_pair_rows_of_another_split(tmp_path):
    inputs = write_study(tmp_path, bridge_split="c" * 64)
    frames = [pd.read_csv(path, keep_default_na=False, dtype=str) for path in inputs]
    tests = bridge_tests(pd.concat(frames), report.collect_predictions(inputs, frames)).set_index("control")
    assert tests.status["majority"].startswith("not paired: bridge and majority class were scored on different")
    assert pd.isna(tests.p_value["majority"])
    assert tests.status["shuffled_source"] == "ok"         # the run's own controls: the same store
    assert not tests.beats_best.any()                      # an untested control: no claim


def test_collect_refuses_results_without_predictions(tmp_path):
    inputs = write_study(tmp_path)
    predictions_path(inputs[1]).unlink()
    with pytest.raises(DataError, match="no per-example predictions"):
        report.collect(inputs, tmp_path / "results.csv", tmp_path / "predictions.csv", tmp_path / "tests.csv")


STUDY = {"tasks": ["sst2"], "bridges": ["perceiver"], "seeds": [0], "sweep_seeds": [0], "few_shot_seeds": [0],
         "pairs": [{"sender": "a", "receiver": "b"}], "ablation": {"tasks": ["sst2"], "bridges": ["perceiver"]},
         "same_model": {"tasks": ["sst2"]}}


def test_tables_give_the_paired_tests_in_their_notes(tmp_path):
    inputs = write_study(tmp_path)
    results = tmp_path / "results.csv"
    assert cli.main(["collect", "--out", str(results), "--predictions", str(tmp_path / "predictions.csv"),
                     "--paired-tests", str(tmp_path / "paired_tests.csv"), *inputs]) == 0
    majority_right = {i for i in range(100) if LABELS[i] == 0} | {1, 3, 5, 7, 9, 11, 13, 15, 17}
    p_majority = report._p_text(expected_p(set(range(85)), majority_right))
    for name in ("table2_main", "table1_architectures", "table8_bidirectional"):
        report.FIGURES[name](results, tmp_path / name, STUDY)
        text = (tmp_path / f"{name}.md").read_text()
        assert "McNemar's exact test" in text and "1 of 1 bridge runs beat their best control" in text, name
        (line,) = [line for line in text.splitlines() if line.startswith("- sst2, a -> b (perceiver) seed 0")]
        assert "bridge 0.850 (n=100)" in line and f"majority class 0.590 (p = {p_majority})" in line
        assert f"shuffled-source control 0.500 (p = {report._p_text(mcnemar_exact(35, 0))})" in line
        assert line.endswith(": yes")
        assert "McNemar" in (tmp_path / f"{name}.tex").read_text()


def test_tables_say_when_there_are_no_paired_tests(tmp_path):
    inputs = write_study(tmp_path)
    report.collect(inputs, tmp_path / "results.csv")                       # no predictions, no tests
    report.table2_main(tmp_path / "results.csv", tmp_path / "table2_main", STUDY)
    assert "no paired tests: paired_tests.csv not found" in (tmp_path / "table2_main.md").read_text()


def check_predictions(out, split, subset: bool = False) -> None:
    """Every accuracy row of `out` has its per-example rows: ids naming rows of `split` with their gold labels
    (all rows unless `subset`), agreeing with its accuracy."""
    from interlingua.tasks import read_split
    examples, meta = read_split(split)
    results = pd.read_csv(out, keep_default_na=False, dtype=str)
    predictions = pd.read_csv(predictions_path(out), keep_default_na=False, dtype=str)
    assert set(predictions.split) == {meta["content_sha256"][:16]}, out
    accuracy_rows = results[results.metric == "accuracy"]
    assert len(accuracy_rows) and len(predictions.groupby(["variant", "seed"])) == len(accuracy_rows), out
    for _, row in accuracy_rows.iterrows():
        mine = predictions[(predictions.variant == row.variant) & (predictions.seed == row.seed)]
        ids = sorted(mine.example.astype(int))
        assert len(ids) == int(row.n) and len(set(ids)) == len(ids), out
        assert set(ids) <= set(range(len(examples))) if subset else ids == list(range(len(examples))), out
        gold = [examples[int(i)]["label"] for i in mine.example]
        assert mine.label.astype(int).tolist() == gold, out                 # the id names the right row
        assert (mine.label == mine.predicted).mean() == pytest.approx(float(row.value)), out


def test_every_evaluation_writes_predictions_that_pair_across_methods(tiny_models, sst2_like_task, toy_mirror,
                                                                       tmp_path):
    """The real evaluations on tiny models: the bridge (store rows, length-sorted) and the text methods (split
    order) name each eval row by the same id, so their predictions pair; each file agrees with its accuracy."""
    from interlingua.evaluate import evaluate_bridge, evaluate_majority, evaluate_random, evaluate_zero_shot
    from interlingua.extract import extract
    from interlingua.store import ActivationStore
    from interlingua.tasks import materialize_split
    from interlingua.train import train_bridge

    cpu = torch.device("cpu")
    train_split, split = tmp_path / "train.jsonl", tmp_path / "validation.jsonl"
    materialize_split("toy", sst2_like_task, toy_mirror, "train", train_split)
    materialize_split("toy", sst2_like_task, toy_mirror, "eval", split)
    store = extract(tiny_models["sender"], split, tmp_path / "v.zarr", sender_prompt="Review: {text}", layers=[2],
                    storage_dtype="float32", batch_size=4, device=cpu, dtype=torch.float32)
    assert ActivationStore(store).example_index.tolist() != list(range(len(ActivationStore(store))))  # sorted rows
    train = {"steps": 1, "batch_size": 4, "lr": 1e-3, "weight_decay": 0.0, "warmup_steps": 0, "grad_clip": 1.0,
             "diversity_weight": 0.0, "checkpoint_every": 1, "loss": "labels"}
    bridge = {"type": "perceiver", "source_layer": 2, "dim": 16, "num_queries": 2, "depth": 1, "heads": 2}
    checkpoint = train_bridge(store, tiny_models["receiver"], tmp_path / "b.pt", bridge_name="p", bridge_spec=bridge,
                              task=sst2_like_task, train=train, seed=4, device=cpu, dtype=torch.float32)
    common = {"task_name": "toy", "task": sst2_like_task}
    outputs = [
        evaluate_bridge(store, tiny_models["receiver"], checkpoint, tmp_path / "bridge.csv", sender="s",
                        receiver_alias="r", bridge_name="p", batch_size=3, device=cpu, dtype=torch.float32, **common),
        evaluate_majority(train_split, split, tmp_path / "majority.csv", **common),
        evaluate_random(split, tmp_path / "random.csv", seeds=[0, 1], **common),
        evaluate_zero_shot(split, tiny_models["receiver"], tmp_path / "zero_shot.csv", model_alias="r", batch_size=3,
                           device=cpu, dtype=torch.float32, **common),
    ]
    for out in outputs:
        check_predictions(out, split)
    frames = [pd.read_csv(path, keep_default_na=False, dtype=str) for path in outputs]
    tests = bridge_tests(pd.concat(frames), report.collect_predictions([str(o) for o in outputs], frames))
    assert tests.control.tolist() == ["shuffled_source", "zero_source", "majority"]
    assert (tests.status == "ok").all(), tests.status.tolist()          # the store's rows pair with the split's


def test_trained_and_relayed_methods_write_their_predictions(tiny_models, sst2_like_task, toy_mirror, tmp_path):
    """k-shot, prompt tuning, fine-tuning and the relay (on a subset of rows: ids are split positions)."""
    from interlingua import finetune, relay
    from interlingua.evaluate import evaluate_prompt_tuning
    from interlingua.few_shot import evaluate_few_shot
    from interlingua.tasks import materialize_split
    from interlingua.train import train_prompt_tuning

    cpu, f32 = torch.device("cpu"), torch.float32
    train_split, split = tmp_path / "train.jsonl", tmp_path / "validation.jsonl"
    materialize_split("toy", sst2_like_task, toy_mirror, "train", train_split)
    materialize_split("toy", sst2_like_task, toy_mirror, "eval", split)
    common = {"task_name": "toy", "task": sst2_like_task, "device": cpu, "dtype": f32}
    train = {"steps": 1, "batch_size": 4, "lr": 1e-3, "weight_decay": 0.0, "warmup_steps": 0, "grad_clip": 1.0,
             "diversity_weight": 0.0, "checkpoint_every": 1, "loss": "labels"}
    few_shot = evaluate_few_shot(train_split, split, tiny_models["receiver"], tmp_path / "fs.csv", model_alias="r",
                                 shots=2, seed=1, batch_size=4, **common)
    prompt = train_prompt_tuning(train_split, tiny_models["receiver"], tmp_path / "pt.pt", task=sst2_like_task,
                                 train=train, prompt_tuning={"num_virtual_tokens": 2, "lr": 1e-2}, seed=0, device=cpu,
                                 dtype=f32)
    prompt_tuning = evaluate_prompt_tuning(split, tiny_models["receiver"], prompt, tmp_path / "pt.csv",
                                           receiver_alias="r", batch_size=4, **common)
    tuned = finetune.train_finetune(train_split, tiny_models["receiver"], tmp_path / "ft.pt", task=sst2_like_task,
                                    train=train, finetune={"method": "lora", "rank": 2, "alpha": 4, "lr": 1e-2},
                                    seed=0, device=cpu, dtype=f32)
    fine_tuned = finetune.evaluate_finetune(split, tiny_models["receiver"], tuned, tmp_path / "ft.csv",
                                            receiver_alias="r", batch_size=4, **common)
    relays = relay.generate_relay(tiny_models["sender"], split, tmp_path / "relay.jsonl", task=sst2_like_task,
                                  mode="summary", max_new_tokens=3, batch_size=4, device=cpu, dtype=f32)
    relayed = relay.evaluate_relay(relays, split, tiny_models["receiver"], tmp_path / "relay.csv", mode="summary",
                                   sender_alias="s", receiver_alias="r", batch_size=4, shots=2, seeds=[0, 1],
                                   train_split=train_split, **common)
    for out in (few_shot, prompt_tuning, fine_tuned):
        check_predictions(out, split)
    check_predictions(relayed, split)  # every eval row, as every other method
