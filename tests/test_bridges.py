import dataclasses
from pathlib import Path

import pytest
import torch
import yaml

from interlingua import zoo
from interlingua.bridges import REGISTRY, bridge_config, build_bridge, is_trainable
from interlingua.bridges.identity import fixed_projection
from interlingua.bridges.input_norm import SenderInputNorm, token_statistics
from interlingua.errors import ConfigError
from interlingua.receiver import Receiver, diversity_penalty, embedding_rms

D_S, D_R, M = 24, 40, 4
# Small widths per type so every test is fast; the rest are the dataclass defaults.
SMALL = {"perceiver": {"dim": 32, "depth": 2, "heads": 4},
         "diffusion": {"dim": 32, "depth": 1, "heads": 4, "steps": 3},
         "mlp": {"hidden_dim": 32},
         "linear": {}, "mean_pool": {}, "identity": {}}
KINDS = sorted(REGISTRY)
TRAINABLE = [kind for kind in KINDS if kind != "identity"]


def make_bridge(kind="perceiver", sender_dim=D_S, receiver_dim=D_R, seed=0, **overrides):
    spec = {"type": kind, "source_layer": 2, "num_queries": M, **SMALL[kind], **overrides}
    return build_bridge(kind, bridge_config("p", spec, sender_dim=sender_dim, receiver_dim=receiver_dim, seed=seed))


def lengths_mask(lengths, total):
    return torch.arange(total)[None] < torch.tensor(lengths)[:, None]  # (B, T) right-padded


def test_registry_is_what_the_schema_allows():
    schema = yaml.safe_load((Path(__file__).resolve().parents[1] / "src/interlingua/schemas/config.schema.yaml")
                            .read_text())
    assert set(schema["properties"]["bridges"]["additionalProperties"]["properties"]["type"]["enum"]) == set(REGISTRY)
    assert set(SMALL) == set(REGISTRY)


