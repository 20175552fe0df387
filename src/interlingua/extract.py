"""Run a frozen sender over a task split and stream hidden states (and KV caches) to a store.

Rows are tokenized first, so the store's size is known before any forward pass; batches are
length-sorted and fixed, so an interrupted run recomputes exactly the batches that were not
durable and the finished store is identical to an uninterrupted one.
"""
from __future__ import annotations

import contextlib
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import __version__, zoo
from .channels.kv.rotary import rotary_layout
from .fingerprint import STORE_FORMAT_VERSION, fingerprint
from .runtime import cache_kwarg
from .store import StoreWriter, kv_keys, layer_key, read_manifest, verify, writer_lock
from .errors import ConfigError
from .tasks import DEFAULT_MAX_TOKENS, fit_examples, read_split


def extraction_fingerprint(model_fp: str, task_sha: str, sender_prompt: str, layers, storage_dtype: str,
                           compute_dtype: str, kv_cache: bool = False, max_tokens: int | None = None,
                           code: str = "", row_limit: int | None = None) -> str:
    """`code`: the hash of the extraction code (the workflow's `code` param), so edited code never reuses
    or resumes a store written by the old one."""
    content = {"model": model_fp, "task": task_sha, "prompt": sender_prompt, "layers": sorted(layers),
               "storage": storage_dtype, "compute": compute_dtype, "format": STORE_FORMAT_VERSION}
    if max_tokens is not None:  # stores written before max_tokens existed have none
        content["max_tokens"] = max_tokens
    if kv_cache:
        content["kv_cache"] = True
    if code:
        content["code"] = code
    if row_limit is not None:
        content["row_limit"] = row_limit
    return fingerprint(content)


def decoder_of(model):
    """The transformer trunk (embeddings + blocks) of a causal LM."""
    return model.get_decoder() if hasattr(model, "get_decoder") else model.model


@contextlib.contextmanager
def capture_layers(decoder, layers: list[int], run_all: bool = False):
    """Record the output of each requested block (0 = embeddings); blocks past the deepest are cut off
    unless `run_all` (a full KV cache needs every block)."""
    captured: dict[int, torch.Tensor] = {}
    all_blocks = decoder.layers
    deepest = max(layers)
    check_layers(layers, len(all_blocks))

    def hook_for(layer):
        def hook(_module, _inputs, output):
            captured[layer] = output[0] if isinstance(output, tuple) else output
        return hook

    handles = [(decoder.embed_tokens if layer == 0 else all_blocks[layer - 1]).register_forward_hook(hook_for(layer))
               for layer in layers]
    if not run_all:
        decoder.layers = all_blocks[:deepest]  # the sender never runs blocks nobody reads
    try:
        yield captured
    finally:
        decoder.layers = all_blocks
        for handle in handles:
            handle.remove()


def check_layers(layers, depth: int, model: str = "the sender") -> None:
    """Layers past a model's depth stop the job before the model runs, naming the keys that ask for them."""
    beyond = sorted(layer for layer in layers if layer > depth)
    if beyond:
        raise ConfigError(f"layer(s) {beyond} requested (extract.layers, or a bridge's source_layer) but "
                          f"{model} has {depth} blocks: layers go from 0 (embeddings) to {depth}")


def kv_layout(config) -> dict:
    """Shapes and attention layout of a model's KV cache, recorded in the manifest."""
    heads = config.num_key_value_heads or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    layer_types = list(getattr(config, "layer_types", None) or ["full_attention"] * config.num_hidden_layers)
    return {"num_layers": config.num_hidden_layers, "num_kv_heads": heads, "head_dim": head_dim,
            "num_attention_heads": config.num_attention_heads, "grouped_query": heads != config.num_attention_heads,
            "layer_types": layer_types, "sliding_window": getattr(config, "sliding_window", None),
            "positions": "keys stored after rotary embedding, as in the model's cache",
            "rotary": rotary_layout(config)}


