"""A zoo model briefly trained further on another text: the same tokenizer, other weights (study 3's
same-tokenizer reference: issue 6's expert recipe, a parent branched onto one corpus, applied to a real model).

Config: `models.<alias>.continued = {base: <alias>, corpus: tinystories | wikitext, steps, lr, ...}`
(`ContinuedConfig`). Training starts from the base's materialized directory; the corpus is one of study 2's
text corpora (studies/kv_alignment/corpus.py: the datasets mirror's TinyStories excerpt or WikiText-103
articles), its documents joined by the tokenizer's end-of-sequence token into one stream. The last
`held_out` documents are kept out; their NLL before and after is recorded (how far the copy moved).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .errors import ConfigError, DataError
from .runtime import lr_lambda, seed_everything


@dataclass
class ContinuedConfig:
    base: str                   # the zoo alias it starts from
    corpus: str = "wikitext"    # a study-2 corpus name
    steps: int = 40
    lr: float = 3e-5
    batch: int = 8
    seq_len: int = 128
    warmup: int = 4
    seed: int = 0
    held_out: int = 20          # documents kept out for the NLL before and after
    eval_windows: int = 16

    @classmethod
    def from_dict(cls, data: dict) -> "ContinuedConfig":
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown or "base" not in data:
            raise ConfigError(f"models.<alias>.continued: needs `base`; unknown key(s) {unknown} "
                              f"(known: {sorted(cls.__dataclass_fields__)})")
        config = cls(**data)
        if config.steps < 1 or config.batch < 1 or config.seq_len < 2:
            raise ConfigError(f"models.<alias>.continued: steps, batch >= 1 and seq_len >= 2, got {asdict(config)}")
        return config


def corpus_files(name: str) -> list[str]:
    """The corpus's files, relative to the datasets mirror."""
    from .studies.kv_alignment.corpus import CORPORA

    if name not in CORPORA:
        raise ConfigError(f"models.<alias>.continued.corpus: unknown corpus '{name}' (known: {sorted(CORPORA)})")
    return list(CORPORA[name][0])


def _stream(documents: list[str], tokenizer) -> np.ndarray:
    sep = tokenizer.eos_token_id
    ids = []
    for document in documents:
        ids += tokenizer(document, add_special_tokens=False)["input_ids"] + [sep]
    return np.asarray(ids, dtype=np.int64)


def _windows(stream: np.ndarray, seq_len: int, count: int, generator: np.random.Generator) -> torch.Tensor:
    if len(stream) <= seq_len:
        raise DataError(f"continued training: the corpus has {len(stream)} tokens, fewer than seq_len {seq_len}")
    starts = generator.integers(0, len(stream) - seq_len, size=count)
    return torch.from_numpy(np.stack([stream[s:s + seq_len] for s in starts]))


@torch.no_grad()
def _nll(model, windows: torch.Tensor, batch: int) -> float:
    total, count = 0.0, 0
    for start in range(0, len(windows), batch):
        ids = windows[start:start + batch]
        loss = model(input_ids=ids, labels=ids).loss
        total += float(loss) * ids.numel()
        count += ids.numel()
    return total / count


def train_continued(model, tokenizer, config: ContinuedConfig, datasets_dir: str | Path) -> dict:
    """Train `model` (in place, fp32) on the corpus; returns the record (NLL before and after, curve)."""
    from .studies.kv_alignment.corpus import read_documents

    seed_everything(config.seed)
    documents = read_documents(datasets_dir, config.corpus)
    if len(documents) <= config.held_out:
        raise DataError(f"continued training: corpus '{config.corpus}' has {len(documents)} documents, "
                        f"held_out = {config.held_out}")
    train, held = _stream(documents[:-config.held_out], tokenizer), _stream(documents[-config.held_out:], tokenizer)
    generator = np.random.default_rng(config.seed)
    eval_windows = _windows(held, config.seq_len, config.eval_windows, np.random.default_rng(10_000 + config.seed))
    model.train()
    before = _nll(model, eval_windows, config.batch)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config.warmup, config.steps))
    curve = []
    for step in tqdm(range(config.steps), desc=f"continue on {config.corpus}"):
        ids = _windows(train, config.seq_len, config.batch, generator)
        loss = model(input_ids=ids, labels=ids).loss
        if not math.isfinite(float(loss.detach())):
            raise DataError(f"continued training: loss {float(loss.detach())} at step {step + 1} (lower lr {config.lr})")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        curve.append({"step": step + 1, "loss": float(loss.detach())})
    model.eval()
    after = _nll(model, eval_windows, config.batch)
    return {"config": asdict(config), "held_out_nll_before": before, "held_out_nll_after": after,
            "train_tokens": int(len(train)), "curve": curve}


def materialize_continued(alias: str, spec: dict, base_dir: str | Path, datasets_dir: str | Path,
                          out_dir: str | Path) -> Path:
    """data/models/<alias>/ as zoo.materialize writes it (safetensors, tokenizer, manifest), from the base's
    materialized model trained further; the training record (NLL before and after) in the manifest."""
    from .runtime import DTYPES, atomic_dir
    from .zoo import MANIFEST, load_model, load_tokenizer, model_fingerprint

    config = ContinuedConfig.from_dict(spec["continued"])
    model = load_model(base_dir, torch.device("cpu"), torch.float32, frozen=False)
    tokenizer = load_tokenizer(base_dir)
    record = train_continued(model, tokenizer, config, datasets_dir)
    storage = DTYPES[spec.get("storage_dtype", "bfloat16")]
    with atomic_dir(Path(out_dir)) as tmp:   # a killed job never leaves a half model
        model.to(storage).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        manifest = {"alias": alias, "source": spec, "files": spec.get("files", {}), "fingerprint": model_fingerprint(spec),
                    "architecture": type(model).__name__, "parameters": sum(p.numel() for p in model.parameters()),
                    "continued": record}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return Path(out_dir)
