"""Paired tests between methods scored on the same eval rows (McNemar's exact test).

Two methods are compared example by example: b = rows only the first gets right, c = rows only the
second gets right. Under "equally accurate", the b + c discordant rows split as Binomial(b + c, 1/2);
the exact two-sided p is min(1, 2 P[X <= min(b, c)]) (1 when nothing is discordant).

Rows are paired by example id (the row's position in the eval split) within one eval split (its
content hash). Predictions of different splits, different or repeated ids, or different gold labels
are refused: a paired test never pairs rows that are not the same examples.

`bridge_tests` tests every bridge run of a results table against its shuffled-source and zero-source
controls (the same run's other variants) and the majority class of its task; `collect` writes them
to results/paired_tests.csv and the tables quote them in their notes.
"""
from __future__ import annotations

from math import comb

import pandas as pd

from .errors import DataError

ALPHA = 0.05
CONTROLS = {"shuffled_source": "shuffled-source control", "zero_source": "zero-source control",
            "majority": "majority class"}
TEST_COLUMNS = ["task", "sender", "receiver", "bridge", "seed", "fingerprint", "control", "n", "bridge_accuracy",
                "control_accuracy", "bridge_only", "control_only", "p_value", "best_control", "significant",
                "beats_best", "status"]
RUN_KEYS = ["task", "method", "variant", "sender", "receiver", "bridge", "seed", "fingerprint"]


class PairingError(DataError):
    """Two prediction sets that are not the same examples."""


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p from the discordant counts (b: only A right, c: only B right)."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(comb(n, k) for k in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2 ** n)  # exact integers; int / int is a correctly rounded float


def correctness(predictions: pd.DataFrame, name: str = "predictions") -> pd.DataFrame:
    """A run's per-example rows indexed by example id, with `correct`; refuses repeated ids or splits."""
    splits = set(predictions["split"].astype(str))
    if len(splits) != 1:
        raise PairingError(f"{name}: rows of {len(splits)} eval splits ({sorted(splits)}), not one")
    ids = predictions["example"].astype(int)
    if ids.duplicated().any():
        raise PairingError(f"{name}: example ids repeated (e.g. {sorted(set(ids[ids.duplicated()]))[:3]})")
    frame = pd.DataFrame({"label": predictions["label"].astype(int).to_numpy(),
                          "predicted": predictions["predicted"].astype(int).to_numpy()}, index=ids.to_numpy())
    frame["correct"] = frame.label == frame.predicted
    frame.attrs["split"] = splits.pop()
    return frame.sort_index()


def mcnemar(a: pd.DataFrame, b: pd.DataFrame, names=("A", "B")) -> dict:
    """McNemar's exact test of two runs' per-example predictions (columns split, example, label, predicted),
    paired by example id: {n, accuracy_a, accuracy_b, a_only, b_only, p_value}. Raises PairingError
    unless both cover the same examples of the same split with the same gold labels."""
    a, b = correctness(a, names[0]), correctness(b, names[1])
    if a.attrs["split"] != b.attrs["split"]:
        raise PairingError(f"{names[0]} and {names[1]} were scored on different eval splits "
                           f"({a.attrs['split']} vs {b.attrs['split']})")
    if not a.index.equals(b.index):
        only_a, only_b = sorted(set(a.index) - set(b.index)), sorted(set(b.index) - set(a.index))
        raise PairingError(f"{names[0]} and {names[1]} were not scored on the same rows: {len(a)} vs {len(b)} "
                           f"examples, {len(only_a)} only in {names[0]} (e.g. {only_a[:3]}), {len(only_b)} only in "
                           f"{names[1]} (e.g. {only_b[:3]})")
    differ = a.index[a.label != b.label]
    if len(differ):
        raise PairingError(f"{names[0]} and {names[1]} disagree on the gold label of {len(differ)} examples "
                           f"(e.g. {list(differ[:3])}): not the same rows")
    a_only, b_only = int((a.correct & ~b.correct).sum()), int((~a.correct & b.correct).sum())
    return {"n": len(a), "accuracy_a": float(a.correct.mean()), "accuracy_b": float(b.correct.mean()),
            "a_only": a_only, "b_only": b_only, "p_value": mcnemar_exact(a_only, b_only)}


def _text(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.astype(str).replace({"nan": ""})


def bridge_tests(results: pd.DataFrame, predictions: pd.DataFrame, alpha: float = ALPHA) -> pd.DataFrame:
    """Every bridge run (variant "") of `results` against its shuffled-source and zero-source controls and
    its task's majority class: one row per (run, control), columns TEST_COLUMNS. `best_control` marks the
    most accurate control (ties: the largest p), `significant` a control the bridge beats (higher accuracy
    and p < alpha), `beats_best` whether the run beats its best control. A control that cannot be paired
    (no predictions, other rows) gets no p and says why in `status`."""
    results, predictions = _text(results), _text(predictions)
    acc = results[results.metric == "accuracy"]
    runs = {key: part for key, part in predictions.groupby(RUN_KEYS, sort=False)}
    out = []
    for _, run in acc[(acc.method == "bridge") & (acc.variant == "")].iterrows():
        key = tuple(run[k] for k in RUN_KEYS)
        base = {k: run[k] for k in TEST_COLUMNS[:6]}
        controls = {variant: [tuple(run[k] if k != "variant" else variant for k in RUN_KEYS)]
                    for variant in ("shuffled_source", "zero_source")}
        majority = acc[(acc.method == "majority") & (acc.task == run.task)]
        controls["majority"] = [tuple(r[k] for k in RUN_KEYS) for _, r in majority.iterrows()]
        rows = []
        for control, keys in controls.items():
            row = dict(base, control=control, status="ok")
            found = [k for k in keys if k in runs]
            if key not in runs:
                row["status"] = "no per-example predictions of the bridge run"
            elif len(found) != 1:
                row["status"] = (f"no per-example predictions of the {CONTROLS[control]}" if not found else
                                 f"{len(found)} {CONTROLS[control]} runs for this task: which one is ambiguous")
            else:
                try:
                    test = mcnemar(runs[key], runs[found[0]], ("bridge", CONTROLS[control]))
                except PairingError as error:
                    row["status"] = f"not paired: {error}"
                else:
                    row.update(n=test["n"], bridge_accuracy=test["accuracy_a"], control_accuracy=test["accuracy_b"],
                               bridge_only=test["a_only"], control_only=test["b_only"], p_value=test["p_value"])
            rows.append(row)
        tested = [r for r in rows if r["status"] == "ok"]
        for r in rows:
            r["significant"] = r["status"] == "ok" and r["bridge_accuracy"] > r["control_accuracy"] \
                and r["p_value"] < alpha
            r["best_control"] = False
        if tested:
            best = max(tested, key=lambda r: (r["control_accuracy"], r["p_value"]))
            best["best_control"] = True
        complete = len(tested) == len(rows)
        for r in rows:  # a run whose controls are not all tested does not beat "the best" of them
            r["beats_best"] = complete and any(t["best_control"] and t["significant"] for t in tested)
        out += rows
    return pd.DataFrame(out).reindex(columns=TEST_COLUMNS)


def write_bridge_tests(results_path, predictions_path, out_path) -> pd.DataFrame:
    results = pd.read_csv(results_path, keep_default_na=False, dtype=str)
    predictions = pd.read_csv(predictions_path, keep_default_na=False, dtype=str)
    tests = bridge_tests(results, predictions)
    tests.to_csv(out_path, index=False)
    return tests
