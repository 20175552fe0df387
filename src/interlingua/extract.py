"""Run a frozen sender over a task split and stream chosen layers' hidden states to a store."""
from __future__ import annotations

import contextlib
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import __version__, zoo
from .fingerprint import STORE_FORMAT_VERSION, fingerprint
from .store import StoreWriter, read_manifest
from .tasks import read_split


def extraction_fingerprint(model_fp: str, task_sha: str, sender_prompt: str, layers, storage_dtype: str,
                           compute_dtype: str) -> str:
    return fingerprint({"model": model_fp, "task": task_sha, "prompt": sender_prompt, "layers": sorted(layers),
                        "storage": storage_dtype, "compute": compute_dtype, "format": STORE_FORMAT_VERSION})


def decoder_of(model):
    """The transformer trunk (embeddings + blocks) of a causal LM."""
    return model.get_decoder() if hasattr(model, "get_decoder") else model.model


@contextlib.contextmanager
def capture_layers(decoder, layers: list[int]):
    """Record the output of each requested block (0 = embeddings); blocks past the deepest are cut off."""
    captured: dict[int, torch.Tensor] = {}
    all_blocks = decoder.layers
    deepest = max(layers)
    if deepest > len(all_blocks):
        raise ValueError(f"layer {deepest} requested but the model has {len(all_blocks)} blocks")

    def hook_for(layer):
        def hook(_module, _inputs, output):
            captured[layer] = output[0] if isinstance(output, tuple) else output
        return hook

    handles = [(decoder.embed_tokens if layer == 0 else all_blocks[layer - 1]).register_forward_hook(hook_for(layer))
               for layer in layers]
    decoder.layers = all_blocks[:deepest]  # the sender never runs blocks nobody reads
    try:
        yield captured
    finally:
        decoder.layers = all_blocks
        for handle in handles:
            handle.remove()


def encode_texts(tokenizer, texts: list[str]) -> list[list[int]]:
    return [tokenizer(text, add_special_tokens=True)["input_ids"] for text in texts]


@torch.inference_mode()
def sender_states(decoder, batch_ids: list[list[int]], layers: list[int], pad_id: int, device, dtype):
    """Hidden states of each layer for a batch: {layer: (B, T, d)} and the lengths (B,)."""
    lengths = [len(ids) for ids in batch_ids]
    longest = max(lengths)
    ids = torch.full((len(batch_ids), longest), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(batch_ids):
        ids[i, :len(row)] = torch.tensor(row)
        mask[i, :len(row)] = 1
    with capture_layers(decoder, layers) as captured:
        autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()
        with autocast:
            decoder(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
    return {layer: captured[layer] for layer in layers}, lengths


def extract(model_dir: str | Path, split_path: str | Path, out_path: str | Path, *, sender_prompt: str,
            layers: list[int], storage_dtype: str, batch_size: int, device, dtype,
            shard_tokens: int = 65536, chunk_tokens: int = 1024, model_alias: str = "") -> Path:
    rows, task_meta = read_split(split_path)
    model_meta = zoo.read_manifest(model_dir)
    tokenizer = zoo.load_tokenizer(model_dir)
    model = zoo.load_model(model_dir, device, torch.float32 if device.type == "cpu" else dtype)
    decoder = decoder_of(model)
    layers = sorted(layers)
    token_ids = encode_texts(tokenizer, [sender_prompt.format(text=row["text"]) for row in rows])
    # Length-sorted batches waste little padding; the store keeps each row's example index.
    order = sorted(range(len(rows)), key=lambda i: len(token_ids[i]))
    writer = StoreWriter(out_path, model.config.hidden_size, layers, storage_dtype, shard_tokens, chunk_tokens)
    started = time.perf_counter()
    with tqdm(total=len(rows), desc=f"extract {Path(out_path).name}", unit="ex") as bar:
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            states, lengths = sender_states(decoder, [token_ids[i] for i in batch], layers,
                                            tokenizer.pad_token_id, device, dtype)
            for j, i in enumerate(batch):
                writer.add(np.asarray(token_ids[i]), {l: states[l][j, :lengths[j]] for l in layers},
                           rows[i]["label"], i)
            bar.update(len(batch))
    compute = str(dtype).removeprefix("torch.")
    manifest = {
        "kind": "hidden_states", "model": model_alias or model_meta["alias"], "model_source": model_meta["source"],
        "model_fingerprint": model_meta["fingerprint"], "tokenizer": type(tokenizer).__name__,
        "vocab_size": len(tokenizer), "task": task_meta["task"], "role": task_meta["role"],
        "split": task_meta["split"], "task_sha256": task_meta["content_sha256"], "sender_prompt": sender_prompt,
        "layers": layers, "hidden_size": model.config.hidden_size, "num_model_layers": model.config.num_hidden_layers,
        "storage_dtype": storage_dtype, "compute_dtype": compute, "code_version": __version__,
        "format_version": STORE_FORMAT_VERSION, "seconds": round(time.perf_counter() - started, 2),
        "fingerprint": extraction_fingerprint(model_meta["fingerprint"], task_meta["content_sha256"], sender_prompt,
                                              layers, storage_dtype, compute),
    }
    return writer.finish(manifest)
