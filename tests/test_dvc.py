"""Sharing activations through DVC: one clone extracts and pushes, a fresh clone pulls and runs
`snakemake figures`, and no extraction job runs there (reuse is decided by content)."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from interlingua.config import deep_merge, read_yaml

from conftest import REPO

BIN = Path(sys.executable).parent
pytestmark = pytest.mark.skipif(not (BIN / "dvc").exists(), reason="dvc is not installed")


def sh(cwd: Path, *cmd: str) -> str:
    env_path = f"{BIN}:{__import__('os').environ['PATH']}"
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True,
                            env={**__import__("os").environ, "PATH": env_path, "DVC_NO_ANALYTICS": "1"})
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
    smoke.setdefault("paths", {})["datasets"] = str((REPO / "../shared/datasets").resolve())
    (path / "params.yaml").write_text(yaml.safe_dump(smoke, sort_keys=False))


def test_pull_then_snakemake_runs_no_extraction(tmp_path):
    first, second, remote = tmp_path / "first", tmp_path / "second", tmp_path / "remote"
    first.mkdir()
    make_project(first)
    sh(first, "git", "init", "-q")
    sh(first, "dvc", "remote", "add", "-d", "local", str(remote))
    sh(first, "git", "add", "-A")
    sh(first, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "project")
    sh(first, "dvc", "repro")
    assert "didn't change" in sh(first, "dvc", "repro") or "up to date" in sh(first, "dvc", "status")
    sh(first, "dvc", "push")
    sh(first, "git", "add", "-A")
    sh(first, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "lock")

    sh(tmp_path, "git", "clone", "-q", str(first), str(second))
    sh(second, "dvc", "pull")
    assert (second / "data/activations").exists()
    out = sh(second, sys.executable, "-m", "snakemake", "--cores", "2", "figures")
    assert "rule extract" not in out and "extract" not in sh(second, "ls", "logs")
    assert (second / "figures/table2_main.md").exists()
