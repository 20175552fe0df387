"""Extraction tokens/s versus the bare sender forward on the same batches (target: overhead <= 5%)."""
import argparse
import tempfile
import time
from pathlib import Path

import torch

from common import SENDER, model_dir, report, split_path
from interlingua import zoo
from interlingua.extract import capture_layers, decoder_of, extract
from interlingua.store import read_manifest
from interlingua.tasks import read_split


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=400)
    parser.add_argument("--layers", type=int, nargs="+", default=[15])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=5, help="interleaved runs of each; the best is kept "
                        "(run-to-run noise here is about 10 %%, twice the target)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    device = torch.device("cpu")
    rows, _ = read_split(split_path("train"))
    with tempfile.TemporaryDirectory() as tmp:
        subset = Path(tmp) / "train.jsonl"
        subset.write_text("".join(split_path("train").read_text().splitlines(keepends=True)[:args.rows]))
        Path(tmp, "train.meta.json").write_text(split_path("train").with_suffix(".meta.json").read_text())
        tokenizer = zoo.load_tokenizer(model_dir(SENDER))
        ids = [tokenizer(f"Review: {r['text']}")["input_ids"] for r in rows[:args.rows]]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        tokens = sum(map(len, ids))

        def bare():  # the same length-sorted batches, same truncated forward, nothing stored
            # A freshly loaded model, as extraction has (first forwards of a new model are slower).
            decoder = decoder_of(zoo.load_model(model_dir(SENDER), device, torch.float32))
            started = time.perf_counter()
            with torch.inference_mode(), capture_layers(decoder, args.layers):
                for s in range(0, len(order), args.batch_size):
                    batch = [ids[i] for i in order[s:s + args.batch_size]]
                    longest = max(map(len, batch))
                    x = torch.tensor([b + [tokenizer.pad_token_id] * (longest - len(b)) for b in batch])
                    m = torch.tensor([[1] * len(b) + [0] * (longest - len(b)) for b in batch])
                    decoder(input_ids=x, attention_mask=m, use_cache=False)
            return time.perf_counter() - started

        def full(index):
            # The manifest times the batch loop (forward + writes) and the finalisation (last flush,
            # checksums): everything but loading the model and tokenizing.
            out = extract(model_dir(SENDER), subset, Path(tmp) / f"s{index}.zarr", sender_prompt="Review: {text}",
                          layers=args.layers, storage_dtype="bfloat16", batch_size=args.batch_size, device=device,
                          dtype=torch.float32)
            manifest = read_manifest(out)
            return manifest["seconds"] + manifest["finalize_seconds"]

        bare()  # warm-up
        t_bare, t_full = [], []
        for index in range(args.repeat):  # interleaved, best of each
            t_bare.append(bare())
            t_full.append(full(index))
        t_bare, t_full = min(t_bare), min(t_full)
    print(f"{args.rows} rows, {tokens} tokens, layers {args.layers}, batch {args.batch_size}")
    print(f"bare sender forward: {tokens / t_bare:,.0f} tokens/s; extraction to Zarr: {tokens / t_full:,.0f} tokens/s")
    overhead = t_full / t_bare - 1
    report("extraction overhead over the bare forward", overhead, "<= 0.05", overhead <= 0.05)


if __name__ == "__main__":
    main()
