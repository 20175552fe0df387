"""The `code` param of each job: a hash of the package modules its command reaches (interlingua/sources.py)."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from conftest import REPO
from interlingua import sources

PACKAGE = Path(sources.__file__).resolve().parent
BRIDGE_COMMANDS = {"train-bridge", "eval-bridge", "measure-latency", "measure-throughput", "soft-token-neighbours"}
UNTOUCHED_BY_BRIDGES = {"materialize-model", "materialize-task", "extract", "eval-zero-shot", "eval-few-shot",
                        "eval-random", "generate-relay", "eval-relay", "train-prompt-tuning", "eval-prompt-tuning",
                        "train-finetune", "eval-finetune", "collect", "report", "figures-readme"}


@pytest.fixture
def package(tmp_path) -> Path:
    copy = tmp_path / "interlingua"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def hashes(root: Path) -> dict[str, str]:
    sources.command_sources.cache_clear()
    sources._parsed.cache_clear()
    return {command: sources.code_hash(command, root) for command in sources.commands(root)}


def edit_function_body(path: Path, function: str) -> None:
    """Add a statement at the top of `def function(...)`'s body (as a changed computation would)."""
    text = path.read_text()
    match = re.search(rf"\n(\s*)def {function}\(.*?\).*?:\n(\s*)", text, flags=re.S)
    assert match, function
    at = match.end()
    path.write_text(text[:at] + "_edited = 1\n" + match.group(2) + text[at:])


def test_every_command_is_analysed():
    assert BRIDGE_COMMANDS | UNTOUCHED_BY_BRIDGES <= set(sources.commands())
    extract = sources.command_sources("extract")
    assert {"extract.py", "store.py", "zoo.py", "tasks.py", "cli.py:cmd_extract"} <= set(extract)
    assert not any(name.startswith("bridges/") or name == "train.py" for name in extract)
    # an import inside a function counts: the store's check imports extract.py's fingerprint
    assert "extract.py" in sources.command_sources("train-bridge")


def test_editing_a_bridge_changes_bridge_jobs_only(package):
    before = hashes(package)
    edit_function_body(package / "bridges/perceiver.py", "forward")
    after = hashes(package)
    changed = {command for command in before if before[command] != after[command]}
    assert BRIDGE_COMMANDS <= changed
    assert not changed & UNTOUCHED_BY_BRIDGES


def test_editing_one_command_in_cli_changes_that_command_only(package):
    before = hashes(package)
    edit_function_body(package / "cli.py", "cmd_report")
    after = hashes(package)
    assert {command for command in before if before[command] != after[command]} == {"report"}


def test_editing_extraction_changes_extraction_and_its_readers(package):
    before = hashes(package)
    edit_function_body(package / "extract.py", "extract")
    after = hashes(package)
    changed = {command for command in before if before[command] != after[command]}
    assert "extract" in changed and "eval-zero-shot" not in changed and "materialize-task" not in changed


def test_every_rule_that_runs_the_cli_carries_its_code_hash():
    """Each `{CLI} <command>` rule has `code=code("<command>")` (or the kind's f-string) in its params."""
    for path in sorted((REPO / "workflow/rules").glob("*.smk")):
        for block in re.split(r"\n(?=rule |checkpoint )", path.read_text()):
            commands = re.findall(r"\{CLI\} ([a-z-]+)", block)
            if not commands:
                continue
            name = block.split()[1].rstrip(":")
            for command in commands:
                if command == "measure-":
                    assert 'code=lambda w: code(f"measure-{w.kind}")' in block, name
                else:
                    assert re.search(rf'code=.*code\("{command}"\)', block), f"rule {name}: no code hash of {command}"
