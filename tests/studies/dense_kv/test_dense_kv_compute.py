"""Analytic FLOPs (studies/dense_kv/compute.py) against torch's own count of a tiny model's matmuls."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from interlingua.studies.dense_kv.compute import forward_flops, generation_flops
from interlingua.tiny import TINY_GEMMA3, TINY_LLAMA, build_random_model, build_tokenizer


@pytest.mark.parametrize("architecture", [TINY_LLAMA, TINY_GEMMA3], ids=["llama", "gemma3"])
def test_forward_flops_match_torchs_count(architecture):
    model = build_random_model(architecture, build_tokenizer("bytes")).eval()
    model.set_attn_implementation("eager")   # attention as matmuls, which the counter sees
    ids = torch.randint(4, 200, (1, 12))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.get_decoder()(input_ids=ids)
    counted = counter.get_total_flops()
    # eager attention multiplies every query with all 12 keys, then masks; the analytic count is causal.
    ours = forward_flops(model.config, 12)
    config = model.config
    q = config.num_attention_heads * (getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)
    square = 4 * q * 12 * 12 * config.num_hidden_layers
    causal = 4 * q * (12 * 13 // 2) * config.num_hidden_layers
    assert ours - causal + square == pytest.approx(counted, rel=0.02)


def test_generation_adds_one_scored_token_step_per_generated_token():
    config = build_random_model(TINY_LLAMA, build_tokenizer("bytes")).config
    assert generation_flops(config, 20, 1) == forward_flops(config, 20, head_rows=config.vocab_size)
    extra = generation_flops(config, 20, 20) - generation_flops(config, 20, 10)   # tokens 11..20
    steps = sum(forward_flops(config, 1, 20 + t, head_rows=config.vocab_size) for t in range(9, 19))
    assert extra == pytest.approx(steps)
