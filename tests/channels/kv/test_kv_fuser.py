"""The C2C-style gated fuser (channels/kv/fuser.py)."""
import torch

from interlingua.channels.kv.cache import KVBlock
from interlingua.channels.kv.dense import DenseConfig, DenseTransform
from interlingua.channels.kv.fuser import GatedFuser, fuse_in_place
from interlingua.channels.kv.translators import CacheShape


def block(shape: CacheShape, B=2, T=4):
    keys = [torch.randn(B, shape.heads(l), T, shape.dim(l)) for l in range(shape.num_layers)]
    values = [torch.randn(B, shape.heads(l), T, shape.dim(l)) for l in range(shape.num_layers)]
    return keys, values


def test_a_closed_gate_keeps_the_receivers_own_cache_and_an_open_one_takes_the_transferred():
    sender, receiver = CacheShape(4, 2, 8), CacheShape(3, 1, 12)
    transform = DenseTransform(sender, receiver, DenseConfig(layer_window=1))
    torch.nn.init.normal_(transform.weight["key0"])
    own, theirs = block(receiver), block(sender)
    closed = GatedFuser(transform, gate_init=-40.0)(own, theirs)
    for got, want in zip(closed[0] + closed[1], own[0] + own[1]):
        torch.testing.assert_close(got, want)
    opened = GatedFuser(transform, gate_init=40.0)(own, theirs)
    moved = transform(*theirs)
    for got, want in zip(opened[0] + opened[1], moved[0] + moved[1]):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    fuser = GatedFuser(transform)
    sum(t.sum() for t in fuser(own, theirs)[0]).backward()
    assert fuser.gate["key0"].grad is not None and fuser.project["key0"].grad.abs().sum() > 0


def test_fuse_in_place_replaces_only_the_fused_positions():
    shape = CacheShape(2, 1, 4)
    keys, values = block(shape, B=1, T=5)
    own = KVBlock(keys, values, torch.ones(1, 5, dtype=torch.long), torch.arange(5)[None])
    fused = KVBlock([torch.zeros(1, 1, 2, 4)] * 2, [torch.ones(1, 1, 2, 4)] * 2, torch.ones(1, 2, dtype=torch.long),
                    torch.tensor([[1, 3]]))
    out = fuse_in_place(own, fused)
    assert torch.equal(out.keys[0][0, 0, [1, 3]], torch.zeros(2, 4)) and torch.equal(out.values[1][0, 0, [1, 3]], torch.ones(2, 4))
    assert torch.equal(out.keys[0][0, 0, [0, 2, 4]], keys[0][0, 0, [0, 2, 4]])
