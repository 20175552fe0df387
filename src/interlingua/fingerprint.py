"""Stable content fingerprints: the key under which cached artifacts are reused."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

# Bump when the meaning of a stored artifact changes (new layout, different hooks, ...).
STORE_FORMAT_VERSION = 1


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def fingerprint(obj: Any, length: int = 16) -> str:
    """sha256 of the canonical JSON of `obj`, shortened."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:length]


def file_sha256(path: str | Path, block: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(block):
            digest.update(chunk)
    return digest.hexdigest()
