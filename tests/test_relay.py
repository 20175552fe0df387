"""Text baselines: k-shot from the text, summary and chain-of-thought relays (tiny random models)."""
import json
from collections import Counter

import pandas as pd
import pytest
import torch

from interlingua import relay, zoo
from interlingua.errors import ConfigError
from interlingua.evaluate import COLUMNS, predict
from interlingua.few_shot import (batches, demonstration_block, evaluate_few_shot, few_shot_scores,
                                  pick_demonstrations, query_texts)
from interlingua.receiver import Prompt, Receiver
from interlingua.tasks import materialize_split, read_split

CPU = torch.device("cpu")


@pytest.fixture
def splits(sst2_like_task, toy_mirror, tmp_path):
    train, valid = tmp_path / "tasks/train.jsonl", tmp_path / "tasks/validation.jsonl"
    materialize_split("toy", sst2_like_task, toy_mirror, "train", train)
    materialize_split("toy", sst2_like_task, toy_mirror, "eval", valid)
    return train, valid


def labelled(counts: dict[int, int]) -> list[dict]:
    rows = [{"index": label * 100 + i, "text": f"class {label} row {i}", "label": label}
            for label, n in counts.items() for i in range(n)]
    return rows


# --- few-shot -------------------------------------------------------------------------------------

def test_demonstrations_are_balanced_seeded_and_differ_by_seed():
    train = labelled({0: 20, 1: 20})
    demos = pick_demonstrations(train, 5, seed=0)
    assert len({d["index"] for d in demos}) == 5
    assert sorted(Counter(d["label"] for d in demos).values()) == [2, 3]
    assert demos == pick_demonstrations(train, 5, seed=0)
    picks = {tuple(d["index"] for d in pick_demonstrations(train, 5, seed=s)) for s in range(3)}
    assert len(picks) == 3


def test_more_classes_than_shots_gives_distinct_classes_and_small_classes_are_used_up():
    demos = pick_demonstrations(labelled({c: 4 for c in range(6)}), 5, seed=1)
    assert len({d["label"] for d in demos}) == 5
    demos = pick_demonstrations(labelled({0: 1, 1: 10}), 5, seed=0)  # class 0 has one row only
    assert Counter(d["label"] for d in demos) == {0: 1, 1: 4}


def test_demonstration_prompt_layout(sst2_like_task):
    demos = [{"text": "good", "label": 1}, {"text": "bad", "label": 0}]
    block = demonstration_block(sst2_like_task, demos)
    assert block == "Review: good\nSentiment: positive\n\nReview: bad\nSentiment: negative"
    assert query_texts(sst2_like_task, [{"text": "meh"}], True) == ["\n\nReview: meh\nSentiment:"]


def test_batches_never_pad_past_a_sliding_window():
    lengths = [3, 5, 3, 9, 5, 5]
    assert batches(lengths, 4, prefix_length=4, window=None) == [[0, 2, 1, 4], [5, 3]]
    # prefix + longest query beyond the window: one length per batch
    assert batches(lengths, 4, prefix_length=12, window=16) == [[0, 2], [1, 4, 5], [3]]
    # within the window, padding is harmless
    assert batches(lengths, 8, prefix_length=7, window=16) == [[0, 2, 1, 4, 5, 3]]


@pytest.mark.parametrize("name", ["sender", "receiver"])  # Llama (global attention), Gemma-3 (window 16)
@pytest.mark.parametrize("verbalizers", [[" negative", " positive"], [" a b c", " a"]])
@pytest.mark.parametrize("shots", [1, 3])  # Gemma-3: prefix within / beyond the window
def test_cached_batched_few_shot_equals_uncached_one_by_one(tiny_models, sst2_like_task, name, verbalizers, shots):
    model = zoo.load_model(tiny_models[name], CPU, torch.float32)
    receiver = Receiver(model, zoo.load_tokenizer(tiny_models[name]), verbalizers)
    task = dict(sst2_like_task, verbalizers=verbalizers)
    tokenize = lambda text: receiver.tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    demos = pick_demonstrations(labelled({0: 3, 1: 3}), shots, seed=0)
    prefix_ids = receiver.prefix_ids + tokenize(demonstration_block(task, demos))
    queries = [{"text": t} for t in ["ok", "a longer and more winding review", "bad", "fine film", "x y z w"]]
    query_ids = [tokenize(q) for q in query_texts(task, queries, True)]
    batched = few_shot_scores(receiver, prefix_ids, query_ids, batch_size=4)
    with torch.no_grad():
        single = torch.cat([receiver.class_scores(Prompt(receiver.ids_embeds(prefix_ids + q).unsqueeze(0),
                                                         torch.ones(1, len(prefix_ids) + len(q), dtype=torch.long)))
                            for q in query_ids])
    torch.testing.assert_close(batched, single, atol=1e-4, rtol=1e-4)


