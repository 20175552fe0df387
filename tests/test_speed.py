"""Serving-time speed (latency, throughput) and soft-token neighbours, with the tiny random models."""
import json

import pandas as pd
import pytest
import torch

from interlingua import cli, speed, zoo
from interlingua.evaluate import COLUMNS
from interlingua.extract import extract
from interlingua.receiver import Receiver
from interlingua.speed import (Laps, cached_text_prompt, load_serving, measure_latency, measure_throughput,
                               soft_token_neighbours, vocabulary_neighbours)
from interlingua.store import ActivationStore
from interlingua.tasks import materialize_split, read_split
from interlingua.train import train_bridge

CPU = torch.device("cpu")
TRAIN = {"steps": 2, "batch_size": 4, "lr": 1e-3, "weight_decay": 0.01, "warmup_steps": 1, "grad_clip": 1.0,
         "diversity_weight": 0.1, "checkpoint_every": 100, "loss": "labels"}
BRIDGE = {"type": "perceiver", "source_layer": 2, "dim": 32, "num_queries": 4, "depth": 1, "heads": 2}
LATENCY = {"bridge": ["latency_seconds", "latency_sender_encode_seconds", "latency_bridge_seconds",
                      "latency_receiver_seconds"],
           "text_relay": ["latency_seconds", "latency_relay_generate_seconds", "latency_receiver_seconds",
                          "generated_tokens"]}


@pytest.fixture
def setup(tiny_models, sst2_like_task, toy_mirror, tmp_path):
    """Eval split, its store (layer 2 of the 4-block sender, float32) and a briefly trained bridge."""
    split = tmp_path / "tasks/validation.jsonl"
    materialize_split("toy", sst2_like_task, toy_mirror, "eval", split)
    store = extract(tiny_models["sender"], split, tmp_path / "eval.zarr", sender_prompt=sst2_like_task["prompts"]["sender"],
                    layers=[2], storage_dtype="float32", batch_size=4, device=CPU, dtype=torch.float32)
    checkpoint = train_bridge(store, tiny_models["receiver"], tmp_path / "bridge.pt", bridge_name="p",
                              bridge_spec=BRIDGE, task=sst2_like_task, train=TRAIN, seed=0, device=CPU,
                              dtype=torch.float32)
    return {"split": split, "store": store, "checkpoint": checkpoint, "task": sst2_like_task, **tiny_models}


def common(setup):
    return dict(task_name="toy", task=setup["task"], sender_alias="s", receiver_alias="r", bridge_name="p",
                max_new_tokens=6, device=CPU, dtype=torch.float32)


def relay_lengths(setup, texts, max_new_tokens=6):
    """What the relay generates for each text at batch 1 (greedy: deterministic)."""
    from interlingua import relay

    tokenizer = zoo.load_tokenizer(setup["sender"])
    model = zoo.load_model(setup["sender"], CPU, torch.float32)
    return [relay.generate_batch(model, tokenizer, [relay.chat_ids(tokenizer, relay.sender_message(setup["task"], t,
                                                                                                  "summary"))],
                                 max_new_tokens, "summary", setup["task"]["verbalizers"])[0]["generated_tokens"]
            for t in texts]


