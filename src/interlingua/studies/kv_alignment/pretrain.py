"""Pre-train one small pool member: a from-scratch Llama over the pool vocabulary (or an expert branched
from a parent member), resumable, with a loss curve and a manifest downstream code reads.

A member directory (`save_pretrained` layout, loads with AutoModelForCausalLM.from_pretrained):
  config.json, model.safetensors   the model; input and output embeddings are tied, over pool ids
  pool_vocab.npy                   SmolLM2 id -> pool id (corpus.PoolVocab.load)
  loss.csv                         step, lr, train_loss, heldout_nll_<corpus> (filled at eval steps)
  manifest.json                    config, vocabulary digest, parent, corpora, steps, held-out NLL per corpus
                                   beside the unigram NLL on the same tokens and the gap
One call = one member (a Snakemake rule): inputs the corpus dir (+ the parent dir for an expert), output the
member dir; `snapshots` steps (the mid checkpoint) are written as members of their own beside it.
Resuming: the state (model, AdamW, step, log) is saved every `checkpoint_every` steps and on SIGINT/SIGTERM
to .<out>.resume/ beside the output (Snakemake clears a failed job's outputs, not that; snapshots wait there
too and move to their own dirs with the final member); batches are drawn from a generator seeded by
(seed, step), so a resumed run ends with the same weights as an uninterrupted one.
"""
from __future__ import annotations

import csv
import json
import math
import shutil
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from ...errors import ConfigError, DataError
from ...fingerprint import file_sha256, fingerprint
from ...runtime import atomic_dir
from .corpus import (PoolCorpus, PoolVocab, heldout_windows, load_corpus, read_settings, sample_windows,
                     unigram_nll)

MANIFEST = "manifest.json"
VOCAB_FILE = "pool_vocab.npy"
SIZE_KEYS = ("architecture", "sliding_window", "hidden", "layers", "heads", "kv_heads", "intermediate", "rope_theta")


@dataclass
class PretrainConfig:
    # model (llama: RMSNorm, SwiGLU, rotary, grouped-query attention, tied embeddings; gemma2: the paper's
    # Gemma-2-style members: alternating sliding-window/global layers, logit soft-capping, GeGLU)
    architecture: str = "llama"
    sliding_window: int = 4096    # gemma2 only: the local layers' window
    hidden: int = 96              # d_model
    layers: int = 3
    heads: int = 4                # head_dim = hidden / heads
    kv_heads: int = 2
    intermediate: int = 256       # SwiGLU width
    rope_theta: float = 10000.0
    # data
    seq_len: int = 128            # window length, bos at position 0 included
    batch: int = 16               # windows per step (16 x 127 = 2,032 scored tokens)
    mix: dict = field(default_factory=lambda: {"tinystories": 1.0, "wikitext": 2.0})  # corpus -> row probability;
    #                               WikiText is the harder one (its gap to unigram is the binding one)
    # optimisation: AdamW, linear warmup then cosine decay to min_lr
    steps: int = 500              # steps of this run (an expert's own steps, after its parent's)
    lr: float = 6e-3
    min_lr: float = 6e-4
    warmup: int = 50
    weight_decay: float = 0.1     # on matrices only (not norms)
    grad_clip: float = 1.0
    seed: int = 0                 # initialisation and data order
    # bookkeeping
    eval_every: int = 100         # held-out NLL every N steps (and at step 0, snapshots and the end)
    eval_tokens: int = 16384      # scored held-out tokens per corpus (the first windows of its held-out stream)
    checkpoint_every: int = 50    # resumable state every N steps
    snapshots: list = field(default_factory=list)  # steps also written as members (e.g. the mid checkpoint)
    margin: float = 1.0           # nats below unigram each trained-on corpus should reach (reported)

    @classmethod
    def from_dict(cls, data: dict) -> "PretrainConfig":
        config = cls(**read_settings(data, cls))
        config.check()
        return config

    def check(self) -> None:
        def need(ok, key, why):
            if not ok:
                raise ConfigError(f"pretrain config: {key}={getattr(self, key)!r} {why}")
        for key in ("hidden", "layers", "heads", "kv_heads", "intermediate", "batch", "steps", "eval_tokens",
                    "eval_every", "checkpoint_every"):
            need(isinstance(getattr(self, key), int) and getattr(self, key) > 0, key, "must be a positive integer")
        need(self.architecture in ARCHITECTURES, "architecture", f"must be one of {list(ARCHITECTURES)}")
        need(isinstance(self.sliding_window, int) and self.sliding_window > 0, "sliding_window",
             "must be a positive integer")
        need(self.hidden % self.heads == 0, "heads", f"must divide hidden={self.hidden}")
        need(self.heads % self.kv_heads == 0, "kv_heads", f"must divide heads={self.heads}")
        need(isinstance(self.seq_len, int) and self.seq_len >= 2, "seq_len", "must be an integer >= 2")
        need(0 <= self.warmup < self.steps, "warmup", f"must lie in [0, steps={self.steps})")
        need(0 <= self.min_lr <= self.lr, "min_lr", f"must lie in [0, lr={self.lr}]")
        need(isinstance(self.mix, dict) and any(v > 0 for v in self.mix.values())
             and all(v >= 0 for v in self.mix.values()), "mix", "must map corpora to weights >= 0, one > 0")
        need(all(isinstance(s, int) and 0 < s < self.steps for s in self.snapshots), "snapshots",
             f"must be steps in (0, steps={self.steps})")