def test_evaluate_few_shot_rows_and_seeds(tiny_models, sst2_like_task, splits, tmp_path):
    train, valid = splits
    frames = []
    for seed in (0, 1):
        out = evaluate_few_shot(train, valid, tiny_models["receiver"], tmp_path / f"fs{seed}.csv", task_name="toy",
                                task=sst2_like_task, model_alias="tiny", shots=3, seed=seed, batch_size=4,
                                device=CPU, dtype=torch.float32)
        frames.append(pd.read_csv(out))
    frame = pd.concat(frames)
    assert list(frame.columns) == COLUMNS
    assert set(frame.method) == {"few_shot"} and set(frame.variant) == {"3_shot"}
    assert sorted(set(frame.seed)) == [0, 1] and set(frame.metric) == {"accuracy", "seconds_per_example"}
    assert (frame.n == 8).all() and (frame[frame.metric == "seconds_per_example"].value > 0).all()
    # accuracy is that of the plain computation: each uncached prompt (demonstrations + query) scored alone
    receiver = Receiver(zoo.load_model(tiny_models["receiver"], CPU, torch.float32),
                        zoo.load_tokenizer(tiny_models["receiver"]), sst2_like_task["verbalizers"])
    tokenize = lambda text: receiver.tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    examples, training = read_split(valid)[0], read_split(train)[0]
    labels = torch.tensor([e["label"] for e in examples])
    for seed in (0, 1):
        prefix = receiver.prefix_ids + tokenize(demonstration_block(sst2_like_task,
                                                                    pick_demonstrations(training, 3, seed)))
        with torch.no_grad():
            predicted = torch.cat([receiver.class_scores(Prompt(receiver.ids_embeds(prefix + tokenize(q)).unsqueeze(0),
                                                                torch.ones(1, len(prefix) + len(tokenize(q)),
                                                                           dtype=torch.long))).argmax(-1)
                                   for q in query_texts(sst2_like_task, examples, True)])
        accuracy = frame[(frame.seed == seed) & (frame.metric == "accuracy")].value.item()
        assert accuracy == pytest.approx((predicted == labels).float().mean().item())


# --- relays ---------------------------------------------------------------------------------------

def test_sender_message_names_the_labels_and_keeps_the_whole_input(sst2_like_task):
    text = "word " * 2000
    message = relay.sender_message(sst2_like_task, text, "summary")
    assert message.startswith("Review: " + text) and "negative or positive" in message
    assert "step by step" in relay.sender_message(sst2_like_task, "x", "cot")
    with pytest.raises(ValueError):
        relay.sender_message(sst2_like_task, "x", "poem")


def test_chat_template_or_plain_fallback(tiny_models):
    tokenizer = zoo.load_tokenizer(tiny_models["sender"])  # tiny tokenizers have no chat template
    assert tokenizer.decode(relay.chat_ids(tokenizer, "hi")).endswith("User: hi\nAssistant:")
    tokenizer.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}" \
                              "{% if add_generation_prompt %}<assistant>{% endif %}"
    assert tokenizer.decode(relay.chat_ids(tokenizer, "hi")) == "<user>hi<assistant>"


def generate(tiny_models, task, split, out, **kwargs):
    return relay.generate_relay(tiny_models["sender"], split, out, task=task, mode=kwargs.get("mode", "summary"),
                                max_new_tokens=6, batch_size=3, device=CPU, dtype=torch.float32)


def without_seconds(path):
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in open(path)]