@pytest.mark.parametrize("kind", KINDS)
def test_every_config_has_the_shared_fields(kind):
    fields = {f.name for f in dataclasses.fields(REGISTRY[kind][0])}
    assert {"sender_dim", "receiver_dim", "source_layer", "num_queries"} <= fields
    assert make_bridge(kind).config.source_layer == 2


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_forward_shapes_and_rms_scale(kind, mode):
    bridge = make_bridge(kind).train(mode == "train")
    bridge.calibrate(3.0)
    states, mask = torch.randn(5, 11, D_S), lengths_mask([11, 7, 3, 1, 11], 11)  # some rows shorter than M
    soft = bridge(states, mask)
    assert soft.shape == (5, M, D_R)
    torch.testing.assert_close(soft.pow(2).mean(-1).sqrt(), torch.full((5, M), 3.0), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_padding_does_not_change_the_output(kind):
    """Garbage in padded positions, on either side, next to a longer row: same soft tokens."""
    bridge = make_bridge(kind).eval()
    states = torch.randn(1, 6, D_S)
    alone = bridge(states, torch.ones(1, 6, dtype=torch.bool))
    garbage = torch.randn(1, 4, D_S) * 100
    right = torch.cat([states, garbage], dim=1), torch.tensor([[True] * 6 + [False] * 4])
    left = torch.cat([garbage, states], dim=1), torch.tensor([[False] * 4 + [True] * 6])
    torch.testing.assert_close(bridge(*right), alone)
    torch.testing.assert_close(bridge(*left), alone)
    batch = torch.cat([right[0], torch.randn(1, 10, D_S)]), torch.cat([right[1], torch.ones(1, 10, dtype=torch.bool)])
    torch.testing.assert_close(bridge(*batch)[:1], alone)


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_reach_every_trainable_parameter(kind):
    torch.manual_seed(0)
    bridge = make_bridge(kind).train()
    bridge.calibrate(2.0)
    soft = bridge(torch.randn(3, 9, D_S), lengths_mask([9, 5, 2], 9))
    params = dict(bridge.named_parameters())
    if kind == "identity":
        assert not params and bridge.trainable is False and not is_trainable(bridge)
        assert not soft.requires_grad
        return
    assert params and bridge.trainable and is_trainable(bridge)
    (soft * torch.randn_like(soft)).sum().backward()
    for name, p in params.items():
        assert p.grad is not None, f"{kind}: no gradient for {name}"
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, f"{kind}: zero gradient for {name}"


@pytest.mark.parametrize("kind", KINDS)
def test_checkpoint_round_trip(kind):
    """What train.save / load_bridge do: config as a dict, state_dict; the rebuilt bridge is identical."""
    torch.manual_seed(0)
    bridge = make_bridge(kind).eval()
    bridge.calibrate(1.7)
    config_class, module_class = REGISTRY[kind]
    torch.manual_seed(1)  # a different init, overwritten by the state dict
    rebuilt = module_class(config_class(**dataclasses.asdict(bridge.config)))
    rebuilt.load_state_dict(bridge.state_dict())
    states, mask = torch.randn(2, 7, D_S), lengths_mask([7, 3], 7)
    torch.testing.assert_close(rebuilt.eval()(states, mask), bridge(states, mask))


@pytest.mark.parametrize("kind", KINDS)
def test_unknown_option_is_named(kind):
    with pytest.raises(ConfigError, match=rf"bridges.p': unknown option\(s\) \['widht'\] for type '{kind}'"):
        bridge_config("p", {"type": kind, "widht": 3}, 8, 8)


def test_unknown_type_is_named():
    with pytest.raises(ConfigError, match=r"bridges.p.type': unknown bridge type 'perciever'"):
        bridge_config("p", {"type": "perciever"}, 8, 8)


def test_diffusion_noise_is_fixed_in_eval_and_fresh_in_train():
    bridge = make_bridge("diffusion")
    states, mask = torch.randn(3, 8, D_S), lengths_mask([8, 6, 4], 8)
    bridge.eval()
    torch.manual_seed(1)
    first = bridge(states, mask)
    rng = torch.get_rng_state()
    torch.manual_seed(2)
    torch.testing.assert_close(bridge(states, mask), first)         # independent of the global RNG
    torch.manual_seed(1)
    bridge(states, mask)
    assert torch.equal(torch.get_rng_state(), rng)                  # and it does not consume it
    torch.testing.assert_close(bridge(states[1:2], mask[1:2]), first[1:2])  # nor on batch composition
    bridge.train()
    a, b = bridge(states, mask), bridge(states, mask)
    assert not torch.allclose(a, b) and not torch.allclose(a, first)
    other = make_bridge("diffusion", noise_seed=7)
    other.load_state_dict(bridge.state_dict())
    assert not torch.allclose(other.eval()(states, mask), first)    # the seed is what fixes the noise


def test_diffusion_runs_the_configured_number_of_steps():
    bridge = make_bridge("diffusion", steps=5).eval()
    calls = []
    bridge.blocks[0].register_forward_hook(lambda *_: calls.append(1))
    bridge(torch.randn(2, 4, D_S), torch.ones(2, 4, dtype=torch.bool))
    assert len(calls) == 5


def test_identity_picks_the_last_real_tokens_when_dimensions_match():
    bridge = make_bridge("identity", sender_dim=D_R, receiver_dim=D_R)
    bridge.calibrate(2.0)
    assert bridge.projection is None
    states = torch.randn(2, 7, D_R)
    left_padded = torch.cat([torch.randn(2, 3, D_R) * 50, states], dim=1)
    mask = torch.tensor([[False] * 3 + [True] * 7, [False] * 8 + [True] * 2])
    soft = bridge(left_padded, mask)

    def expected(rows):
        return torch.nn.functional.rms_norm(rows, (D_R,)) * 2.0

    torch.testing.assert_close(soft[0], expected(states[0, -M:]))
    # a 2-token row: the leading slots repeat its first real token
    torch.testing.assert_close(soft[1], expected(states[1, [5, 5, 5, 6]]))


def test_identity_projection_is_a_fixed_seeded_buffer():
    a, b = make_bridge("identity"), make_bridge("identity")
    assert "projection" in dict(a.named_buffers()) and not list(a.parameters())
    torch.testing.assert_close(a.projection, b.projection)           # same seed, same map
    assert not torch.allclose(make_bridge("identity", seed=1).projection, a.projection)
    for d_in, d_out in [(D_S, D_R), (D_R, D_S)]:
        p = fixed_projection(d_in, d_out, 0)
        small = p.T @ p if d_in >= d_out else p @ p.T
        torch.testing.assert_close(small, torch.eye(min(d_in, d_out)), atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", TRAINABLE)
def test_overfits_one_batch_through_a_frozen_receiver(tiny_models, kind):
    """Four examples with distinct states and labels: the bridge must learn to separate them."""
    torch.manual_seed(0)
    model = zoo.load_model(tiny_models["receiver"], torch.device("cpu"), torch.float32)
    receiver = Receiver(model, zoo.load_tokenizer(tiny_models["receiver"]), [" negative", " positive"])
    spec = {"type": kind, "num_queries": 4, **SMALL[kind]}
    bridge = build_bridge(kind, bridge_config("p", spec, 24, model.config.hidden_size))
    bridge.calibrate(embedding_rms(model))
    states, mask = torch.randn(4, 5, 24), torch.ones(4, 5, dtype=torch.bool)
    labels = torch.tensor([0, 1, 1, 0])
    optimizer = torch.optim.AdamW(bridge.parameters(), lr=1e-2)
    losses = []
    for _ in range(200):
        loss = receiver.label_loss(receiver.soft_prompt(bridge(states, mask), "A{soft_tokens}B"), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    # A random receiver's logits barely move (RMS-fixed soft tokens), so check the ranking, not ~0 loss.
    assert losses[-1] < losses[0] - 0.3
    bridge.eval()
    with torch.no_grad():
        scores = receiver.class_scores(receiver.soft_prompt(bridge(states, mask), "A{soft_tokens}B"))
    assert scores.argmax(-1).tolist() == labels.tolist()
    assert all(p.grad is None for p in model.parameters())  # the receiver stays frozen


def test_diversity_penalty_is_high_for_identical_tokens():
    same = torch.ones(4, 3, 8)
    assert diversity_penalty(same).item() == pytest.approx(1.0)
    assert diversity_penalty(torch.randn(64, 3, 8)).abs().item() < 0.2


# -- the sender input norm (bridges/input_norm.py) -------------------------------------------------
def sink_states(batch=6, length=9, seed=0):
    """Random states whose first position is an attention sink: huge on one dimension, same for all rows."""
    states = torch.randn(batch, length, D_S, generator=torch.Generator().manual_seed(seed)) + 3.0  # shared offset
    states[:, 0] = 0.0
    states[:, 0, 5] = 500.0                                                   # norm 500 against ~16
    return states


def test_token_statistics_match_the_direct_computation_without_sinks():
    states = sink_states()
    rows = [states[i, :n] for i, n in enumerate([9, 4, 7, 9, 2, 5])]
    mean, std, sink_norm = token_statistics(lambda: iter(rows))
    flat = torch.cat(rows)
    kept = flat[flat.norm(dim=-1) < 100]
    assert len(kept) == len(flat) - len(rows)                                 # exactly the sinks dropped
    assert sink_norm == pytest.approx(10 * flat.norm(dim=-1).median().item())
    torch.testing.assert_close(mean, kept.mean(0), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(std, kept.std(0, unbiased=False), atol=1e-4, rtol=1e-4)


def test_input_norm_masks_sinks_and_standardizes():
    norm = SenderInputNorm(D_S)
    states, mask = sink_states(), lengths_mask([9, 9, 5, 1, 9, 3], 9)
    same_states, same_mask = norm(states, mask)                               # unfitted: the identity
    assert torch.equal(same_states, states) and torch.equal(same_mask, mask)
    mean, std, sink_norm = token_statistics(lambda: (states[i, :n] for i, n in enumerate([9, 9, 5, 1, 9, 3])))
    norm.fit(mean, std, sink_norm)
    out, keep = norm(states, mask)
    assert not keep[[0, 1, 2, 4, 5], 0].any() and torch.equal(keep[:, 1:], mask[:, 1:])
    assert keep[3, 0]                                                         # a row of one sink keeps it
    torch.testing.assert_close(out, (states - mean) / std)
    real = out[keep & (states.norm(dim=-1) < 100)]                           # the statistics' own tokens
    assert real.mean(0).abs().max() < 0.05 and (real.std(0) - 1).abs().max() < 0.1


@pytest.mark.parametrize("kind", TRAINABLE)
def test_fitted_bridges_ignore_the_sink_and_see_the_example(kind):
    """The Perceiver's collapse: the sink, the same for every example, must not drive the soft tokens."""
    bridge = make_bridge(kind).eval()
    states, mask = sink_states(), lengths_mask([9] * 6, 9)
    bridge.fit_input(*token_statistics(lambda: iter(states)))
    other_sink = states.clone()
    other_sink[:, 0, 5], other_sink[:, 0, 7] = 900.0, -300.0                   # another sink vector entirely
    with torch.no_grad():
        torch.testing.assert_close(bridge(other_sink, mask), bridge(states, mask))
        assert not torch.allclose(bridge(states.flip(0), mask), bridge(states, mask))  # the rest is read


def test_fitted_input_norm_round_trips_with_the_checkpoint():
    bridge = make_bridge("perceiver")
    bridge.fit_input(torch.full((D_S,), 2.0), torch.full((D_S,), 3.0), 77.0)
    again = make_bridge("perceiver")
    again.load_state_dict(bridge.state_dict())
    assert again.sender_norm.sink_norm.item() == 77.0 and torch.equal(again.sender_norm.std, bridge.sender_norm.std)


def test_identity_projection_follows_the_run_seed_and_seed_is_not_a_config_key():
    spec = {"type": "identity", "source_layer": 2, "num_queries": M}
    first, second = (build_bridge("identity", bridge_config("i", spec, D_S, D_R, seed=s)) for s in (0, 1))
    assert not torch.equal(first.projection, second.projection)
    with pytest.raises(ConfigError, match="seed"):
        bridge_config("i", {**spec, "seed": 3}, D_S, D_R)