# The default pool (issue 11): member -> (PretrainConfig keys over the defaults, parent member or None).
# Sized on this 2-core machine (benchmarks/pool_pretrain_speed.py): ~130 CPU-s per 500-step small member,
# ~200 the medium one, ~30 an expert: ~690 CPU-s in all, under 6 minutes on 2 cores (2 members at a time).
_EXPERT = {"steps": 100, "warmup": 10, "lr": 3e-3, "min_lr": 3e-4, "eval_every": 50}
DEFAULT_POOL = {
    "small_s0": ({"snapshots": [250]}, None),   # 4.1: small_s0_step250 (mid) + final; 4.2 parent; 4.3 seed 0
    "small_s1": ({"seed": 1}, None),            # 4.3
    "small_s2": ({"seed": 2}, None),            # 4.3
    "small_s0_tinystories": ({**_EXPERT, "mix": {"tinystories": 1.0}}, "small_s0"),  # 4.2 experts
    "small_s0_wikitext": ({**_EXPERT, "mix": {"wikitext": 1.0}}, "small_s0"),
    "medium_s0": ({"hidden": 128, "layers": 4, "intermediate": 384}, None),           # 4.4 second size
}


def pool_member(name: str, pool: dict | None = None) -> tuple[PretrainConfig, str | None]:
    """(config, parent member name) of a pool member (DEFAULT_POOL unless `pool` is given)."""
    pool = DEFAULT_POOL if pool is None else pool
    if name not in pool:
        raise ConfigError(f"unknown pool member '{name}' (known: {sorted(pool)})")
    overrides, parent = pool[name]
    return PretrainConfig.from_dict(overrides), parent


def load_pretrain_config(source: str | dict) -> PretrainConfig:
    """A config from a dict, a JSON/YAML string, or a .json/.yaml file."""
    return PretrainConfig.from_dict(read_settings(source, PretrainConfig))


ARCHITECTURES = ("llama", "gemma2")


def build_model(config: PretrainConfig, vocab_size: int, bos: int, eos: int):
    """A freshly initialised member; the weights depend only on (config, seed)."""
    if config.architecture == "gemma2":
        from transformers import Gemma2Config, Gemma2ForCausalLM

        head_dim = config.hidden // config.heads
        gemma = Gemma2Config(vocab_size=vocab_size, hidden_size=config.hidden, intermediate_size=config.intermediate,
                             num_hidden_layers=config.layers, num_attention_heads=config.heads,
                             num_key_value_heads=config.kv_heads, head_dim=head_dim, query_pre_attn_scalar=head_dim,
                             max_position_embeddings=config.seq_len, sliding_window=config.sliding_window,
                             rope_parameters={"rope_type": "default", "rope_theta": float(config.rope_theta)},
                             tie_word_embeddings=True, bos_token_id=bos, eos_token_id=eos, pad_token_id=None)
        torch.manual_seed(config.seed)
        return Gemma2ForCausalLM(gemma)
    llama = LlamaConfig(vocab_size=vocab_size, hidden_size=config.hidden, intermediate_size=config.intermediate,
                        num_hidden_layers=config.layers, num_attention_heads=config.heads,
                        num_key_value_heads=config.kv_heads, max_position_embeddings=config.seq_len,
                        rope_parameters={"rope_type": "default", "rope_theta": float(config.rope_theta)},
                        tie_word_embeddings=True, bos_token_id=bos, eos_token_id=eos, pad_token_id=None)
    torch.manual_seed(config.seed)
    return LlamaForCausalLM(llama)