def test_killed_generation_resumes_to_the_same_relays(tiny_models, sst2_like_task, splits, tmp_path, monkeypatch):
    _, valid = splits
    reference = generate(tiny_models, sst2_like_task, valid, tmp_path / "ref.jsonl")
    rows = without_seconds(reference)
    assert [r["index"] for r in rows] == list(range(8))
    assert all(0 <= r["generated_tokens"] <= 6 and r["input_tokens"] > 0 for r in rows)
    meta = json.loads(relay.relay_meta_path(reference).read_text())
    assert meta["rows"] == 8 and meta["request"]["mode"] == "summary"

    real, calls = relay.generate_batch, []

    def dies_on_second_batch(*args, **kwargs):
        calls.append(len(args[2]))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(relay, "generate_batch", dies_on_second_batch)
    out = tmp_path / "run.jsonl"
    with pytest.raises(KeyboardInterrupt):
        generate(tiny_models, sst2_like_task, valid, out)
    partial = relay.partial_path(out)
    assert not out.exists() and len(partial.read_text().splitlines()) == 1 + 3
    with open(partial, "a") as handle:
        handle.write('{"index": 5, "rel')  # torn line of a killed write
    calls.clear()
    monkeypatch.setattr(relay, "generate_batch", lambda *a, **k: calls.append(len(a[2])) or real(*a, **k))
    generate(tiny_models, sst2_like_task, valid, out)
    assert calls == [3, 2]  # only the two missing batches
    assert without_seconds(out) == rows and not partial.exists()


def test_partial_file_of_another_request_is_discarded(tiny_models, sst2_like_task, splits, tmp_path):
    _, valid = splits
    out = tmp_path / "run.jsonl"
    relay.partial_path(out).write_text(json.dumps({"request": {"mode": "old"}}) + "\n"
                                       + json.dumps({"index": 0, "relay": "stale"}) + "\n")
    generate(tiny_models, sst2_like_task, valid, out)
    assert "stale" not in out.read_text()


RELAY_METRICS = ["accuracy", "seconds_per_example", "relay_generated_tokens", "relay_at_token_limit",
                 "relay_seconds_per_example"]


def evaluate(tiny_models, task, relays, splits, out, *, mode="summary", **kwargs):
    train, valid = splits
    return relay.evaluate_relay(relays, valid, tiny_models["receiver"], out, task_name="toy", task=task, mode=mode,
                                sender_alias="s", receiver_alias="r", batch_size=4, device=CPU, dtype=torch.float32,
                                train_split=train, **kwargs)


@pytest.mark.parametrize("mode", ["summary", "cot"])
def test_evaluate_relay_writes_tidy_rows_per_seed(tiny_models, sst2_like_task, splits, tmp_path, mode):
    _, valid = splits
    relays = generate(tiny_models, sst2_like_task, valid, tmp_path / f"{mode}.jsonl", mode=mode)
    out = evaluate(tiny_models, sst2_like_task, relays, splits, tmp_path / f"{mode}.csv", mode=mode, shots=3,
                   seeds=[0, 1])
    frame = pd.read_csv(out, keep_default_na=False)
    assert list(frame.columns) == COLUMNS
    assert set(frame.method) == {relay.METHODS[mode]} and set(frame.sender) == {"s"} and set(frame.receiver) == {"r"}
    assert set(frame.variant) == {""}  # report tables select relays by method, variant ""
    assert list(frame.seed) == [0] * 5 + [1] * 5 and list(frame.metric) == RELAY_METRICS * 2
    assert (frame.n == 8).all()
    assert frame[frame.metric == "relay_generated_tokens"].value.tolist() == pytest.approx(
        [sum(r["generated_tokens"] for r in without_seconds(relays)) / 8] * 2)


def test_relay_prompt_is_the_demonstrations_then_the_relay(tiny_models, sst2_like_task):
    demos = [{"text": "good", "label": 1}, {"text": "bad", "label": 0}]
    prefix, queries = relay.receiver_prompts(sst2_like_task, ["a short summary", "another"], demos)
    assert prefix + queries[0] == ("Review: good\nSentiment: positive\n\nReview: bad\nSentiment: negative"
                                   "\n\nReview: a short summary\nSentiment:")
    assert prefix == demonstration_block(sst2_like_task, demos)  # exactly the k-shot baseline's demonstrations
    assert queries[1] == "\n\n" + relay.receiver_text(sst2_like_task, "another")
    # prompts.relay is the query's template only: demonstrations stay raw texts in prompts.text
    task = dict(sst2_like_task, prompts=dict(sst2_like_task["prompts"], relay="Summary: {relay}\nSentiment:"))
    prefix, queries = relay.receiver_prompts(task, ["short"], demos)
    assert prefix + queries[0] == ("Review: good\nSentiment: positive\n\nReview: bad\nSentiment: negative"
                                   "\n\nSummary: short\nSentiment:")
    # the cached prefix and the queries tokenize as the whole prompt does
    tokenizer = zoo.load_tokenizer(tiny_models["receiver"])
    tokenize = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    for query in relay.receiver_prompts(sst2_like_task, ["a short summary", "", "x\n\ny"], demos)[1]:
        assert tokenize(prefix) + tokenize(query) == tokenize(prefix + query)
    # no demonstrations: the relay text alone, as the receiver read it before
    assert relay.receiver_prompts(sst2_like_task, ["s"], []) == ("", [relay.receiver_text(sst2_like_task, "s")])


