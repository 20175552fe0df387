"""Which package sources a CLI command runs, and their hash: what a job's params carry as `code`.

Static analysis with `ast`, no import: starting from the command's function in cli.py, every name
it uses is followed to its definition (a function, class or constant of a package module, or an
import, also one inside a function), and so on. A module reached this way counts whole: its file's
sha256 is in the hash, so any edit to it reruns the jobs that reach it; a module only imported
beside (evaluate.py imports train.py, which imports every bridge) but never used by the command
does not. cli.py itself dispatches every command, so only the definitions a command reaches count
there. Parent packages (`__init__.py`) run on import and always count.

    code_hash("train-bridge")      # -> 16 hex digits; editing bridges/perceiver.py changes it
    command_sources("extract")     # -> {"cli.py:cmd_extract": ..., "extract.py": ..., ...}
"""
from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path

from .fingerprint import fingerprint

PACKAGE_DIR = Path(__file__).resolve().parent
DISPATCH = "cli"  # the module counted per definition, not whole


class _Module:
    """One parsed module: its top-level definitions, import bindings and import-time statements."""

    def __init__(self, name: str, path: Path, package: str):
        self.name, self.path = name, path
        self.source = path.read_text(encoding="utf-8")
        self.tree = ast.parse(self.source, filename=str(path))
        self.is_package = path.name == "__init__.py"
        self.defs: dict[str, list[ast.AST]] = {}
        self.bindings: dict[str, tuple] = {}
        self.always: list[ast.AST] = []  # statements that run on import (other than defs and imports)
        for node in self.tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                self.defs.setdefault(node.name, []).append(node)
            elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names = [n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)]
                for name in names:
                    self.defs.setdefault(name, []).append(node)
                if not names:
                    self.always.append(node)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                for name, target in _import_targets(node, self, package):
                    self.bindings[name] = target
            elif not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) or _is_main_block(node)):
                self.always.append(node)  # not a docstring, nor `if __name__ == "__main__":` (not run on import)


def _is_main_block(node) -> bool:
    return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare) and isinstance(node.test.left, ast.Name)
            and node.test.left.id == "__name__")


def _import_targets(node, module: _Module, package: str):
    """(bound name, target) for each name an import binds; target ("module", m) or ("symbol", m, name).
    Imports from outside the package bind nothing we follow."""
    modules = _index(package)
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name == package or alias.name.startswith(package + "."):
                bound = alias.asname or alias.name.split(".")[0]
                yield bound, ("module", alias.name if alias.asname else package)
        return
    if node.level:
        parts = module.name.split(".")
        base_parts = parts if module.is_package else parts[:-1]
        base_parts = base_parts[:len(base_parts) - (node.level - 1)]
        base = ".".join(base_parts + ([node.module] if node.module else []))
    elif node.module and (node.module == package or node.module.startswith(package + ".")):
        base = node.module
    else:
        return
    for alias in node.names:
        bound = alias.asname or alias.name
        if alias.name == "*":
            yield "*", ("module", base)
        elif f"{base}.{alias.name}" in modules:
            yield bound, ("module", f"{base}.{alias.name}")
        else:
            yield bound, ("symbol", base, alias.name)


@functools.cache
def _index(package: str = PACKAGE_DIR.name, root: Path = PACKAGE_DIR) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).with_suffix("")
        parts = [package, *rel.parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


@functools.cache
def _parsed(name: str, path: Path, package: str) -> _Module:
    return _Module(name, path, package)


class _Reach:
    """Follows names from an entry definition; collects reached modules and dispatch definitions."""

    def __init__(self, package: str, root: Path):
        self.package, self.root = package, root
        self.modules = _index(package, root)
        self.whole: set[str] = set()       # modules counted whole
        self.parts: set[tuple[str, str]] = set()  # (dispatch module, definition) counted alone
        self.seen: set[tuple] = set()

    def module(self, name: str) -> _Module:
        return _parsed(name, self.modules[name], self.package)

    def enter_module(self, name: str) -> None:
        """A module is imported: it and its parent packages count, and their import-time statements run."""
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            parent = ".".join(parts[:i])
            if parent in self.modules and ("entered", parent) not in self.seen:
                self.seen.add(("entered", parent))
                if parent.split(".")[-1] != DISPATCH:
                    self.whole.add(parent)
                for node in self.module(parent).always:
                    self.walk(parent, node)

    def follow(self, target: tuple) -> None:
        if target in self.seen:
            return
        self.seen.add(target)
        if target[0] == "module":
            name = target[1]
            if name not in self.modules:
                return
            self.enter_module(name)
            if name.split(".")[-1] != DISPATCH:
                for node in self.module(name).tree.body:
                    self.walk(name, node)
            return
        _, name, symbol = target
        if name not in self.modules:
            return
        self.enter_module(name)
        module = self.module(name)
        if symbol in module.defs:
            if name.split(".")[-1] == DISPATCH:
                self.parts.add((name, symbol))
            for node in module.defs[symbol]:
                self.walk(name, node)
        elif symbol in module.bindings:
            self.follow(module.bindings[symbol])
        elif f"{name}.{symbol}" in self.modules:
            self.follow(("module", f"{name}.{symbol}"))
        else:  # not found statically (star import, globals()): the whole module, to be safe
            self.follow(("module", name))

    def walk(self, name: str, node: ast.AST) -> None:
        module = self.module(name)
        attribute_bases = set()
        for sub in ast.walk(node):
            if isinstance(sub, (ast.Import, ast.ImportFrom)):  # e.g. an import inside a function: used there
                for _, target in _import_targets(sub, module, self.package):
                    self.follow(target)
            elif isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name):
                target = self._resolve(module, sub.value.id)
                if target is not None and target[0] == "module":
                    attribute_bases.add(id(sub.value))
                    self.follow(("symbol", target[1], sub.attr))
        for sub in ast.walk(node):
            if isinstance(sub, ast.Name) and id(sub) not in attribute_bases:
                target = self._resolve(module, sub.id)
                if target is not None:
                    self.follow(target)

    def _resolve(self, module: _Module, name: str):
        if name in module.defs:
            return ("symbol", module.name, name)
        return module.bindings.get(name)


