"""Study 2's pool pre-training: training tokens/s of candidate member sizes on the real pool corpus.

Run after `interlingua pool-corpus` (the corpus dir holds SmolLM2-tokenized TinyStories + WikiText):
  python benchmarks/pool_pretrain_speed.py --corpus results/kv_alignment/pool_corpus --threads 2
Each size: a fresh member, `--warmup` untimed steps, then `--steps` timed AdamW steps (the pretrain loop's
own pieces: sample_windows, forward, cross-entropy, backward, clip, step). On a shared machine the best step
is the estimate of the machine's speed, the median what the other jobs left."""
import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from interlingua.studies.kv_alignment.corpus import load_corpus, sample_windows  # noqa: E402
from interlingua.studies.kv_alignment.pretrain import PretrainConfig, build_model  # noqa: E402

SIZES = {  # name: (hidden, layers, heads, kv_heads, intermediate)
    "d96-L3": (96, 3, 4, 2, 256),
    "d128-L4": (128, 4, 4, 2, 384),
    "d192-L4": (192, 4, 6, 2, 512),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--sizes", nargs="+", default=list(SIZES))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    corpus = load_corpus(args.corpus)
    bos, sep = corpus.manifest["vocab"]["bos"], corpus.manifest["vocab"]["sep"]
    print(f"vocab {corpus.vocab.size}, threads {args.threads}")
    for name in args.sizes:
        hidden, layers, heads, kv_heads, intermediate = SIZES[name]
        config = PretrainConfig(hidden=hidden, layers=layers, heads=heads, kv_heads=kv_heads, intermediate=intermediate)
        model = build_model(config, corpus.vocab.size, bos, sep)
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr)
        times = []
        for step in range(args.warmup + args.steps):
            tick = time.perf_counter()
            x = sample_windows(corpus.train, config.mix, config.seq_len, config.batch, bos,
                               torch.Generator().manual_seed(step))                      # (B, T)
            logits = model(input_ids=x).logits[:, :-1]                                   # (B, T-1, V)
            F.cross_entropy(logits.reshape(-1, logits.size(-1)), x[:, 1:].reshape(-1)).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - tick)
        times = sorted(times[args.warmup:])
        best, median = times[0], times[len(times) // 2]
        params = sum(p.numel() for p in model.parameters())
        tokens = config.batch * (config.seq_len - 1)
        print(f"{name:>8}: {params / 1e6:.2f}M parameters, s/step best {best:.3f} median {median:.3f}; "
              f"tokens/s best {tokens / best:,.0f} median {tokens / median:,.0f}")


if __name__ == "__main__":
    main()