def test_receiver_reads_the_few_shot_baselines_demonstrations_per_seed(tiny_models, sst2_like_task, splits, tmp_path,
                                                                      monkeypatch):
    train, valid = splits
    relays = generate(tiny_models, sst2_like_task, valid, tmp_path / "summary.jsonl")
    texts = [json.loads(line)["relay"] for line in open(relays)]
    real, read = relay.few_shot_scores, []

    def recording(receiver, prefix_ids, query_ids, batch_size, desc=""):
        read.append((receiver.tokenizer.decode(prefix_ids), [receiver.tokenizer.decode(q) for q in query_ids]))
        return real(receiver, prefix_ids, query_ids, batch_size, desc)

    monkeypatch.setattr(relay, "few_shot_scores", recording)
    evaluate(tiny_models, sst2_like_task, relays, splits, tmp_path / "out.csv", shots=3, seeds=[0, 1])
    training, _ = read_split(train)
    assert len(read) == 2
    for seed, (prefix, queries) in zip([0, 1], read):
        demos = pick_demonstrations(training, 3, seed)
        assert prefix.endswith(demonstration_block(sst2_like_task, demos))  # <bos>, then the demonstrations
        assert queries == ["\n\n" + relay.receiver_text(sst2_like_task, t) for t in texts]
    assert read[0][0] != read[1][0]  # each seed draws other demonstrations


def test_zero_shots_reads_the_relay_alone_as_before(tiny_models, sst2_like_task, splits, tmp_path, monkeypatch):
    train, valid = splits
    relays = generate(tiny_models, sst2_like_task, valid, tmp_path / "summary.jsonl")
    monkeypatch.setattr(relay, "few_shot_scores", lambda *a, **k: pytest.fail("zero-shot reads no demonstrations"))
    frame = pd.read_csv(evaluate(tiny_models, sst2_like_task, relays, splits, tmp_path / "zero.csv", shots=0,
                                 seeds=[0, 1]), keep_default_na=False)
    assert set(frame.seed) == {""} and list(frame.metric) == RELAY_METRICS  # one row set, no seed
    # the old evaluation: each relay in the receiver's template, scored alone
    receiver = Receiver(zoo.load_model(tiny_models["receiver"], CPU, torch.float32),
                        zoo.load_tokenizer(tiny_models["receiver"]), sst2_like_task["verbalizers"])
    texts = [relay.receiver_text(sst2_like_task, json.loads(line)["relay"]) for line in open(relays)]
    labels = torch.tensor([e["label"] for e in read_split(valid)[0]])
    predictions = predict(receiver, lambda rows: receiver.text_prompt([texts[r] for r in rows]), len(texts), 4, "")
    assert frame.set_index("metric").value["accuracy"] == pytest.approx((predictions == labels).float().mean().item())
    relay_texts = [json.loads(line)["relay"] for line in open(relays)]
    assert torch.equal(relay.receiver_predictions(receiver, sst2_like_task, relay_texts, [], 4, ""), predictions)


def test_demonstrations_need_a_train_split_and_seeds(tiny_models, sst2_like_task, splits, tmp_path):
    relays = generate(tiny_models, sst2_like_task, splits[1], tmp_path / "summary.jsonl")
    with pytest.raises(ConfigError, match="relay.shots"):
        evaluate(tiny_models, sst2_like_task, relays, splits, tmp_path / "out.csv", shots=2, seeds=[])


def test_receiver_prompt_uses_prompts_relay_when_given(sst2_like_task):
    assert relay.receiver_text(sst2_like_task, "a {brace} summary") == "Review: a {brace} summary\nSentiment:"
    task = dict(sst2_like_task, prompts=dict(sst2_like_task["prompts"], relay="Summary: {relay}\nSentiment:"))
    assert relay.receiver_text(task, "short") == "Summary: short\nSentiment:"