def lr_at(step: int, config: PretrainConfig) -> float:
    """Learning rate of step `step` (0-based): linear warmup, then cosine from lr to min_lr."""
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return config.min_lr + 0.5 * (config.lr - config.min_lr) * (1 + math.cos(math.pi * progress))


def sequence_nll(model, windows: torch.Tensor, batch: int = 32) -> float:
    """Mean NLL (nats) of windows[:, 1:] given the preceding tokens (position 0, bos, is never scored)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for chunk in windows.split(batch):                                   # (b, T)
            logits = model(input_ids=chunk).logits[:, :-1]                   # (b, T-1, V)
            total += F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), chunk[:, 1:].reshape(-1),
                                     reduction="sum").item()
            count += chunk[:, 1:].numel()
    model.train(was_training)
    return total / count


def load_member(member_dir: str | Path, device: str | torch.device = "cpu"):
    """(model in eval mode, PoolVocab, manifest) of a member directory."""
    member_dir = Path(member_dir)
    if not (member_dir / MANIFEST).is_file():
        raise DataError(f"{member_dir} is not a pool member (no {MANIFEST}); run `interlingua pool-pretrain`")
    manifest = json.loads((member_dir / MANIFEST).read_text())
    model = AutoModelForCausalLM.from_pretrained(member_dir, dtype=torch.float32).to(device).eval()
    return model, PoolVocab.load(member_dir / VOCAB_FILE), manifest


# ----------------------------------------------------------------------------- the run

class _Signals:
    """SIGINT/SIGTERM set a flag the loop reads between steps (a second signal interrupts at once)."""

    def __init__(self):
        self.stop, self._old = False, {}

    def _handle(self, signum, frame):
        if self.stop:
            raise KeyboardInterrupt
        self.stop = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def _write_loss_csv(rows: list, path: Path, corpora: list) -> None:
    columns = ["step", "lr", "train_loss"] + [f"heldout_nll_{c}" for c in corpora]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)


def _parent(parent_dir, config: PretrainConfig, corpus: PoolCorpus):
    """(model, parent record) of an expert's parent; checks vocabulary and size."""
    model, vocab, manifest = load_member(parent_dir)
    if vocab.digest != corpus.vocab.digest:
        raise ConfigError(f"parent {parent_dir} uses pool vocabulary {vocab.digest}, "
                          f"the corpus {corpus.vocab.digest}")
    saved = {k: manifest["config"].get(k, getattr(PretrainConfig(), k)) for k in SIZE_KEYS}
    differ = {k: (saved[k], getattr(config, k)) for k in SIZE_KEYS if saved[k] != getattr(config, k)}
    if differ:
        raise ConfigError(f"an expert keeps its parent's size; parent {parent_dir} differs in {differ} "
                          "(parent, config)")
    if manifest["config"]["seq_len"] < config.seq_len:
        raise ConfigError(f"seq_len={config.seq_len} exceeds the parent's {manifest['config']['seq_len']}")
    model.train()
    model.requires_grad_(True)
    record = {"dir": str(parent_dir), "name": manifest["name"],
              "weights_sha256": file_sha256(Path(parent_dir) / "model.safetensors"),
              "total_steps": manifest["total_steps"], "lineage": manifest["lineage"]}
    return model, record


