"""KV translators: identity, linear, cross-attention adapters (through S) and the closed-form ridge map."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from interlingua.channels.kv.translators import (CacheShape, CrossAttentionConfig, IdentityConfig, LinearConfig,
                                                 RidgeConfig, build_translator, proportional_layer,
                                                 translator_config)
from interlingua.errors import ConfigError, DataError
from interlingua.runtime import cache_kwarg
from interlingua.tiny import TINY_GEMMA3, TINY_LLAMA, build_random_model, build_tokenizer

torch.set_num_threads(1)

DEEP, SHALLOW = CacheShape(4, 2, 16), CacheShape(3, 1, 24)   # members of different depths, heads, head sizes
LEARNED = [("linear", LinearConfig(shared_dim=48)),
           ("cross_attention", CrossAttentionConfig(shared_dim=48, embed_dim_factor=1.0, attn_head_dim=8,
                                                    latent_tokens=4))]


def random_block(shape: CacheShape, B: int = 2, T: int = 5, requires_grad: bool = False):
    def layer(l):
        return torch.randn(B, shape.heads(l), T, shape.dim(l), requires_grad=requires_grad)
    return [layer(l) for l in range(shape.num_layers)], [layer(l) for l in range(shape.num_layers)]


def test_cache_shape_per_layer_lists_and_errors():
    assert CacheShape(3, [2, 2, 2], 16) == CacheShape(3, 2, 16)          # one form for equal layers
    mixed = CacheShape(2, (1, 2), 8)
    assert mixed.width == 8 + 16 and CacheShape.of(random_block(mixed)) == mixed
    with pytest.raises(ConfigError, match="num_kv_heads"):
        CacheShape(3, [2, 2], 16)


# --- identity ------------------------------------------------------------------------------------

def test_identity_returns_the_input_exactly_and_refuses_other_shapes():
    space = build_translator("identity", IdentityConfig(), {"a": DEEP, "a2": DEEP, "b": SHALLOW})
    keys, values = random_block(DEEP)
    out_k, out_v = space.translate("a", "a2", (keys, values))
    assert all(o is i for o, i in zip(out_k + out_v, keys + values))
    as_block = SimpleNamespace(keys=keys, values=values, mask=torch.ones(2, 5, dtype=torch.bool))  # KVBlock-like
    assert all(o is i for o, i in zip(space.translate("a", "a", as_block).keys, keys))
    round_k, round_v = space.decode("a2", space.encode("a", (keys, values)))    # through S: a lossless reshape
    assert all(torch.equal(o, i) for o, i in zip(round_k + round_v, keys + values))
    assert space.num_parameters() == 0 and not space.trainable
    with pytest.raises(ConfigError, match=r"'a' has 4 layers x 2 heads x 16, 'b' has 3 layers x 1 heads x 24"):
        space.translate("a", "b", (keys, values))


@pytest.mark.parametrize("architecture", [TINY_LLAMA, TINY_GEMMA3], ids=["llama", "gemma3"])
def test_identity_through_s_gives_the_models_own_logits(architecture):
    """A tiny model's cache, encoded and decoded by identity adapters, continues exactly like its own."""
    from transformers import DynamicCache

    model = build_random_model(architecture, build_tokenizer("bytes")).eval()
    cache_arg = cache_kwarg(model)
    ids = torch.randint(4, 200, (2, 12))
    prefix, suffix = ids[:, :7], ids[:, 7:]
    with torch.no_grad():
        full = model(input_ids=ids).logits[:, 7:]                                   # (B, 5, V)
        own = DynamicCache()
        model(input_ids=prefix, use_cache=True, **{cache_arg: own})
        block = ([layer.keys for layer in own.layers], [layer.values for layer in own.layers])
        space = build_translator("identity", IdentityConfig(), {"m": CacheShape.of(block)})
        keys, values = space.decode("m", space.encode("m", block))
        cache = DynamicCache()
        for l, (k, v) in enumerate(zip(keys, values)):
            cache.update(k, v, l)
        logits = model(input_ids=suffix, use_cache=True, position_ids=torch.arange(7, 12).expand(2, -1),
                       **{cache_arg: cache}).logits                                 # (B, 5, V)
        zeroed = DynamicCache()
        for l, (k, v) in enumerate(zip(keys, values)):
            zeroed.update(torch.zeros_like(k), torch.zeros_like(v), l)
        blind = model(input_ids=suffix, use_cache=True, position_ids=torch.arange(7, 12).expand(2, -1),
                      **{cache_arg: zeroed}).logits
    torch.testing.assert_close(logits, full)
    assert not torch.allclose(blind, full, atol=1e-3)        # the comparison can fail: the prefix matters