@torch.inference_mode()
def sender_states(decoder, batch_ids: list[list[int]], layers: list[int], pad_id: int, device, dtype,
                  kv_cache: bool = False):
    """{layer: (B, T, d)}, the KV cache (a DynamicCache holding every token of every layer, or None)."""
    from transformers import DynamicCache

    longest = max(len(ids) for ids in batch_ids)
    ids = torch.full((len(batch_ids), longest), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(batch_ids):
        ids[i, :len(row)] = torch.tensor(row)
        mask[i, :len(row)] = 1
    # A config-less DynamicCache keeps every position, also for sliding-window layers.
    cache = DynamicCache() if kv_cache else None
    with capture_layers(decoder, layers, run_all=kv_cache) as captured:
        autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()
        with autocast:
            decoder(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=kv_cache,
                    **{cache_kwarg(decoder): cache})
    return {layer: captured[layer] for layer in layers}, cache


def store_covers(path: Path, fingerprint_request: dict) -> bool:
    """An existing, intact store holds at least what is asked (a superset of layers, KV if asked)."""
    try:
        manifest = read_manifest(path)
    except Exception:
        return False
    same = all(manifest.get(k) == v for k, v in fingerprint_request.items() if k not in ("layers", "kv_cache"))
    layers_ok = set(fingerprint_request["layers"]) <= set(manifest["layers"])
    kv_ok = not fingerprint_request["kv_cache"] or "kv" in manifest
    return same and layers_ok and kv_ok and not verify(path)


def extract(model_dir: str | Path, split_path: str | Path, out_path: str | Path, *, sender_prompt: str,
            layers: list[int], storage_dtype: str, batch_size: int, device, dtype, kv_cache: bool = False,
            shard_tokens: int = 65536, chunk_tokens: int = 1024, model_alias: str = "",
            max_tokens: int = DEFAULT_MAX_TOKENS, code: str = "", limit: int | None = None) -> Path:
    """Store the sender's states of every row (of the first `limit` rows: a study that reads fewer, e.g.
    study 3's training rows); a row's text is cut to `max_tokens` tokens (and the model's positions), the
    count recorded in the manifest (`truncated_rows`)."""
    out_path = Path(out_path)
    rows, task_meta = read_split(split_path)
    if limit is not None:
        rows = rows[:limit]
    model_meta = zoo.read_manifest(model_dir)
    layers = sorted(layers)
    check_layers(layers, zoo.load_config(model_dir).num_hidden_layers, f"model {model_alias or model_dir}")
    compute = str(torch.float32 if device.type == "cpu" else dtype).removeprefix("torch.")
    request = {"model_fingerprint": model_meta["fingerprint"], "task_sha256": task_meta["content_sha256"],
               "sender_prompt": sender_prompt, "storage_dtype": storage_dtype, "compute_dtype": compute,
               "format_version": STORE_FORMAT_VERSION, "layers": layers, "kv_cache": kv_cache,
               "max_tokens": max_tokens}
    if limit is not None:
        request["row_limit"] = limit
    if code:
        request["code"] = code
    if store_covers(out_path, request):
        print(f"{out_path}: an intact store already holds this request; nothing to extract")
        return out_path
    with writer_lock(out_path):
        return _extract(model_dir, rows, task_meta, model_meta, out_path, request, batch_size, device, dtype,
                        shard_tokens, chunk_tokens, model_alias)


def _extract(model_dir, rows, task_meta, model_meta, out_path, request, batch_size, device, dtype,
             shard_tokens, chunk_tokens, model_alias) -> Path:
    layers, kv_cache, sender_prompt = request["layers"], request["kv_cache"], request["sender_prompt"]
    tokenizer = zoo.load_tokenizer(model_dir)
    config = zoo.load_config(model_dir)
    rows, truncated = fit_examples({"max_tokens": request["max_tokens"]}, tokenizer, config, rows,
                                   frame=sender_prompt.format(text=""), where=f"tasks.{task_meta['task']}.max_tokens")
    # Character spans (for token alignment across tokenizers) come with the ids from fast tokenizers.
    spans = bool(getattr(tokenizer, "is_fast", False))
    encoded = [tokenizer(sender_prompt.format(text=row["text"]), add_special_tokens=True,
                         return_offsets_mapping=spans) for row in rows]
    token_ids = [e["input_ids"] for e in encoded]
    # Length-sorted, fixed batches waste little padding; the store keeps each row's example index.
    order = sorted(range(len(rows)), key=lambda i: len(token_ids[i]))
    d, storage = config.hidden_size, request["storage_dtype"]
    arrays = {"token_ids": ((), "int32"), **{layer_key(l): ((d,), storage) for l in layers}}
    if spans:
        arrays["char_spans"] = ((2,), "int32")
    kv = kv_layout(config) if kv_cache else None
    if kv:
        for layer in range(kv["num_layers"]):
            for key in kv_keys(layer):
                arrays[key] = ((kv["num_kv_heads"], kv["head_dim"]), storage)
    key = extraction_fingerprint(request["model_fingerprint"], request["task_sha256"], sender_prompt, layers,
                                 storage, request["compute_dtype"], kv_cache, request["max_tokens"],
                                 request.get("code", ""), request.get("row_limit"))
    writer = StoreWriter(out_path, key=key, lengths=[len(token_ids[i]) for i in order],
                         labels=[rows[i]["label"] for i in order], example_index=order, arrays=arrays,
                         shard_tokens=shard_tokens, chunk_tokens=chunk_tokens)
    first_batch = writer.first_row_to_compute // batch_size
    model = zoo.load_model(model_dir, device, torch.float32 if device.type == "cpu" else dtype)
    decoder = decoder_of(model)
    started = time.perf_counter()
    with tqdm(total=len(rows), initial=first_batch * batch_size, desc=f"extract {out_path.name}", unit="ex") as bar:
        for start in range(first_batch * batch_size, len(order), batch_size):
            batch = order[start:start + batch_size]
            states, cache = sender_states(decoder, [token_ids[i] for i in batch], layers, tokenizer.pad_token_id,
                                          device, dtype, kv_cache)
            for j, i in enumerate(batch):
                n = len(token_ids[i])
                values = {"token_ids": np.asarray(token_ids[i], dtype=np.int32),
                          **{layer_key(l): states[l][j, :n] for l in layers}}
                if spans:
                    values["char_spans"] = np.asarray(encoded[i]["offset_mapping"], dtype=np.int32).reshape(n, 2)
                if cache is not None:
                    for layer, cached in enumerate(cache.layers):
                        keys_name, values_name = kv_keys(layer)
                        values[keys_name] = cached.keys[j, :, :n].transpose(0, 1)      # (T, H, D)
                        values[values_name] = cached.values[j, :, :n].transpose(0, 1)  # (T, H, D)
                writer.add(start + j, values)
            bar.update(len(batch))
    manifest = {
        "kind": "activations", "model": model_alias or model_meta["alias"], "model_source": model_meta["source"],
        "tokenizer": type(tokenizer).__name__, "vocab_size": len(tokenizer), "task": task_meta["task"],
        "role": task_meta["role"], "split": task_meta["split"], "hidden_size": d,
        "num_model_layers": config.num_hidden_layers, "code_version": __version__,
        "seconds": round(time.perf_counter() - started, 2), "fingerprint": key, "truncated_rows": truncated,
        **{k: v for k, v in request.items() if k != "kv_cache"},
    }
    if kv:
        manifest["kv"] = kv
    return writer.finish(manifest)
