"""examples/: the config-only tasks script writes rows and an overlay the config schema accepts."""
from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO
from interlingua import study
from interlingua.config import load_config


def test_config_only_tasks_overlay_validates_and_plans_the_new_tasks(tmp_path):
    mmlu = tmp_path / "mirror/mmlu"
    mmlu.mkdir(parents=True)
    rows = [("professional_law", "May a tenant sublet?"), ("anatomy", "Which bone is the femur?"),
            ("prehistory", "When were cave paintings made?"), ("sociology", "not one of the six areas")]
    for source in ("test", "validation"):
        (mmlu / f"{source}.jsonl").write_text("".join(
            json.dumps({"subject": s, "question": f"{q} ({source})", "choices": ["a", "b"], "answer": 0}) + "\n"
            for s, q in rows))
    out = tmp_path / "extra"
    subprocess.run([sys.executable, str(REPO / "examples/config_only_tasks.py"), "--datasets",
                    str(tmp_path / "mirror"), "--out", str(out)], check=True, capture_output=True)
    area = [json.loads(line) for line in (out / "mmlu_area/train.jsonl").read_text().splitlines()]
    assert [r["label"] for r in area] == [1, 2, 5] and area[0]["text"] == "May a tenant sublet? (test)"
    lawmed = [json.loads(line) for line in (out / "mmlu_lawmed/eval.jsonl").read_text().splitlines()]
    assert [r["label"] for r in lawmed] == [0, 1]
    config = load_config(REPO / "params.yaml", out / "overlay.yaml")
    assert config["study"]["tasks"] == ["mmlu_area", "mmlu_lawmed"]
    assert config["tasks"]["mmlu_area"]["verbalizers"][2] == " medicine"
    assert {run["task"] for run in study.bridge_runs(config)} == {"mmlu_area", "mmlu_lawmed"}