def test_config_sections_and_relay_prompt_are_validated():
    import copy

    from conftest import REPO
    from interlingua.config import load_config, validate_config
    from interlingua.errors import ConfigError

    params = load_config(REPO / "params.yaml")
    assert params["few_shot"]["shots"] >= 1 and params["relay"]["max_new_tokens"] >= 1  # schema defaults
    # the relay is scored on every eval row, as every other method: no option to score it on fewer
    config = copy.deepcopy(params)
    config["relay"]["eval_rows"] = 30
    with pytest.raises(ConfigError, match="eval_rows"):
        validate_config(config)
    config = copy.deepcopy(params)
    config["tasks"]["sst2"]["prompts"]["relay"] = "Summary of a review: {relay}\nSentiment (positive or negative):"
    validate_config(config)
    config["tasks"]["sst2"]["prompts"]["relay"] = "no placeholder"
    with pytest.raises(ConfigError, match="tasks.sst2.prompts.relay"):
        validate_config(config)


def test_cli_subcommands(tiny_models, sst2_like_task, splits, tmp_path):
    from interlingua.cli import main

    train, valid = splits
    spec = {"task": sst2_like_task, "runtime": {"device": "cpu", "dtype": "float32"}, "batch_size": 4,
            "relay": {"max_new_tokens": 4, "shots": 2}, "few_shot": {"shots": 2}, "seeds": [0, 4]}
    common = ["--spec", json.dumps(spec), "--threads", "1"]
    assert main(["eval-few-shot", *common, "--task", "toy", "--alias", "r", "--train-split", str(train),
                 "--split", str(valid), "--model-dir", str(tiny_models["receiver"]), "--seed", "3",
                 "--out", str(tmp_path / "fs.csv")]) == 0
    assert main(["generate-relay", *common, "--mode", "cot", "--sender-dir", str(tiny_models["sender"]),
                 "--split", str(valid), "--out", str(tmp_path / "cot.jsonl")]) == 0
    assert main(["eval-relay", *common, "--task", "toy", "--mode", "cot", "--sender", "s", "--receiver", "r",
                 "--relay", str(tmp_path / "cot.jsonl"), "--train-split", str(train), "--split", str(valid),
                 "--receiver-dir", str(tiny_models["receiver"]), "--out", str(tmp_path / "cot.csv")]) == 0
    few_shot, cot = pd.read_csv(tmp_path / "fs.csv"), pd.read_csv(tmp_path / "cot.csv", keep_default_na=False)
    assert set(few_shot.variant) == {"2_shot"} and set(few_shot.seed) == {3}
    assert set(cot.method) == {"cot_relay"} and set(cot.seed) == {0, 4} and set(cot.variant) == {""}


# --- where a relay ends, and what it costs ---------------------------------------------------------

LABELS = [" negative", " positive"]


def test_a_summary_ends_at_its_first_paragraph():
    text = "\n\nThe review praises the acting.\nIt is warm.\n\nNote: I could also rewrite it."
    end = relay.complete_end(text, "summary", LABELS)
    assert text[:end].strip() == "The review praises the acting.\nIt is warm."
    assert relay.complete_end("The review praises the acting.\nIt is warm.", "summary", LABELS) is None  # not yet
    assert relay.complete_end("One line.\n  \nTwo.", "summary") == len("One line.")  # a blank line may hold spaces


def test_a_reasoning_ends_at_the_first_paragraph_that_names_a_label():
    text = ('The text says: "a bleak film."\n\nThe text is Negative. It implies a harsh tone.\n\n'
            "The text is not positive, but ...\n\nThe text is not positive, but ...")
    end = relay.complete_end(text, "cot", LABELS)
    assert text[:end] == 'The text says: "a bleak film."\n\nThe text is Negative. It implies a harsh tone.'
    assert relay.complete_end("It is positively odd.\n\nMore.", "cot", LABELS) is None  # whole words only
    assert relay.complete_end("No label here.\n\nNone here.", "cot", LABELS) is None
    with pytest.raises(ValueError):
        relay.complete_end("x", "poem")


