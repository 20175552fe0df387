"""Rotary embedding removed from and re-applied to the keys a real forward pass caches."""
import json

import pytest
import torch
from transformers import DynamicCache

from interlingua.runtime import cache_kwarg

from interlingua.channels.kv.rotary import RotarySpec, rotary_layout, rotary_specs, rotate, unrotate
from interlingua.errors import ConfigError, DataError
from interlingua.extract import kv_layout
from interlingua.tiny import TINY_GEMMA3, TINY_LLAMA, build_random_model, build_tokenizer

# Gemma-3 as the real one: a local base for sliding-window layers, a scaled global base for full attention.
GEMMA3_SCALED = {**TINY_GEMMA3, "rope_parameters": {
    "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
    "full_attention": {"rope_type": "linear", "rope_theta": 1000000.0, "factor": 8.0}}}
# YaRN multiplies cos and sin by an attention factor != 1: unrotate must divide it out.
LLAMA_YARN = {**TINY_LLAMA, "rope_parameters": {"rope_type": "yarn", "rope_theta": 500000.0, "factor": 4.0,
                                                "original_max_position_embeddings": 128}}
MODELS = {"llama": TINY_LLAMA, "gemma3": TINY_GEMMA3, "gemma3_scaled": GEMMA3_SCALED, "llama_yarn": LLAMA_YARN}


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer("bytes")


def model_of(name, tokenizer):
    return build_random_model(MODELS[name], tokenizer).eval()


def pre_rotary_keys(model, ids, mask, positions):
    """Keys before rotation, captured by hooks (k_proj output per head; after k_norm where there is one),
    and the keys the model cached, per layer (B, H, T, D)."""
    captured, hooks = {}, []
    for index, layer in enumerate(model.model.layers):
        attention = layer.self_attn
        if hasattr(attention, "k_norm"):   # Gemma-3: (B, H, T, D) already normalised per head
            hook = attention.k_norm.register_forward_hook(lambda m, i, o, index=index: captured.__setitem__(index, o))
        else:                              # Llama: (B, T, H*D) -> (B, H, T, D)
            def hook(m, i, o, index=index, head_dim=attention.head_dim):
                captured[index] = o.view(*o.shape[:2], -1, head_dim).transpose(1, 2)
            hook = attention.k_proj.register_forward_hook(hook)
        hooks.append(hook)
    cache = DynamicCache()
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **{cache_kwarg(model): cache})
    for hook in hooks:
        hook.remove()
    return [captured[i] for i in range(len(model.model.layers))], [layer.keys for layer in cache.layers]


def ragged_batch(starts, lengths, vocab, window):
    """Left-padded ids (B, T), mask and positions that start at each row's `starts` value."""
    longest = max(lengths)
    ids = torch.randint(4, vocab, (len(lengths), longest))
    mask = torch.zeros_like(ids)
    positions = torch.zeros_like(ids)
    for row, (start, n) in enumerate(zip(starts, lengths)):
        mask[row, longest - n:] = 1
        positions[row, longest - n:] = torch.arange(start, start + n)
    assert longest > window
    return ids, mask, positions


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("starts", [(0, 0, 0), (0, 7, 300)])
def test_unrotate_recovers_the_pre_rotary_keys_of_the_cache(tokenizer, name, starts):
    torch.manual_seed(0)
    model = model_of(name, tokenizer)
    ids, mask, positions = ragged_batch(starts, [24, 9, 17], len(tokenizer), window=16)
    before, cached = pre_rotary_keys(model, ids, mask, positions)
    specs = rotary_specs(model.config)
    assert len(specs) == len(cached) == model.config.num_hidden_layers
    for spec, keys, expected in zip(specs, cached, before):
        assert not torch.allclose(keys, expected, atol=1e-3)  # the cache really is rotated
        torch.testing.assert_close(unrotate(keys, positions, spec), expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(rotate(expected, positions, spec), keys, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(rotate(unrotate(keys, positions, spec), positions, spec), keys, atol=1e-5, rtol=1e-5)


def test_gemma3_specs_have_a_local_and_a_global_base(tokenizer):
    specs = rotary_specs(model_of("gemma3_scaled", tokenizer).config)
    assert [s.attention_type for s in specs] == ["sliding_attention", "sliding_attention", "full_attention"]
    local, global_ = specs[0], specs[2]
    assert (local.base, global_.base) == (10000.0, 1000000.0) and local.key_norm and global_.key_norm
    assert global_.rope_type == "linear" and global_.scaling["factor"] == 8.0
    # linear scaling divides the global frequencies by the factor
    torch.testing.assert_close(global_.inv_freq * 8.0, RotarySpec(base=1e6, rotary_dim=24).frequencies())
    torch.testing.assert_close(local.inv_freq, RotarySpec(base=1e4, rotary_dim=24).frequencies())


def test_yarn_attention_scaling_is_recorded(tokenizer):
    (spec, *_) = rotary_specs(model_of("llama_yarn", tokenizer).config)
    assert spec.attention_scaling > 1.0 and not spec.key_norm and spec.rotary_dim == 16


def test_rotary_layout_is_json_and_in_the_kv_layout(tokenizer):
    config = model_of("gemma3_scaled", tokenizer).config
    layout = json.loads(json.dumps(kv_layout(config)))
    rotary = layout["rotary"]
    assert rotary == json.loads(json.dumps(rotary_layout(config)))
    assert [layer["type"] for layer in rotary["layers"]] == layout["layer_types"]
    assert [layer["base"] for layer in rotary["layers"]] == [10000.0, 10000.0, 1000000.0]
    llama = rotary_layout(model_of("llama", tokenizer).config)["layers"]
    assert {layer["type"] for layer in llama} == {"full_attention"} and not llama[0]["key_norm"]


def test_bad_shapes_and_position_dependent_schemes_are_refused(tokenizer):
    spec = RotarySpec(rotary_dim=16)
    with pytest.raises(DataError, match="positions"):
        unrotate(torch.zeros(2, 1, 5, 16), torch.zeros(2, 4, dtype=torch.long), spec)
    with pytest.raises(DataError, match="B, H, T, D"):
        rotate(torch.zeros(5, 16), torch.zeros(1, 5, dtype=torch.long), spec)
    dynamic = model_of("llama", tokenizer).config
    dynamic.rope_parameters = {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0}
    with pytest.raises(ConfigError, match="dynamic"):
        rotary_specs(dynamic)
