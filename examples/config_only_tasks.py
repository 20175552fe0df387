"""Two classification tasks the pipeline has never seen, added by config only (issue 10 D's last criterion).

Derived from the MMLU mirror's question text (choices and answers dropped): `mmlu_area`, a 6-class subject area
(math, law, medicine, psychology, economics, history), and `mmlu_lawmed`, binary law vs medicine. Training rows
come from MMLU's test file, eval rows from its validation file (disjoint questions). Writes the rows and an
overlay config that adds the two tasks with the default settings (only their prompts and verbalizers are new)
and scores the main pair's bridge on them with its controls and baselines:

    python examples/config_only_tasks.py                       # -> data/extra_tasks/
    snakemake --cores all results/results.csv results/paired_tests.csv --configfile data/extra_tasks/overlay.yaml
"""
from __future__ import annotations

import argparse
import json
import os
from collections import Counter
from pathlib import Path

import yaml

AREAS = {
    "math": ["elementary_mathematics", "high_school_mathematics", "college_mathematics", "abstract_algebra",
             "high_school_statistics"],
    "law": ["professional_law", "international_law", "jurisprudence"],
    "medicine": ["clinical_knowledge", "college_medicine", "professional_medicine", "anatomy", "virology",
                 "nutrition", "medical_genetics"],
    "psychology": ["professional_psychology", "high_school_psychology"],
    "economics": ["high_school_macroeconomics", "high_school_microeconomics", "econometrics"],
    "history": ["high_school_world_history", "high_school_us_history", "high_school_european_history", "prehistory"],
}


def task_entry(out: Path, name: str, labels: list[str], instruction: str) -> dict:
    words = ", ".join(labels[:-1]) + " or " + labels[-1]
    return {"mirror": str((out / name).resolve() / "{split}.jsonl"), "splits": {"train": "train", "eval": "eval"},
            "subsample": {"train": 480, "eval": 100}, "text_field": "text", "label_field": "label",
            "label_names": labels, "verbalizers": [f" {label}" for label in labels],
            "prompts": {"text": f"Question: {{text}}\nSubject ({words}):", "sender": "Question: {text}",
                        "instruction": instruction}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=os.environ.get("INTERLINGUA_DATASETS", "../shared/datasets"))
    parser.add_argument("--out", type=Path, default=Path("data/extra_tasks"))
    args = parser.parse_args()
    area_of = {subject: i for i, area in enumerate(AREAS) for subject in AREAS[area]}
    law, medicine = list(AREAS).index("law"), list(AREAS).index("medicine")
    for source, split in [("test", "train"), ("validation", "eval")]:
        rows = [json.loads(line) for line in open(Path(args.datasets) / "mmlu" / f"{source}.jsonl", encoding="utf-8")]
        tasks = {"mmlu_area": [{"text": r["question"], "label": area_of[r["subject"]]}
                               for r in rows if r["subject"] in area_of],
                 "mmlu_lawmed": [{"text": r["question"], "label": [law, medicine].index(area_of[r["subject"]])}
                                 for r in rows if area_of.get(r["subject"]) in (law, medicine)]}
        for name, task_rows in tasks.items():
            (args.out / name).mkdir(parents=True, exist_ok=True)
            (args.out / name / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in task_rows))
            print(name, split, len(task_rows), "rows, labels", dict(sorted(Counter(r["label"] for r in task_rows).items())))
    subjects = list(AREAS)
    overlay = {
        "tasks": {
            "mmlu_area": task_entry(args.out, "mmlu_area", subjects,
                                    f"Subjects: {', '.join(subjects)}.\nQuestion:{{soft_tokens}}\nSubject:"),
            "mmlu_lawmed": task_entry(args.out, "mmlu_lawmed", ["law", "medicine"],
                                      "Is this exam question about law or medicine?\nQuestion:{soft_tokens}\nSubject:"),
        },
        # the main pair's bridge with its controls, majority, random, 0- and 5-shot; nothing else
        "study": {"tasks": ["mmlu_area", "mmlu_lawmed"],
                  "pairs": [{"sender": "smollm2", "receiver": "gemma3", "text_relay": False}],
                  "prompt_tuning": [], "ablation": {"tasks": [], "bridges": ["perceiver"]},
                  "token_scaling": {"tasks": [], "num_queries": [8]}, "hyperparameters": {"tasks": [], "sweep": {}},
                  "same_model": {"tasks": []}, "finetune": {"tasks": [], "cot_relay": False},
                  "speed": {"tasks": []}, "neighbours": {"tasks": []}},
    }
    (args.out / "overlay.yaml").write_text(yaml.safe_dump(overlay, sort_keys=False))
    print("wrote", args.out / "overlay.yaml")


if __name__ == "__main__":
    main()