def hf_greedy(model, tokenizer, prompts, max_new_tokens):
    """The plain computation: transformers' own greedy generation, one prompt at a time."""
    out = []
    for prompt in prompts:
        with torch.no_grad():
            ids = model.generate(input_ids=torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                 max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=sorted(relay.stop_ids(model, tokenizer)))
        out.append(ids[0, len(prompt):].tolist())
    return out


def test_batched_generation_equals_transformers_greedy_one_by_one(tiny_models):
    model, tokenizer = zoo.load_model(tiny_models["sender"], CPU, torch.float32), zoo.load_tokenizer(tiny_models["sender"])
    prompts = [relay.chat_ids(tokenizer, m) for m in ["zzz", "hi", "12345"]]  # distinct greedy continuations
    expected = hf_greedy(model, tokenizer, prompts, 12)
    results = relay.generate_batch(model, tokenizer, prompts, 12)
    stops = relay.stop_ids(model, tokenizer)
    for result, ids in zip(results, expected):
        kept = ids[:next((i for i, t in enumerate(ids) if t in stops), len(ids))]
        assert result["generated_tokens"] == len(kept)
        assert result["relay"] == tokenizer.decode(kept, skip_special_tokens=True).strip()
        assert result["finished"] == (len(kept) < 12)


def test_rows_that_end_leave_the_batch_and_the_others_go_on(tiny_models, monkeypatch):
    model, tokenizer = zoo.load_model(tiny_models["sender"], CPU, torch.float32), zoo.load_tokenizer(tiny_models["sender"])
    prompts = [relay.chat_ids(tokenizer, m) for m in ["zzz", "hi", "12345"]]  # distinct greedy continuations
    expected = hf_greedy(model, tokenizer, prompts, 10)
    ends = [3, 10, 6]  # a constructed stop: row r is complete after ends[r] tokens
    complete = {tokenizer.decode(ids[:n], skip_special_tokens=True): n for ids, n in zip(expected, ends)}
    monkeypatch.setattr(relay, "complete_end", lambda text, mode, labels=(): len(text) if text in complete else None)
    widths = []
    model.register_forward_hook(lambda module, args, kwargs, out: widths.append(kwargs["input_ids"].shape[0]),
                                with_kwargs=True)
    results = relay.generate_batch(model, tokenizer, prompts, 10, "summary", LABELS)
    assert [r["generated_tokens"] for r in results] == [3, 10, 6]
    for result, ids, n in zip(results, expected, ends):
        assert result["relay"] == tokenizer.decode(ids[:n], skip_special_tokens=True).strip()  # same tokens as HF
    # the prompts' shared head ("<bos>User: ") read once, then 3 rows; a row that ended costs nothing afterwards
    assert widths == [1] + [3] * 3 + [2] * 3 + [1] * 4
    assert [r["finished"] for r in results] == [True, True, True]  # complete at the cap counts as ended


def test_stored_relays_record_what_the_sender_generated(tiny_models, sst2_like_task, splits, tmp_path):
    _, valid = splits
    out = relay.generate_relay(tiny_models["sender"], valid, tmp_path / "r.jsonl", task=sst2_like_task,
                               mode="summary", max_new_tokens=9, batch_size=3, device=CPU, dtype=torch.float32)
    rows = [json.loads(line) for line in open(out)]
    assert len(rows) == len(read_split(valid)[0])  # every eval row
    model, tokenizer = zoo.load_model(tiny_models["sender"], CPU, torch.float32), zoo.load_tokenizer(tiny_models["sender"])
    texts = [e["text"] for e in read_split(valid)[0]]
    prompts = [relay.chat_ids(tokenizer, relay.sender_message(sst2_like_task, t, "summary")) for t in texts]
    for row, prompt, ids in zip(rows, prompts, hf_greedy(model, tokenizer, prompts, 9)):
        assert row["input_tokens"] == len(prompt)
        generated = ids[:row["generated_tokens"]]
        # the stored relay is the decoded generated tokens, cut at the end of its first complete message
        text = tokenizer.decode(generated, skip_special_tokens=True)
        end = relay.complete_end(text, "summary")
        assert row["relay"] == (text if end is None else text[:end]).strip()
        assert row["finished"] == (end is not None or row["generated_tokens"] < 9)
    meta = json.loads(relay.relay_meta_path(out).read_text())
    assert meta["mean_generated_tokens"] == pytest.approx(sum(r["generated_tokens"] for r in rows) / len(rows))
    assert meta["request"]["stop"] == "first paragraph"