# --- linear and cross-attention adapters through S -----------------------------------------------------

@pytest.mark.parametrize("kind,config", LEARNED, ids=[k for k, _ in LEARNED])
def test_learned_translators_shapes_and_gradients(kind, config):
    space = build_translator(kind, config, {"deep": DEEP, "shallow": SHALLOW})
    shapes = {"deep": DEEP, "shallow": SHALLOW}
    for src in shapes:
        for tgt in shapes:                       # every path, self-cycles included
            z = space.encode(src, random_block(shapes[src], B=2, T=5))
            assert z.shape == (2, 5, 48)
            keys, values = space.decode(tgt, z)
            want = [(2, shapes[tgt].heads(l), 5, shapes[tgt].dim(l)) for l in range(shapes[tgt].num_layers)]
            assert [tuple(k.shape) for k in keys] == want and [tuple(v.shape) for v in values] == want

    block = random_block(DEEP, requires_grad=True)
    keys, values = space.translate("deep", "shallow", block)
    sum(k.square().sum() + v.square().sum() for k, v in zip(keys, values)).backward()
    used = [*space.encoders["deep"].named_parameters(), *space.decoders["shallow"].named_parameters()]
    missing = [n for n, p in used if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient reaches {missing}"
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in block[0] + block[1])
    unused = [*space.encoders["shallow"].parameters(), *space.decoders["deep"].parameters()]
    assert all(p.grad is None for p in unused)