def test_latency_rows_have_every_stage_and_stages_add_up(setup, tmp_path, monkeypatch):
    out = measure_latency(setup["split"], setup["sender"], setup["receiver"], setup["checkpoint"],
                          tmp_path / "latency.csv", examples=4, warmup=1, **common(setup))
    rows = pd.read_csv(out, keep_default_na=False)
    assert list(rows.columns) == COLUMNS
    assert set(rows.variant) == {"batch1"} and set(rows.n) == {4}
    for method, metrics in LATENCY.items():
        part = rows[rows.method == method].set_index("metric")["value"]
        assert sorted(part.index) == sorted(metrics)
        stages = part.drop(["latency_seconds", "generated_tokens"], errors="ignore")
        # Stages are laps of the same call: their medians add up to (about) the median total.
        assert stages.sum() <= part["latency_seconds"] * 1.25 + 1e-3
    relay = rows[rows.method == "text_relay"]
    assert set(relay.bridge) == {""} and set(relay.seed) == {""}
    texts = [row["text"] for row in read_split(setup["split"])[0][:4]]
    lengths = relay_lengths(setup, texts)
    assert relay.set_index("metric").value["generated_tokens"] == pytest.approx(sum(lengths) / 4)

    # With a clock that ticks 1 s per reading, every lap is 1 s: each stage's median is 1 and the
    # total is the number of stages, exactly (the rows are the laps, not something else).
    ticks = iter(range(10 ** 6))
    monkeypatch.setattr(speed, "clock", lambda: float(next(ticks)))
    out = measure_latency(setup["split"], setup["sender"], setup["receiver"], setup["checkpoint"],
                          tmp_path / "ticks.csv", examples=3, warmup=1, **common(setup))
    ticked = pd.read_csv(out, keep_default_na=False)
    for method, stages in speed.STAGES.items():
        part = ticked[ticked.method == method].set_index("metric")["value"]
        if method == "zero_shot":
            assert part.empty
            continue
        assert [part[f"latency_{stage}_seconds"] for stage in stages] == [1.0] * len(stages)
        assert part["latency_seconds"] == sum(part[f"latency_{stage}_seconds"] for stage in stages)


def test_laps_of_one_call_add_up_to_its_total(monkeypatch):
    readings = iter([10.0, 10.5, 12.0, 12.25])
    monkeypatch.setattr(speed, "clock", lambda: next(readings))
    laps = Laps(CPU)
    laps.lap("a")
    laps.lap("b")
    laps.lap("c")
    assert laps.seconds == {"a": 0.5, "b": 1.5, "c": 0.25} and laps.total() == 2.25


def test_throughput_rows_per_batch_size(setup, tmp_path):
    out = measure_throughput(setup["split"], setup["sender"], setup["receiver"], setup["checkpoint"],
                             tmp_path / "throughput.csv", batch_sizes=(1, 4), batches=2, **common(setup))
    rows = pd.read_csv(out, keep_default_na=False)
    speed = rows[rows.metric == "samples_per_second"]
    assert sorted(zip(speed.method, speed.variant)) == sorted(
        (m, f"batch{b}") for m in ("bridge", "zero_shot", "text_relay") for b in (1, 4))
    assert (speed.value > 0).all()
    assert dict(zip(speed.variant, speed.n)) == {"batch1": 2, "batch4": 8}
    assert set(rows[rows.method == "zero_shot"].sender) == {""}
    assert set(rows[rows.metric == "generated_tokens"].method) == {"text_relay"}


def test_bridge_path_stops_at_the_source_layer_and_matches_the_stored_states(setup):
    serving, _ = load_serving(setup["sender"], setup["receiver"], setup["checkpoint"], task=setup["task"],
                              max_new_tokens=4, device=CPU, dtype=torch.float32)
    ran = []
    blocks = list(serving.decoder.layers)
    handles = [b.register_forward_hook(lambda *_, i=i: ran.append(i)) for i, b in enumerate(blocks)]
    store = ActivationStore(setup["store"])
    rows = list(range(len(store)))
    texts = [read_split(setup["split"])[0][int(store.example_index[r])]["text"] for r in rows]
    predictions = serving.bridge_path(texts, Laps(CPU))
    for handle in handles:
        handle.remove()
    assert sorted(set(ran)) == [0, 1]                           # blocks 1..2 of 4 (source layer 2)
    assert len(serving.decoder.layers) == len(blocks)             # the sender is whole again (the relay needs it)
    with torch.inference_mode():
        states, mask, _ = store.batch(rows, 2)
        prompt = serving.receiver.soft_prompt(serving.bridge(states, mask), setup["task"]["prompts"]["instruction"])
        expected = serving.receiver.class_scores(prompt).argmax(-1)
    assert torch.equal(predictions, expected)


