"""Serving speed on the packaged models, measured side by side in one run (interlingua.speed):
end-to-end latency at batch 1, bridge vs text relay (target: the relay >= 22.4x slower, the paper's
ratio; printed beside the relay's mean length, since a shorter relay lowers it honestly), and throughput
at batch 16, bridge vs the receiver reading the text itself (target: >= 0.95 of it).

The bridge path runs the sender only up to the bridge's source layer and the receiver continues from
the cached KV of the instruction's fixed part; the baselines' text prompts get the same prefix cache.
The bridge is untrained (built and calibrated as in training): its cost does not depend on its weights.
The relay's receiver reads the summary after the same `relay.shots` demonstrations as in evaluation
(cached once as a KV prefix), and the summary ends at its first complete message as in evaluation
(relay.py: its first paragraph, or the end-of-turn token).

On a shared machine, `--threads 1` avoids two-thread kernels waiting for a preempted second thread
(each parallel op then takes a scheduler slice): the ratios are what to compare, not the milliseconds.
"""
import argparse

import torch

from common import REPO, RECEIVER, SENDER, TASK, model_dir, report, rows
from interlingua import zoo
from interlingua.bridges import bridge_config, build_bridge
from interlingua.config import load_config
from interlingua.few_shot import pick_demonstrations
from interlingua.receiver import Receiver, embedding_rms
from interlingua.speed import Serving, latency_rows, throughput_rows

# The default study's bridge, prompts and relay cap (params.yaml).
CONFIG = load_config(REPO / "params.yaml")
BRIDGE = CONFIG["bridges"][CONFIG["study"]["bridges"][0]]
MAX_NEW_TOKENS = CONFIG.get("relay", {}).get("max_new_tokens", 256)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--latency-examples", type=int, default=8, help="validation rows timed at batch 1")
    parser.add_argument("--batches", type=int, default=2, help="batches of 16 timed per method")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    task = CONFIG["tasks"][TASK]
    sender = zoo.load_model(model_dir(SENDER), cpu, torch.float32)
    model = zoo.load_model(model_dir(RECEIVER), cpu, torch.float32)
    receiver = Receiver(model, zoo.load_tokenizer(model_dir(RECEIVER)), task["verbalizers"])
    config = bridge_config("bridge", BRIDGE, sender.config.hidden_size, model.config.hidden_size)
    torch.manual_seed(0)
    bridge = build_bridge(BRIDGE["type"], config).eval()
    bridge.calibrate(embedding_rms(model))
    shots = CONFIG["relay"]["shots"]
    demonstrations = pick_demonstrations(rows("train"), shots, CONFIG["few_shot"]["seeds"][0]) if shots else []
    serving = Serving(sender, zoo.load_tokenizer(model_dir(SENDER)), receiver, bridge, config.source_layer, task,
                      MAX_NEW_TOKENS, cpu, torch.float32, demonstrations)
    base = {"task": TASK, "sender": SENDER, "receiver": RECEIVER, "bridge": BRIDGE["type"], "seed": 0,
            "fingerprint": ""}
    texts = [row["text"] for row in rows("validation", max(args.latency_examples, 16 * args.batches))]

    latency = {(r["method"], r["metric"]): r["value"]
               for r in latency_rows(serving, texts[:args.latency_examples], base, warmup=args.warmup)}
    bridge_s, relay_s = latency["bridge", "latency_seconds"], latency["text_relay", "latency_seconds"]
    print(f"latency at batch 1 (median of {args.latency_examples} {TASK} validation rows, {SENDER} -> {RECEIVER}):")
    print(f"  bridge {bridge_s * 1e3:.1f} ms = sender up to layer {config.source_layer} of "
          f"{sender.config.num_hidden_layers} {latency['bridge', 'latency_sender_encode_seconds'] * 1e3:.1f} ms"
          f" + bridge {latency['bridge', 'latency_bridge_seconds'] * 1e3:.1f} ms"
          f" + receiver {latency['bridge', 'latency_receiver_seconds'] * 1e3:.1f} ms (medians per stage)")
    print(f"  text relay {relay_s * 1e3:.1f} ms = generate "
          f"{latency['text_relay', 'latency_relay_generate_seconds'] * 1e3:.1f} ms"
          f" + receiver {latency['text_relay', 'latency_receiver_seconds'] * 1e3:.1f} ms; "
          f"mean generated length {latency['text_relay', 'generated_tokens']:.1f} tokens "
          f"(greedy, chat template, cap {MAX_NEW_TOKENS})")
    length = latency["text_relay", "generated_tokens"]
    report(f"end-to-end latency, text relay ({length:.1f} tokens) / bridge", relay_s / bridge_s, ">= 22.4",
           relay_s / bridge_s >= 22.4)

    speed = {r["method"]: r["value"] for r in throughput_rows(serving, texts, base, batch_sizes=(16,),
                                                               batches=args.batches, methods=("bridge", "zero_shot"))}
    print(f"throughput at batch 16 ({args.batches} batches, {args.threads} threads): bridge {speed['bridge']:.1f} samples/s, "
          f"{RECEIVER} reading the text {speed['zero_shot']:.1f} samples/s")
    ratio = speed["bridge"] / speed["zero_shot"]
    report("throughput at batch 16, bridge / receiver direct", ratio, ">= 0.95", ratio >= 0.95)


if __name__ == "__main__":
    main()