def _evaluate(model, corpus: PoolCorpus, config: PretrainConfig) -> dict:
    """Held-out NLL per corpus beside the add-one unigram (fitted on that corpus's training tokens) on
    the same scored tokens."""
    result = {}
    for name in corpus.heldout:
        windows = heldout_windows(corpus.heldout[name], config.seq_len, corpus.bos, config.eval_tokens)  # (n, T)
        nll = sequence_nll(model, windows)
        unigram = unigram_nll(corpus.train[name], windows[:, 1:].numpy(), corpus.vocab.size)
        result[name] = {"nll": nll, "unigram_nll": unigram, "gap": unigram - nll, "tokens": windows[:, 1:].numel(),
                        "trained_on": config.mix.get(name, 0) > 0}
    return result


def _write_member(model, out: Path, *, corpus: PoolCorpus, config: PretrainConfig, rows: list, record: dict,
                  heldout: dict, name: str | None = None) -> Path:
    """Write a member dir beside its target, then rename (a killed job never leaves half a member)."""
    trained = [h["gap"] for h in heldout.values() if h["trained_on"]]
    manifest = {**record, "name": name or out.name, "heldout": heldout,
                "margin": {"required": config.margin, "min_gap_trained_on": min(trained),
                           "met": min(trained) >= config.margin}}
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        corpus.vocab.save(tmp / VOCAB_FILE)
        _write_loss_csv(rows, tmp / "loss.csv", list(corpus.heldout))
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return out