@pytest.mark.parametrize("name", ["sender", "receiver"])  # Llama (global attention), Gemma-3 (window 16)
def test_cached_text_prompt_scores_like_the_plain_prompt(tiny_models, name):
    receiver = Receiver(zoo.load_model(tiny_models[name], CPU, torch.float32), zoo.load_tokenizer(tiny_models[name]),
                        [" negative", " positive"])
    template = "Review: {text}\nSentiment:"
    for texts in (["ok"], ["a great film", "bad", "wonderful acting and a clever story"]):
        full = [template.format(text=t) for t in texts]
        cached = cached_text_prompt(receiver, template.partition("{text}")[0], full)
        with torch.inference_mode():
            torch.testing.assert_close(receiver.class_scores(cached), receiver.class_scores(receiver.text_prompt(full)),
                                       rtol=1e-4, atol=1e-4)
    assert cached_text_prompt(receiver, "Review: ", ["Review: ok\nSentiment:"]).prefix is not None


def test_vocabulary_neighbours_in_chunks_equal_the_whole_matrix():
    soft, vocab = torch.randn(3, 16), torch.randn(100, 16)
    scores, ids = vocabulary_neighbours(soft, vocab, 5, chunk=7)
    full = torch.nn.functional.normalize(soft, dim=-1) @ torch.nn.functional.normalize(vocab, dim=-1).T
    expected_scores, expected_ids = full.topk(5, dim=-1)
    torch.testing.assert_close(scores, expected_scores)
    assert torch.equal(ids, expected_ids)


def test_neighbours_write_md_and_png_deterministically(setup, tmp_path):
    outputs = []
    for run in ("a", "b"):
        md, png = soft_token_neighbours(setup["store"], setup["receiver"], setup["checkpoint"], tmp_path / run / "stn",
                                        task=setup["task"], examples_per_class=2, split_path=setup["split"])
        outputs.append((md.read_bytes(), png.read_bytes()))
    assert outputs[0] == outputs[1]
    text = outputs[0][0].decode()
    assert text.count("## negative #") == 2 and text.count("## positive #") == 2
    assert text.count("→") == 4 * BRIDGE["num_queries"] * 5      # examples x soft tokens x top-5
    assert "> a great and moving film" in text                       # the split's first row (label 0 in the toy task)
    assert outputs[0][1][:4] == b"\x89PNG"


def test_cli_soft_token_neighbours(setup, tmp_path):
    spec = {"runtime": {"device": "cpu", "dtype": "float32"}, "task": setup["task"],
            "soft_token_neighbours": {"examples_per_class": 1}}
    code = cli.main(["soft-token-neighbours", "--store", str(setup["store"]), "--receiver-dir", str(setup["receiver"]),
                     "--checkpoint", str(setup["checkpoint"]), "--split", str(setup["split"]),
                     "--spec", json.dumps(spec), "--out", str(tmp_path / "fig/stn")])
    assert code == 0
    assert (tmp_path / "fig/stn.md").read_text().count("## ") == 3   # 2 examples + the across-examples table
    assert (tmp_path / "fig/stn.png").exists()


@pytest.mark.parametrize("name, speed", [("measure-latency", {"latency_examples": 2, "warmup": 1}),
                                         ("measure-throughput", {"batch_sizes": [2], "batches": 1})])
