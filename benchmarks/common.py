"""Shared set-up for the benchmark scripts: real packaged models, SST-2 rows, timing helpers.

Run after `make figures` (or `snakemake --cores all models tasks`) so data/models/ and
data/tasks/ exist. Every script prints ratios measured side by side in one run.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

SENDER, RECEIVER, TASK = "smollm2", "gemma3", "sst2"


def require(path: Path) -> Path:
    if not path.exists():
        sys.exit(f"{path} is missing: run `snakemake --cores all models tasks` first")
    return path


def model_dir(alias: str) -> Path:
    return require(REPO / "data/models" / alias)


def split_path(split: str = "train") -> Path:
    return require(REPO / f"data/tasks/{TASK}/{split}.jsonl")


def rows(split: str = "train", n: int | None = None) -> list[dict]:
    lines = split_path(split).read_text().splitlines()[:n]
    return [json.loads(line) for line in lines]


def timed(fn, repeat: int = 1) -> float:
    """Best wall time of `repeat` runs (seconds)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def report(name: str, value: float, target: str, ok: bool) -> None:
    print(f"{name:<58} {value:>10.3f}   target {target:<12} {'OK' if ok else 'MISSED'}")
