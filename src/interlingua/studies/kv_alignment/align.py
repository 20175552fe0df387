"""Training a shared K-V space for a pool, and scoring every path with its controls (Dery et al. 2.2-2.3).

A window of SmolLM2 token ids [bos] + prefix (P) + suffix (S) is read by every member in its own ids.
The source caches [bos] + the first P-1 prefix tokens (frozen, no grad); the channel (channels/kv/transfer.py)
makes it the target's cache: the target's own sink, then positions 1..P-1 translated through S. The target
then reads the last prefix token itself (a cache holds no hidden state to predict from) and is scored on all
S suffix tokens, the first included (the one the prefix informs most). The loss is that NLL, plus an optional reconstruction
term (MSE against the target's own cache of the prefix, per layer over its variance). Each step samples
`paths_per_step` (source, target) paths from the allowed ones, self-cycles included.

Scored conditions, per target and evaluation window (one row each, so conditions are paired by window):
  none       the target's sink alone, then the last prefix token and the suffix (no cached prefix)
  own        the target's own cache of the prefix (what translation aims at)
  matched    the prefix translated from a source (source == target: the cycle m -> S -> m)
  shuffled   another window's prefix translated from the same source (runtime.derangement)
  zero       the target's sink, then all-zero keys and values at the prefix positions
"""
from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from ...channels.kv.cache import KVBlock, kv_of
from ...channels.kv.tokens import align, char_spans, decoded_spans, stretch
from ...channels.kv.transfer import Endpoint, translate_block, translate_pooled, zero_block
from ...channels.kv.translators import CacheShape, build_translator, translator_config
from ...errors import ConfigError
from ...fingerprint import fingerprint
from ...receiver import Receiver
from ...runtime import atomic_save, derangement, lr_lambda, seed_everything
from .configs import AlignConfig

CONDITIONS = ["none", "own", "matched", "shuffled", "zero"]
CURVE_COLUMNS = ["step", "source", "target", "condition", "nll", "n"]