def test_cli_measures(setup, tmp_path, name, speed):
    spec = {"runtime": {"device": "cpu", "dtype": "float32"}, "task": setup["task"],
            "relay": {"max_new_tokens": 3}, "speed": speed}
    code = cli.main([name, "--task", "toy", "--sender", "s", "--receiver", "r", "--bridge", "p",
                     "--split", str(setup["split"]), "--sender-dir", str(setup["sender"]),
                     "--receiver-dir", str(setup["receiver"]), "--checkpoint", str(setup["checkpoint"]),
                     "--spec", json.dumps(spec), "--out", str(tmp_path / "speed.csv")])
    assert code == 0
    rows = pd.read_csv(tmp_path / "speed.csv", keep_default_na=False)
    assert set(rows.n) == {2}
    relay = rows[(rows.method == "text_relay") & (rows.metric == "generated_tokens")]
    texts = [row["text"] for row in read_split(setup["split"])[0][:2]]
    # the relay the measurement timed is the one relay.py generates (cap relay.max_new_tokens = 3)
    assert relay.value.tolist() == pytest.approx([sum(relay_lengths(setup, texts, 3)) / 2])
    if name == "measure-latency":
        for method, metrics in LATENCY.items():
            part = rows[rows.method == method].set_index("metric")["value"]
            assert sorted(part.index) == sorted(metrics)
            assert all(part[m] <= part["latency_seconds"] * 1.25 for m in metrics if m.endswith("_seconds"))
    else:
        speed_rows = rows[rows.metric == "samples_per_second"]
        assert sorted(speed_rows.method) == ["bridge", "text_relay", "zero_shot"] and set(speed_rows.variant) == {"batch2"}


def test_relay_path_reads_the_demonstrations_as_the_evaluation_does(setup, toy_mirror, tmp_path, monkeypatch):
    from interlingua import speed
    from interlingua.few_shot import pick_demonstrations
    from interlingua.relay import receiver_predictions

    train = tmp_path / "tasks/train.jsonl"
    materialize_split("toy", setup["task"], toy_mirror, "train", train)
    demonstrations = pick_demonstrations(read_split(train)[0], 2, seed=0)
    serving, _ = load_serving(setup["sender"], setup["receiver"], setup["checkpoint"], task=setup["task"],
                              max_new_tokens=6, device=CPU, dtype=torch.float32, relay_demonstrations=demonstrations)
    summaries = ["a warm and funny film", "dull", "the plot drags on and on"]
    monkeypatch.setattr(speed, "generate_batch", lambda model, tokenizer, prompts, max_new_tokens, *rest: [
        {"relay": summaries[i], "generated_tokens": 3} for i in range(len(prompts))])
    predictions, _ = serving.relay_path(["x", "y", "z"], Laps(CPU))
    demo_ids = serving.receiver.tokenizer(demonstrations[0]["text"], add_special_tokens=False)["input_ids"]
    assert any(len(key) > len(demo_ids) for key in serving.receiver._prefixes)   # the demonstrations are cached
    expected = receiver_predictions(serving.receiver, setup["task"], summaries, demonstrations, 16, desc="eval")
    assert torch.equal(predictions, expected)


def test_table3_shows_the_relays_mean_length_over_the_eval_rows(tmp_path):
    from interlingua.report import table3_latency

    base = {"task": "sst2", "sender": "s", "receiver": "r", "fingerprint": "f"}
    rows = [dict(base, method="bridge", bridge="p", seed=0, variant="batch1", n=4, metric="latency_seconds", value=0.1),
            dict(base, method="text_relay", bridge="", seed="", variant="batch1", n=4, metric="latency_seconds",
                 value=2.0),
            dict(base, method="text_relay", bridge="", seed="", variant="batch1", n=4, metric="generated_tokens",
                 value=30.0)]
    # the relay evaluation: one row set per seed (the same length repeated), and another sender's relay
    rows += [dict(base, method="text_relay", bridge="", seed=seed, variant="", n=100, metric="relay_generated_tokens",
                  value=27.5) for seed in (0, 1)]
    rows.append(dict(base, sender="other", method="text_relay", bridge="", seed=0, variant="", n=100,
                     metric="relay_generated_tokens", value=99.0))
    pd.DataFrame(rows, columns=COLUMNS).to_csv(tmp_path / "results.csv", index=False)
    table3_latency(tmp_path / "results.csv", tmp_path / "table3", {})
    table = (tmp_path / "table3.md").read_text()
    header = [c.strip() for c in table.splitlines()[2].split("|")]
    relay_row = next(line for line in table.splitlines() if line.startswith("| sst2 / text_relay"))
    cells = dict(zip(header, [c.strip() for c in relay_row.split("|")]))
    assert cells["relay_generated_tokens"] == "27.5" and cells["generated_tokens"] == "30.0"
    assert "99" not in table
