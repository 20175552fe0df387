"""Sharing activations through DVC: one clone runs `dvc repro` and pushes, a fresh clone pulls, and
`snakemake figures` has nothing to do there (reuse is decided by content, not timestamps). dvc.yaml's
code deps are what each stage's commands reach, so `dvc status` names exactly the stages an edit touches."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from interlingua.config import deep_merge, read_yaml
from interlingua.sources import module_files

from conftest import REPO

BIN = Path(sys.executable).parent
DVC = str(BIN / "dvc")
needs_dvc = pytest.mark.skipif(not (BIN / "dvc").exists(), reason="dvc is not installed")
# The interlingua commands each stage's Snakemake target runs (its jobs; upstream stages come first).
STAGE_COMMANDS = {
    "models": ["materialize-model", "continue-model"],
    "tasks": ["materialize-task"],
    "extract": ["extract"],
    "train": ["train-bridge", "train-prompt-tuning", "train-finetune"],
    "evaluate": ["eval-random", "eval-majority", "eval-zero-shot", "eval-few-shot", "generate-relay", "eval-relay", "eval-finetune",
                 "measure-latency", "measure-throughput", "collect"],
    "figures": ["report", "figures-readme", "soft-token-neighbours", "kv-report", "dense-report"],
    "kv_alignment": ["pool-corpus", "pool-pretrain", "kv-align", "kv-portability"],
    "dense_kv": ["extract", "dense-train", "dense-evaluate", "dense-text", "dense-shared-space"],
}


def sh(cwd: Path, *cmd: str, venv_on_path: bool = True) -> str:
    """Run a command; without `venv_on_path` as on a fresh shell (the venv not activated)."""
    path = os.environ["PATH"].split(os.pathsep)
    path = [str(BIN)] + path if venv_on_path else [p for p in path if Path(p).resolve() != BIN.resolve()]
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True,
                            env={**os.environ, "PATH": os.pathsep.join(path), "DVC_NO_ANALYTICS": "1"})
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed in {cwd}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result.stdout + result.stderr


def make_project(path: Path) -> None:
    """A copy of the repository whose params.yaml is the smoke config (DVC reads params.yaml)."""
    tracked = sh(REPO, "git", "ls-files", "--cached", "--others", "--exclude-standard").split()
    for name in tracked:
        if (REPO / name).is_file() or (REPO / name).is_symlink():
            (path / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, path / name, follow_symlinks=False)
    smoke = deep_merge(read_yaml(REPO / "params.yaml"), read_yaml(REPO / "config/smoke.yaml"))
    # Sharing is about the activations: one task and direction is enough (the smoke DAG test runs the rest).
    smoke["study"] = {"tasks": ["sst2"], "pairs": smoke["study"]["pairs"][:1], "bridges": ["perceiver"],
                      "seeds": [0], "speed": {"tasks": ["sst2"]}}
    # Study 3 on the same one task (its out-of-domain task would materialize splits no other stage owns).
    # Without the one-tokenizer direction, whose shared-space baseline reads a study-2 run of the kv_alignment stage.
    smoke["dense_kv"] = dict(smoke["dense_kv"], tasks=["sst2"], ood=[], shared_space={},
                             directions={**smoke["dense_kv"]["directions"], "llamabpe_gemma3": None})
    smoke.setdefault("paths", {})["datasets"] = str((REPO / "../shared/datasets").resolve())
    (path / "params.yaml").write_text(yaml.safe_dump(smoke, sort_keys=False))


def planned_jobs(cwd: Path, *args: str) -> set[str]:
    out = sh(cwd, sys.executable, "-m", "snakemake", "--cores", "2", "-n", *args, "--quiet", "rules")
    return {line.split()[0] for line in out.splitlines()
            if line and line.split()[0].isidentifier() and line.split()[-1].isdigit() and line.split()[0] != "total"}


def test_dvc_stages_declare_the_code_their_commands_reach():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert set(stages) == set(STAGE_COMMANDS)
    for name, stage in stages.items():
        code = {dep for dep in stage["deps"] if dep.startswith("src/interlingua/")}
        expected = {f"src/interlingua/{f}" for f in module_files(STAGE_COMMANDS[name])}
        assert code == expected, f"stage {name}: missing {sorted(expected - code)}, extra {sorted(code - expected)}"
        assert stage["cmd"].startswith("sh workflow/scripts/snakemake --cores all "), name
    outs = {name: {next(iter(o)) if isinstance(o, dict) else o for o in stage.get("outs", [])}
            for name, stage in stages.items()}
    # training jobs write their result CSVs: those are the train stage's outputs, not evaluate's
    assert {"results/bridge", "results/prompt_tuning"} <= outs["train"]
    assert not outs["evaluate"] & {"results/bridge", "results/prompt_tuning"}
    assert "tasks" in stages["extract"]["params"] and "tasks" in stages["evaluate"]["params"]


@needs_dvc
def test_repro_push_pull_and_the_teammate_has_nothing_to_do(tmp_path):
    first, second, remote = tmp_path / "first", tmp_path / "second", tmp_path / "remote"
    first.mkdir()
    make_project(first)
    sh(first, "git", "init", "-q")
    (first / ".venv").symlink_to(BIN.parent)  # the venv `make setup` creates; ignored by git and DVC
    (first / ".git/info/exclude").write_text(".venv\n")
    sh(first, DVC, "remote", "add", "-d", "local", str(remote))
    sh(first, "git", "add", "-A")
    sh(first, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "project")
    sh(first, DVC, "repro", venv_on_path=False)  # as the README writes it: no activated venv
    assert "up to date" in sh(first, DVC, "status")
    sh(first, DVC, "push")
    sh(first, "git", "add", "-A")
    sh(first, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "lock")

    # An edit to one bridge touches the stages whose commands run it, not models, tasks or extraction.
    perceiver = first / "src/interlingua/bridges/perceiver.py"
    original = perceiver.read_text()
    perceiver.write_text(original.replace("    def forward(self", "    def forward(self", 1) + "\n# edited\n")
    changed = set(json.loads(sh(first, DVC, "status", "--json")))
    assert changed == {"train", "evaluate", "figures"}
    perceiver.write_text(original)

    sh(tmp_path, "git", "clone", "-q", str(first), str(second))
    sh(second, DVC, "pull")
    assert (second / "data/activations").exists() and (second / "figures/table2_main.md").exists()
    # DVC restores files with new timestamps, in its own order: nothing may look stale.
    assert planned_jobs(second, "figures") == set()
