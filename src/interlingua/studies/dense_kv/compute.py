"""Analytic compute (FLOPs) per example, for cache transfer and text communication alike.

A decoder forward of `new` tokens after `context` cached ones costs, per layer,
    projections  2 * new * (d * H*D_h  [q]  +  2 * d * H_kv*D_h  [k, v]  +  H*D_h * d  [o])
    MLP          2 * new * 3 * d * I   (gated: gate, up, down)
    attention    2 * 2 * H*D_h * sum over the new tokens of the keys each attends to  [QK^T, AV]
                 (a sliding-window layer attends to at most `sliding_window` keys)
and the output head 2 * d * rows per scored position (V rows for a generated token; the C label rows
for a classification, the way both paths score). Norms, rotary and softmax are left out (a few percent).
Multiply-adds count 2. The same formula prices every path, so ratios are what it is for.
"""
from __future__ import annotations


def _layer_types(config) -> list[str]:
    types = getattr(config, "layer_types", None)
    return list(types) if types else ["full_attention"] * config.num_hidden_layers


def forward_flops(config, new: int, context: int = 0, head_rows: int = 0, head_positions: int = 1) -> float:
    """FLOPs of one forward of `new` tokens after `context` cached positions; the head scores `head_rows`
    vocabulary rows at `head_positions` positions (0 rows: no head)."""
    d, inter = config.hidden_size, config.intermediate_size
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or d // heads
    q, kv = heads * head_dim, kv_heads * head_dim
    window = getattr(config, "sliding_window", None)
    total = 0.0
    for kind in _layer_types(config):
        total += 2 * new * (d * q + 2 * d * kv + q * d) + 2 * new * 3 * d * inter
        seen = sum(min(context + t + 1, window) if kind == "sliding_attention" and window else context + t + 1
                   for t in range(new))
        total += 4 * q * seen
    return total + 2 * d * head_rows * head_positions


def generation_flops(config, prompt: int, generated: int) -> float:
    """A greedy generation: the prompt's forward, then one token at a time, each scored over the vocabulary."""
    flops = forward_flops(config, prompt, 0, config.vocab_size, 1)
    for t in range(max(generated - 1, 0)):
        flops += forward_flops(config, 1, prompt + t, config.vocab_size, 1)   # token t+1 after prompt + t
    return flops


def transform_flops(transform, positions: int) -> float:
    """The cache transformation's affine maps at `positions` receiver positions (pooling is ~free)."""
    return 2.0 * positions * sum(w.numel() for w in transform.weight.values())


def cache_transfer_flops(sender_config, receiver_config, transform, *, sender_tokens: int, transferred: int,
                         prompt_tokens: int, classes: int) -> dict:
    """Per example: the sender reads the input, the transformation maps the aligned positions, the receiver
    reads its prompt after the transferred cache (+ its sink) and scores the classes."""
    parts = {"sender": forward_flops(sender_config, sender_tokens),
             "transform": transform_flops(transform, transferred),
             "receiver": forward_flops(receiver_config, prompt_tokens, transferred + 1, classes)}
    return parts | {"total": sum(parts.values())}


def text_flops(sender_config, receiver_config, *, sender_prompt_tokens: int, generated: int, receiver_tokens: int,
               classes: int) -> dict:
    """Per example: the sender reads its request and writes `generated` tokens; the receiver reads the message
    in its prompt and scores the classes (shared demonstrations, cached once per seed, are not counted)."""
    parts = {"sender": generation_flops(sender_config, sender_prompt_tokens, generated),
             "receiver": forward_flops(receiver_config, receiver_tokens, 0, classes)}
    return parts | {"total": sum(parts.values())}