@dataclass
class TextView:
    """How a member with another tokenizer than the pool's reads the pool's windows: as text (joining).
    The pool's special ids (the document separator) decode to nothing: they get empty spans and no member
    text, so another tokenizer never reads a separator's literal name."""
    pool: object                   # the pool's tokenizer (the windows' ids)
    own: object                    # the member's tokenizer
    bos: int                       # the member's first token (its attention sink)

    def prefix(self, row: list[int]) -> tuple[list[int], list[tuple[int, int]]]:
        """The member's ids of the row's carried prefix text and their character spans (no sink)."""
        text, _ = decoded_spans(self.pool, row, skip_special_tokens=True)
        return char_spans(self.own, text, add_special_tokens=False)

    def continuation(self, row: list[int]) -> list[int]:
        text = self.pool.decode(row, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        return self.own(text, add_special_tokens=False).input_ids


@dataclass
class Member:
    """A frozen pool member as the channel sees it."""
    name: str
    model: torch.nn.Module
    receiver: Receiver             # scores suffixes after a prefix cache
    end: Endpoint                  # rotary specs and own sink cache
    to_model: torch.Tensor | None  # (V_smollm2,) SmolLM2 id -> the member's id; None: reads SmolLM2 ids
    text: TextView | None = None   # another tokenizer: reads the windows as text, its positions are its tokens

    @property
    def shape(self) -> CacheShape:
        return CacheShape.from_hf_config(self.model.config)

    def ids(self, windows: torch.Tensor) -> torch.Tensor:
        return windows if self.to_model is None else self.to_model[windows]

    def prefix_ids(self, windows: torch.Tensor, prefix_tokens: int) -> list[list[int]]:
        """[sink] + the first P-1 prefix tokens, in the member's ids (its own tokens of that text, ragged)."""
        if self.text is None:
            return self.ids(windows[:, :prefix_tokens]).tolist()
        return [[self.text.bos] + self.text.prefix(row)[0] for row in windows[:, 1:prefix_tokens].tolist()]

    def prefix_spans(self, windows: torch.Tensor, prefix_tokens: int, pool_tokenizer) -> list[list[tuple[int, int]]]:
        """Each row's character spans of its carried prefix positions 1.. in the prefix text (token alignment)."""
        rows = windows[:, 1:prefix_tokens].tolist()
        if self.text is None:
            return [decoded_spans(pool_tokenizer, row, skip_special_tokens=True)[1] for row in rows]
        return [self.text.prefix(row)[1] for row in rows]

    def prefix_cache(self, windows: torch.Tensor, prefix_tokens: int) -> KVBlock:
        """The cache of [bos] + the first P-1 prefix tokens (what the channel carries)."""
        with torch.no_grad():
            return kv_of(self.model, self.prefix_ids(windows, prefix_tokens))

    def suffix(self, windows: torch.Tensor, prefix_tokens: int) -> list[list[int]]:
        """The last prefix token (read by the target itself) and the S suffix tokens (all scored); another
        tokenizer reads that text's tokens: its first read, the rest scored."""
        if self.text is None:
            return self.ids(windows[:, prefix_tokens:]).tolist()
        return [self.text.continuation(row) for row in windows[:, prefix_tokens:].tolist()]


def carry(translator, src: Member, tgt: Member, windows: torch.Tensor, prefix_tokens: int,
          source_windows: torch.Tensor | None = None) -> KVBlock:
    """The target's cache for `windows` from the source's cache of `source_windows` (default: the same; else
    the shuffled control). Between tokenizers, each target position pools the shared vectors of the source
    positions covering its characters; another window's source tokens are stretched over this window's text.
    The target's positions are always its own tokens of this window (every condition alike)."""
    other = windows if source_windows is None else source_windows
    block = src.prefix_cache(other, prefix_tokens)
    view = src.text or tgt.text
    if view is None or (src.text is not None and tgt.text is not None and source_windows is None):
        return translate_block(translator, src.name, tgt.name, block, src.end, tgt.end)   # one tokenizer
    source_spans = src.prefix_spans(other, prefix_tokens, view.pool)
    target_spans = tgt.prefix_spans(windows, prefix_tokens, view.pool)
    width = max(len(spans) for spans in target_spans)
    pooling = torch.zeros(len(windows), width, block.length - 1)
    mask = torch.zeros(len(windows), width, dtype=torch.bool)
    for b, (mine, theirs) in enumerate(zip(target_spans, source_spans)):
        if source_windows is not None:
            theirs = stretch(theirs, max((e for _, e in mine), default=0))
        alignment = align(mine, theirs)
        if alignment.kept:   # a position no source character reaches reads a zero shared vector
            pooling[b, alignment.kept, :len(theirs)] = alignment.pooling()
        mask[b, :len(mine)] = True
    return translate_pooled(translator, src.name, tgt.name, block, src.end, tgt.end, pooling, mask)


def all_paths(names: list[str]) -> list[tuple[str, str]]:
    return [(s, t) for s in names for t in names]


def reconstruction_loss(block: KVBlock, own: KVBlock) -> torch.Tensor:
    """Mean over layers of MSE(translated, own) / var(own), keys and values, position 0 excluded."""
    block, own = block.slice(1), own.slice(1)
    terms = [((a - b) ** 2).mean() / b.var().clamp(min=1e-8)
             for a, b in zip(block.keys + block.values, own.keys + own.values)]
    return torch.stack(terms).mean()


def path_loss(translator, src: Member, tgt: Member, windows: torch.Tensor, config: AlignConfig) -> torch.Tensor:
    block = carry(translator, src, tgt, windows, config.prefix_tokens)
    loss = tgt.receiver.suffix_nll(block, tgt.suffix(windows, config.prefix_tokens)).mean()
    if config.reconstruction_weight:
        loss = loss + config.reconstruction_weight * reconstruction_loss(
            block, tgt.prefix_cache(windows, config.prefix_tokens))
    return loss


@torch.no_grad()
def score_paths(translator, members: dict[str, Member], paths, windows: torch.Tensor, config: AlignConfig,
                batch: int = 16, controls_only: bool = False) -> pd.DataFrame:
    """Per window NLL (rows: window, source, target, condition, nll) for every path and its controls;
    `none`, `own` and `zero` once per target (source = target). controls_only: no translated rows."""
    perm = derangement(len(windows), seed=len(windows))
    rows = []
    targets = sorted({t for _, t in paths})
    for start in range(0, len(windows), batch):
        chunk = windows[start:start + batch]
        index = list(range(start, start + len(chunk)))
        for t in targets:
            tgt = members[t]
            suffix = tgt.suffix(chunk, config.prefix_tokens)
            own = tgt.prefix_cache(chunk, config.prefix_tokens)
            blocks = {"none": tgt.end.sink, "own": own, "zero": zero_block(own, tgt.end)}
            for condition, block in blocks.items():
                rows += _rows(index, t, t, condition, tgt.receiver.suffix_nll(block, suffix))
            if controls_only:
                continue
            for s in sorted({s for s, tt in paths if tt == t}):
                others = windows[perm[start:start + len(chunk)]]
                for condition, source_windows in (("matched", None), ("shuffled", others)):
                    translated = carry(translator, members[s], tgt, chunk, config.prefix_tokens, source_windows)
                    rows += _rows(index, s, t, condition, tgt.receiver.suffix_nll(translated, suffix))
    return pd.DataFrame(rows, columns=["window", "source", "target", "condition", "nll"])


def _rows(index, source, target, condition, nll):
    return [(i, source, target, condition, float(v)) for i, v in zip(index, nll)]


def curve_points(scores: pd.DataFrame, step: int) -> pd.DataFrame:
    """Mean NLL per (source, target, condition) at a step, with n (windows)."""
    out = scores.groupby(["source", "target", "condition"], as_index=False)["nll"].agg(nll="mean", n="count")
    out.insert(0, "step", step)
    return out[CURVE_COLUMNS]


def fit_ridge(translator, members: dict[str, Member], paths, sample, config: AlignConfig,
              generator: torch.Generator) -> None:
    """Accumulate the ridge statistics of every path on `fit_windows` training windows, then solve."""
    from ...channels.kv.transfer import position_free

    for s, t in paths:
        translator.add_pair(s, t)
    done = 0
    while done < config.fit_windows:
        windows = sample(min(config.batch * 4, config.fit_windows - done), generator)
        for s, t in paths:
            src = members[s].prefix_cache(windows, config.prefix_tokens).slice(1)
            tgt = members[t].prefix_cache(windows, config.prefix_tokens).slice(1)
            translator.accumulate(s, t, position_free(src, members[s].end), position_free(tgt, members[t].end),
                                  mask=src.mask)
        done += len(windows)
    translator.fit()


def train_pool(members: dict[str, Member], sample, eval_windows: torch.Tensor, config: AlignConfig, seed: int,
               out_dir: str | Path, *, paths=None, train_members=None, translator=None, run_key: str = "",
               eval_paths=None, desc: str = "align") -> tuple[object, pd.DataFrame, pd.DataFrame]:
    """Train (or fit) a translator over the pool; returns (translator, curves, final per-window scores).

    sample(n, generator) -> (n, window) training windows (SmolLM2 ids) drawn with the run's generator; paths: the
    (source, target) paths trained on (default: all, self-cycles included); train_members: only these
    members' adapters learn (extensibility: a new member beside frozen ones); translator: start from it
    (else a new one from config.translator); eval_paths: the paths scored (default: all).
    Resumable: state every checkpoint_every steps in out_dir/resume.pt (same run_key), so a killed run ends
    with the same weights and curves.
    """
    out_dir = Path(out_dir)
    generator = seed_everything(seed)
    names = list(members)
    paths = list(paths or all_paths(names))
    eval_paths = list(eval_paths or all_paths(names))
    kind, translator_cfg = translator_config(config.translator)
    foreign = [n for n, m in members.items() if m.text is not None]
    if foreign and (kind != "cross_attention" and kind != "linear" or config.reconstruction_weight):
        raise ConfigError(f"members {foreign} have another tokenizer than the pool: their positions are not the "
                          f"pool's, so only a shared space (cross_attention, linear) pooled by characters reaches "
                          f"them, with reconstruction_weight 0 (got {kind}, {config.reconstruction_weight})")
    if translator is None:
        translator = build_translator(kind, translator_cfg, {n: m.shape for n, m in members.items()})
    if kind == "identity":
        same = [(s, t) for s, t in eval_paths if members[s].shape == members[t].shape]
        if not same:
            raise ConfigError(f"identity translator: no path between members of one cache shape among {names}")
        eval_paths = same
    if kind == "ridge":
        fit_ridge(translator, members, [(s, t) for s, t in eval_paths if s != t], sample, config, generator)
        eval_paths = [(s, t) for s, t in eval_paths if s != t]
    trainable = getattr(translator, "trainable", False) and config.steps > 0
    curves: list[pd.DataFrame] = []
    if not trainable:
        final = score_paths(translator, members, eval_paths, eval_windows, config)
        return translator, curve_points(final, 0), final

    if train_members is not None:
        translator.freeze_except(train_members)
    params = [p for p in translator.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config.warmup, config.steps))
    resume, start = out_dir / "resume.pt", 0
    picker = random.Random(seed)  # which paths each step
    key = fingerprint({"run": run_key, "config": asdict(config), "seed": seed, "paths": paths,
                       "train_members": train_members})
    if resume.exists():
        state = torch.load(resume, map_location="cpu", weights_only=False)
        if state["key"] == key:
            translator.load_state_dict(state["translator"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            generator.set_state(state["generator"])
            picker.setstate(state["random"])
            torch.set_rng_state(state["rng"])
            curves, start = state["curves"], state["step"]
    if start == 0:
        curves.append(curve_points(score_paths(translator, members, eval_paths, eval_windows, config), 0))
    translator.train()
    bar = tqdm(range(start, config.steps), total=config.steps, initial=start, desc=desc)
    for step in bar:
        windows = sample(config.batch, generator)
        chosen = picker.sample(paths, min(config.paths_per_step, len(paths)))
        loss = sum(path_loss(translator, members[s], members[t], windows, config) for s, t in chosen) / len(chosen)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        optimizer.step()
        scheduler.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
        done = step + 1
        if done % config.eval_every == 0 and done < config.steps:
            translator.eval()
            curves.append(curve_points(score_paths(translator, members, eval_paths, eval_windows, config), done))
            translator.train()
        if done % config.checkpoint_every == 0 and done < config.steps:
            atomic_save(resume, {"key": key, "step": done, "translator": translator.state_dict(),
                                 "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                                 "generator": generator.get_state(), "random": picker.getstate(),
                                 "rng": torch.get_rng_state(), "curves": curves})
    translator.eval()
    final = score_paths(translator, members, eval_paths, eval_windows, config)
    curves.append(curve_points(final, config.steps))
    resume.unlink(missing_ok=True)
    return translator, pd.concat(curves, ignore_index=True), final
