"""Reading cached states versus recomputing them with the sender (target: >= 50x faster per token),
and one bridge training step from the cache versus the same step with the sender running online
(target: <= 0.6x the time)."""
import argparse
import tempfile
from pathlib import Path

import torch

from common import REPO, RECEIVER, SENDER, TASK, model_dir, report, split_path, timed
from interlingua import zoo
from interlingua.bridges import bridge_config, build_bridge
from interlingua.config import load_config
from interlingua.extract import decoder_of, extract, sender_states
from interlingua.receiver import Receiver, embedding_rms
from interlingua.store import ActivationStore

# The default study's bridge, prompts and batch size (params.yaml).
CONFIG = load_config(REPO / "params.yaml")
BRIDGE = CONFIG["bridges"][CONFIG["study"]["bridges"][0]]
LAYER, BATCH = BRIDGE["source_layer"], CONFIG["train"]["batch_size"]
PROMPTS = CONFIG["tasks"][TASK]["prompts"]


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (best of each)")
    parser.add_argument("--threads", type=int, default=2, help="1 on a shared machine (see latency_throughput.py)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        subset = Path(tmp) / "train.jsonl"
        subset.write_text("".join(split_path("train").read_text().splitlines(keepends=True)[:args.rows]))
        Path(tmp, "train.meta.json").write_text(split_path("train").with_suffix(".meta.json").read_text())
        store = ActivationStore(extract(model_dir(SENDER), subset, Path(tmp) / "s.zarr", sender_prompt=PROMPTS["sender"],
                                        layers=[LAYER], storage_dtype="bfloat16", batch_size=16, device=cpu,
                                        dtype=torch.float32))
        tokenizer = zoo.load_tokenizer(model_dir(SENDER))
        sender = decoder_of(zoo.load_model(model_dir(SENDER), cpu, torch.float32))
        ids = {int(store.example_index[r]): store.row_tokens(r).tolist() for r in range(len(store))}
        generator = torch.Generator().manual_seed(0)
        plan = [torch.randperm(len(store), generator=generator)[:BATCH].tolist() for _ in range(args.steps)]

        def online_states(batch):
            states, _ = sender_states(sender, [ids[int(store.example_index[r])] for r in batch], [LAYER],
                                      tokenizer.pad_token_id, cpu, torch.float32)
            longest = max(len(ids[int(store.example_index[r])]) for r in batch)
            mask = torch.tensor([[i < len(ids[int(store.example_index[r])]) for i in range(longest)] for r in batch])
            return states[LAYER].clone(), mask  # out of inference mode, so autograd may use it

        tokens = sum(len(ids[int(store.example_index[r])]) for batch in plan for r in batch)
        cold = ActivationStore(store.path)  # nothing decoded yet: every read decompresses a chunk
        t_cold = timed(lambda: [cold.batch(b, LAYER) for b in plan])
        t_read = timed(lambda: [store.batch(b, LAYER) for b in plan], 3)  # decoded chunks cached, as in training
        t_recompute = timed(lambda: [online_states(b) for b in plan], 3)
        print(f"per token: read from store {t_read / tokens * 1e6:.1f} us (first touch {t_cold / tokens * 1e6:.1f} us), "
              f"recompute with the sender {t_recompute / tokens * 1e6:.1f} us "
              f"({tokens} tokens in {args.steps} batches of {BATCH})")
        report("reading cached states vs recomputing (speed-up)", t_recompute / t_read, ">= 50", t_recompute / t_read >= 50)
        report("  the same on first touch (chunks not yet decoded)", t_recompute / t_cold, "", t_recompute / t_cold >= 50)

        model = zoo.load_model(model_dir(RECEIVER), cpu, torch.float32)
        receiver = Receiver(model, zoo.load_tokenizer(model_dir(RECEIVER)), CONFIG["tasks"][TASK]["verbalizers"])
        bridge = build_bridge(BRIDGE["type"], bridge_config("bridge", BRIDGE, store.hidden_size,
                                                            model.config.hidden_size))
        bridge.calibrate(embedding_rms(model))
        optimizer = torch.optim.AdamW(bridge.parameters(), lr=CONFIG["train"]["lr"])

        def step(states, mask, labels):
            soft = bridge(states, mask)
            loss = receiver.label_loss(receiver.soft_prompt(soft, PROMPTS["instruction"]), labels,
                                       over=CONFIG["train"]["loss"])  # the training objective the config runs
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        def from_cache():
            for batch in plan:
                step(*store.batch(batch, LAYER))

        def with_sender():
            for batch in plan:
                states, mask = online_states(batch)
                step(states, mask, store.labels[batch])

        from_cache()  # warm-up
        # Interleaved rounds, best of each: a burst of other load on the machine hits both alike.
        rounds = [(timed(from_cache), timed(with_sender)) for _ in range(args.rounds)]
        t_cache, t_online = min(r[0] for r in rounds), min(r[1] for r in rounds)
        print(f"training step: from cache {t_cache / args.steps:.3f} s, with the sender online "
              f"{t_online / args.steps:.3f} s (batch {BATCH}, receiver {RECEIVER}, {args.threads} threads)")
        report("training step from cache / with sender online", t_cache / t_online, "<= 0.6", t_cache / t_online <= 0.6)


if __name__ == "__main__":
    main()