@functools.cache
def commands(root: Path = PACKAGE_DIR) -> dict[str, str]:
    """CLI command name -> its function in cli.py, read from build_parser's `command(name, func, ...)` calls."""
    tree = ast.parse((root / f"{DISPATCH}.py").read_text(encoding="utf-8"))
    found = {}
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "command"
                and len(node.args) >= 2 and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[1], ast.Name)):
            found[node.args[0].value] = node.args[1].id
    return found


@functools.cache
def command_sources(command: str, root: Path = PACKAGE_DIR) -> dict[str, str]:
    """What the command runs: {file relative to the package (or "cli.py:<function>"): sha256}."""
    root = Path(root)
    package = root.name
    table = commands(root)
    if command not in table:
        raise KeyError(f"unknown interlingua command '{command}' (known: {sorted(table)})")
    reach = _Reach(package, root)
    reach.follow(("symbol", f"{package}.{DISPATCH}", table[command]))
    sources = {}
    for name in reach.whole:
        path = reach.modules[name]
        sources[path.relative_to(root).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    for name, symbol in reach.parts:
        module = reach.module(name)
        lines = module.source.splitlines()
        text = "\n".join("\n".join(lines[node.lineno - 1:node.end_lineno]) for node in module.defs[symbol])
        rel = reach.modules[name].relative_to(root).as_posix()
        sources[f"{rel}:{symbol}"] = hashlib.sha256(text.encode()).hexdigest()
    return dict(sorted(sources.items()))


def code_hash(command: str, root: Path = PACKAGE_DIR) -> str:
    """One short hash of everything `command_sources` lists: a job's `code` param."""
    return fingerprint(command_sources(command, Path(root)))


# What builds the DAG: every DVC stage runs Snakemake, which imports these to plan its jobs.
DAG_MODULES = ("config.py", "study.py", "sources.py", "fingerprint.py", "tasks.py", "zoo.py", "errors.py", "continued.py",
               "schemas/config.schema.yaml", "studies/__init__.py", "studies/kv_alignment/__init__.py",
               "studies/kv_alignment/plan.py", "studies/kv_alignment/configs.py", "studies/kv_alignment/corpus.py",
               "studies/kv_alignment/pretrain.py", "studies/dense_kv/__init__.py", "studies/dense_kv/plan.py",
               "studies/dense_kv/configs.py", "channels/__init__.py", "channels/kv/__init__.py",
               "channels/kv/translators", "channels/kv/dense.py", "channels/kv/cache.py", "channels/kv/rotary.py",
               "channels/kv/tokens.py", "channels/kv/transfer.py")


def module_files(commands_: list[str], root: Path = PACKAGE_DIR) -> list[str]:
    """Package files (relative to the package) that the given commands run or the DAG is built from: the
    code deps of a DVC stage running those commands (cli.py counts whole: DVC hashes files)."""
    root = Path(root)
    files = set(DAG_MODULES) | {"cli.py", "__init__.py", "__main__.py"}
    for command in commands_:
        files |= {name.split(":")[0] for name in command_sources(command, root)}
    for package in sorted({f.rsplit("/", 1)[0] for f in files if "/" in f and f.endswith(".py")}):
        every = {p.relative_to(root).as_posix() for p in (root / package).glob("*.py")}
        nested = any((root / package).glob("*/__init__.py"))  # a directory dep would cover its subpackages too
        if every <= files and not nested:  # a whole leaf subpackage (the bridges): one directory dep
            files = (files - every) | {package}
    return sorted(files)