def pretrain(config: PretrainConfig | dict, corpus_dir: str | Path, out: str | Path, *,
             parent: str | Path | None = None, snapshot_dirs: dict | None = None,
             resume_dir: str | Path | None = None, on_step=None, progress: bool = True) -> Path:
    """Train one member into `out` (from scratch, or from `parent`'s weights for an expert).
    snapshot_dirs: {step: dir} for config.snapshots (default <out>_step<N> beside out).
    on_step(step): called after each completed step (tests interrupt through it)."""
    config = config if isinstance(config, PretrainConfig) else PretrainConfig.from_dict(config)
    config.check()
    out = Path(out)
    corpus = load_corpus(corpus_dir)
    missing = [n for n, w in config.mix.items() if w > 0 and n not in corpus.train]
    if missing:
        raise ConfigError(f"mix names corpora {missing} that {corpus_dir} lacks (it has {sorted(corpus.train)})")
    snapshot_dirs = {int(s): Path(d) for s, d in (snapshot_dirs or {}).items()}
    snapshot_dirs = {s: snapshot_dirs.get(s, out.with_name(f"{out.name}_step{s}")) for s in config.snapshots}
    resume_dir = Path(resume_dir) if resume_dir else out.with_name(f".{out.name}.resume")
    state_path = resume_dir / "state.pt"
    vocab = corpus.vocab
    bos, sep = corpus.manifest["vocab"]["bos"], corpus.manifest["vocab"]["sep"]

    if parent is None:
        model = build_model(config, vocab.size, bos, sep)
        lineage = {"steps_before": 0, "ancestors": []}
        parent_record = None
    else:
        model, parent_record = _parent(parent, config, corpus)
        lineage = {"steps_before": parent_record["total_steps"],
                   "ancestors": parent_record["lineage"]["ancestors"] + [parent_record["name"]]}
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=config.lr, betas=(0.9, 0.95))
    request = {"config": asdict(config), "vocab": vocab.digest, "corpus": fingerprint(corpus.manifest["request"]),
               "parent": parent_record and parent_record["weights_sha256"]}
    start, rows, seconds = 0, [], 0.0
    if state_path.is_file():
        state = torch.load(state_path, weights_only=False)
        if state["request"] == request:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            start, rows, seconds = state["step"], state["rows"], state["seconds"]
            print(f"resuming {out.name} at step {start} from {state_path}")
        else:
            print(f"discarding {resume_dir}: it was written for another request")
            shutil.rmtree(resume_dir)

    record = {"kind": "kv_pool_member", "config": asdict(config), "architecture": type(model).__name__,
              "parameters": sum(p.numel() for p in model.parameters()),
              "vocab": {"size": vocab.size, "oov": vocab.oov, "digest": vocab.digest, "bos": bos, "sep": sep,
                        "file": VOCAB_FILE},
              "corpus": {"dir": str(corpus_dir), "fingerprint": request["corpus"], "split": corpus.manifest["split"]},
              "corpora_trained_on": [n for n, w in config.mix.items() if w > 0],
              "parent": parent_record, "lineage": lineage}
    tokens_per_step = config.batch * (config.seq_len - 1)

    def save_state(step):
        resume_dir.mkdir(parents=True, exist_ok=True)
        _atomic_save({"request": request, "step": step, "model": model.state_dict(),
                      "optimizer": optimizer.state_dict(), "rows": rows, "seconds": seconds}, state_path)
        _write_loss_csv(rows, resume_dir / "loss.csv", list(corpus.heldout))

    def member_record(step):
        return {**record, "steps": step, "total_steps": lineage["steps_before"] + step,
                "tokens_seen": step * tokens_per_step, "wall_seconds": seconds,
                "tokens_per_second": step * tokens_per_step / seconds if seconds > 0 else None,  # evals included
                "threads": torch.get_num_threads()}

    if start == 0:  # the curve starts at the untrained (or the parent's) held-out NLL
        rows.append({"step": 0, "lr": 0.0, "train_loss": "", **{f"heldout_nll_{n}": h["nll"] for n, h in
                                                                 _evaluate(model, corpus, config).items()}})
    model.train()
    step, boundary, heldout, evaluated_at = start, True, None, None
    bar = tqdm(total=config.steps, initial=start, desc=out.name, disable=not progress)
    try:
        with _Signals() as signals:
            while step < config.steps:
                boundary, tick = False, time.perf_counter()
                generator = torch.Generator().manual_seed(config.seed * 1_000_003 + step)   # resume-exact data
                x = sample_windows(corpus.train, config.mix, config.seq_len, config.batch, bos, generator)  # (B, T)
                lr = lr_at(step, config)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                logits = model(input_ids=x).logits[:, :-1]                                   # (B, T-1, V)
                loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), x[:, 1:].reshape(-1))
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                row = {"step": step, "lr": lr, "train_loss": loss.item()}
                if step % config.eval_every == 0 or step == config.steps or step in snapshot_dirs:
                    heldout, evaluated_at = _evaluate(model, corpus, config), step
                    row.update({f"heldout_nll_{n}": h["nll"] for n, h in heldout.items()})
                    bar.write(f"{out.name} step {step}: " + ", ".join(
                        f"{n} {h['nll']:.3f} (unigram {h['unigram_nll']:.3f})" for n, h in heldout.items()))
                rows.append(row)
                seconds += time.perf_counter() - tick
                if step in snapshot_dirs:  # kept with the resumable state until the run ends
                    _write_member(model, resume_dir / f"snapshot_step{step}", corpus=corpus, config=config,
                                  rows=rows, record={**member_record(step), "snapshot_of": out.name}, heldout=heldout,
                                  name=snapshot_dirs[step].name)
                if step % config.checkpoint_every == 0 and step < config.steps:
                    save_state(step)
                bar.update(1)
                bar.set_postfix(loss=f"{row['train_loss']:.3f}", lr=f"{lr:.1e}")
                boundary = True
                if on_step is not None:
                    on_step(step)
                if signals.stop:
                    raise KeyboardInterrupt
    except KeyboardInterrupt:
        if boundary and step > start:
            save_state(step)
            print(f"\ninterrupted: {out.name} saved at step {step} in {state_path}; run again to resume")
        raise
    finally:
        bar.close()
    final = heldout if evaluated_at == step else _evaluate(model, corpus, config)
    _write_member(model, out, corpus=corpus, config=config, rows=rows, record=member_record(step), heldout=final)
    for snap, target in snapshot_dirs.items():
        if target.exists():
            shutil.rmtree(target)
        (resume_dir / f"snapshot_step{snap}").rename(target)
    shutil.rmtree(resume_dir, ignore_errors=True)
    for name, h in final.items():
        print(f"{out.name} {name}: held-out NLL {h['nll']:.3f}, unigram {h['unigram_nll']:.3f}, "
              f"gap {h['gap']:.3f} nats{'' if h['trained_on'] else ' (not trained on)'}")
    return out