@pytest.mark.parametrize("kind,config", LEARNED, ids=[k for k, _ in LEARNED])
def test_learned_translators_learn_a_cyclic_reconstruction(kind, config):
    """Trainable end to end: 60 Adam steps halve the deep -> S -> deep reconstruction error."""
    space = build_translator(kind, config, {"deep": DEEP})
    block = random_block(DEEP, B=4, T=8)
    space.fit_stats("deep", block)
    optimizer = torch.optim.Adam(space.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        keys, values = space.translate("deep", "deep", block)
        loss = sum(torch.nn.functional.mse_loss(o, t) for o, t in zip(keys + values, block[0] + block[1]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses[::10]


@pytest.mark.parametrize("kind,config", LEARNED, ids=[k for k, _ in LEARNED])
def test_bad_inputs_name_the_member_layer_and_shape(kind, config):
    space = build_translator(kind, config, {"deep": DEEP})
    keys, values = random_block(DEEP)
    keys[2] = torch.randn(2, 3, 5, 16)
    with pytest.raises(DataError, match=r"encode from 'deep': layer 2 keys have shape \(2, 3, 5, 16\)"):
        space.encode("deep", (keys, values))
    with pytest.raises(ConfigError, match="unknown pool member 'nope'"):
        space.decode("nope", torch.zeros(2, 5, 48))
    with pytest.raises(DataError, match="shared_dim is 48"):
        space.decode("deep", torch.zeros(2, 5, 40))


@pytest.mark.parametrize("kind,config", LEARNED, ids=[k for k, _ in LEARNED])
def test_add_member_and_freeze_except_train_only_the_newcomer(kind, config):
    space = build_translator(kind, config, {"a": DEEP, "b": SHALLOW})
    space.add_member("c", CacheShape(2, 2, 8))
    space.freeze_except(["c"])
    before = {n: p.detach().clone() for n, p in space.named_parameters()}
    optimizer = torch.optim.AdamW(space.parameters(), lr=1e-2, weight_decay=0.1)
    loss = sum(t.square().mean() for part in (space.translate("a", "c", random_block(DEEP)),
                                               space.translate("c", "b", random_block(CacheShape(2, 2, 8))))
               for ts in part for t in ts)
    loss.backward()
    optimizer.step()
    after = dict(space.named_parameters())
    others = [n for n in before if ".c." not in n]
    newcomer = [n for n in before if ".c." in n]
    assert others and all(torch.equal(before[n], after[n]) for n in others)
    unchanged = [n for n in newcomer if torch.equal(before[n], after[n])]
    assert not unchanged, f"newcomer parameters not trained: {unchanged}"
    with pytest.raises(ConfigError, match="already"):
        space.add_member("c", DEEP)


@pytest.mark.parametrize("kind,config", LEARNED, ids=[k for k, _ in LEARNED])
def test_parameters_grow_linearly_with_members(kind, config):
    counts = [build_translator(kind, config, {f"m{i}": DEEP for i in range(n)}).num_parameters()
              for n in range(1, 5)]
    assert counts == [n * counts[0] for n in range(1, 5)] and counts[0] > 0
    space = build_translator(kind, config, {"deep": DEEP})
    alone = space.num_parameters("deep")
    space.add_member("shallow", SHALLOW)
    assert space.num_parameters("deep") == alone
    assert space.num_parameters() == alone + space.num_parameters("shallow")
    assert space.num_parameters() == sum(p.numel() for p in space.parameters())


def test_linear_parameter_count_is_the_documented_formula():
    q, w = 48, DEEP.width
    space = build_translator("linear", LinearConfig(shared_dim=q), {"deep": DEEP})
    assert space.num_parameters("deep") == 2 * w * q + q + 2 * (q * w + w)


def test_fit_stats_standardizes_over_real_positions_only():
    space = build_translator("linear", LinearConfig(shared_dim=8), {"m": SHALLOW})
    keys, values = random_block(SHALLOW, B=3, T=6)
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[0, 4:] = False
    keys[1][0, :, 4:] = 1e6                                  # padding: must not move the statistics
    space.fit_stats("m", (keys, values), mask)
    rows = keys[1].transpose(1, 2)[mask].reshape(-1, 24)     # layer 1's real positions (N, H*D)
    stats = space.encoders["m"].stats
    torch.testing.assert_close(stats.key_mean[24:48], rows.mean(0))
    torch.testing.assert_close(stats.key_std[24:48], rows.std(0))
    assert torch.equal(space.decoders["m"].stats.value_std, stats.value_std)


def test_translator_config_names_bad_keys():
    kind, config = translator_config({"type": "cross_attention", "embed_dim_factor": 1.0})
    assert kind == "cross_attention" and config.embed_dim_factor == 1.0
    with pytest.raises(ConfigError, match=r"'translators.big': unknown option\(s\) \['depth'\]"):
        translator_config({"type": "linear", "depth": 2}, key="translators.big")
    with pytest.raises(ConfigError, match="unknown translator type 'mlp'"):
        translator_config({"type": "mlp"})
    with pytest.raises(ConfigError, match="multiple of latent_tokens"):
        CrossAttentionConfig(shared_dim=50, latent_tokens=8)


# --- ridge ---------------------------------------------------------------------------------------

def test_proportional_layer_mapping():
    assert [proportional_layer(l, 3, 4) for l in range(3)] == [0, 2, 3]     # 1.5 rounds up
    assert [proportional_layer(l, 4, 4) for l in range(4)] == [0, 1, 2, 3]
    assert [proportional_layer(l, 4, 3) for l in range(4)] == [0, 1, 1, 2]
    assert proportional_layer(0, 1, 30) == 0


def linear_target(source, maps, target_shape: CacheShape, B: int, T: int):
    """Target layer l = source layer s(l) (all heads) @ A_l + b_l, reshaped to (B, H, T, D)."""
    out = []
    for l, (s, a, b) in enumerate(maps):
        x = source[s].transpose(1, 2).reshape(B, T, -1)                           # (B, T, F)
        y = x @ a + b                                                             # (B, T, G)
        out.append(y.view(B, T, target_shape.heads(l), target_shape.dim(l)).transpose(1, 2))
    return out


def test_ridge_recovers_a_known_linear_map():
    B, T = 3, 40                                            # 120 rows > 33 features (32 + bias)
    layer_map = [0, 2, 3]
    maps = {kind: [(s, torch.randn(DEEP.layer_width(s), SHALLOW.layer_width(l)), torch.randn(SHALLOW.layer_width(l)))
                   for l, s in enumerate(layer_map)] for kind in ("key", "value")}
    src = random_block(DEEP, B=B, T=T)
    tgt = (linear_target(src[0], maps["key"], SHALLOW, B, T), linear_target(src[1], maps["value"], SHALLOW, B, T))
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, 30:] = False
    for t in tgt[0] + tgt[1]:
        t[1, :, 30:] = torch.randn_like(t[1, :, 30:]) * 100  # padding that breaks the map: masked out
    ridge = build_translator("ridge", RidgeConfig(ridge_lambda=0.0), {"deep": DEEP, "shallow": SHALLOW})
    assert ridge.accumulate("deep", "shallow", src, tgt, mask) == B * T - 10
    assert ridge.fit() == [("deep", "shallow")] and ridge.num_parameters() == 2 * sum(
        (DEEP.layer_width(s) + 1) * SHALLOW.layer_width(l) for l, s in enumerate(layer_map))
    fitted = ridge.maps["deep__to__shallow"]
    assert fitted.layer_map == layer_map
    for kind in ("key", "value"):
        for l, (_, a, b) in enumerate(maps[kind]):
            torch.testing.assert_close(getattr(fitted, f"{kind}_weight_{l}"), a, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(getattr(fitted, f"{kind}_bias_{l}"), b, atol=1e-4, rtol=1e-4)
    fresh = random_block(DEEP, B=2, T=7)
    keys, values = ridge.translate("deep", "shallow", fresh)
    for got, want in zip(keys + values, linear_target(fresh[0], maps["key"], SHALLOW, 2, 7)
                         + linear_target(fresh[1], maps["value"], SHALLOW, 2, 7)):
        torch.testing.assert_close(got, want, atol=1e-3, rtol=1e-4)
    with pytest.raises(ConfigError, match=r"ridge map shallow->deep is not fitted"):
        ridge.translate("shallow", "deep", random_block(SHALLOW))


def test_ridge_streamed_fit_equals_one_shot_fit():
    src, tgt = random_block(DEEP, B=6, T=10), random_block(SHALLOW, B=6, T=10)   # noisy: no exact map
    one_shot = build_translator("ridge", RidgeConfig(ridge_lambda=0.1), {"deep": DEEP, "shallow": SHALLOW})
    one_shot.accumulate("deep", "shallow", src, tgt)
    one_shot.fit()
    streamed = build_translator("ridge", RidgeConfig(ridge_lambda=0.1), {"deep": DEEP, "shallow": SHALLOW})
    for rows in (slice(0, 1), slice(1, 4), slice(4, 6)):
        streamed.accumulate("deep", "shallow", tuple([t[rows] for t in part] for part in src),
                            tuple([t[rows] for t in part] for part in tgt))
    streamed.fit()
    a, b = one_shot.state_dict(), streamed.state_dict()
    assert a.keys() == b.keys() and len(a) == 4 * SHALLOW.num_layers
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=1e-5)
    # the penalty is real: a larger lambda shrinks the weights
    strong = build_translator("ridge", RidgeConfig(ridge_lambda=100.0), {"deep": DEEP, "shallow": SHALLOW})
    strong.accumulate("deep", "shallow", src, tgt)
    strong.fit()
    assert strong.maps["deep__to__shallow"].key_weight_0.norm() < one_shot.maps["deep__to__shallow"].key_weight_0.norm()


def test_ridge_refuses_unpaired_blocks_and_too_few_rows():
    ridge = build_translator("ridge", RidgeConfig(), {"deep": DEEP, "shallow": SHALLOW})
    with pytest.raises(DataError, match="the same tokens must go through both"):
        ridge.accumulate("deep", "shallow", random_block(DEEP, T=5), random_block(SHALLOW, T=6))
    ridge.accumulate("deep", "shallow", random_block(DEEP, B=1, T=1), random_block(SHALLOW, B=1, T=1))
    with pytest.raises(DataError, match="1 rows accumulated"):
        ridge.fit()
