"""One alignment job: load a pool, train (or fit) its translator, write curves, per-window scores and weights.

Outputs in `out_dir`:
  translator.pt   the translator's state, its kind and config, the members it serves
  curves.csv      step, source, target, condition, nll, n   (align.CURVE_COLUMNS; Figure 3's lines)
  scores.csv      window, source, target, condition, nll    (final; paired by window for the tests)
  summary.json    members, parameter counts, config, seed, wall time
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from ... import zoo
from ...channels.kv.transfer import Endpoint
from ...errors import ConfigError
from ...receiver import Receiver
from ...runtime import atomic_save, seed_everything
from .align import AlignConfig, Member, TextView, train_pool
from .corpus import heldout_windows, load_corpus, sample_windows, source_streams
from .pretrain import MANIFEST as MEMBER_MANIFEST
from .pretrain import load_member


def load_pool(member_dirs: dict[str, str | Path], tokenizer_dir: str | Path, bos: int,
              device: torch.device | str = "cpu") -> dict[str, Member]:
    """Members by name: a pre-trained pool member directory (reads pool ids) or a materialized zoo model
    (reads SmolLM2 ids; a zoo model of another tokenizer reads the windows' text with its own), each frozen,
    with its receiver and endpoint (own sink = its cache of `bos`, or of its own first token)."""
    tokenizer = zoo.load_tokenizer(tokenizer_dir)
    members = {}
    for name, directory in member_dirs.items():
        directory = Path(directory)
        text, own = None, tokenizer
        if (directory / MEMBER_MANIFEST).is_file():
            model, vocab, _ = load_member(directory, device)
            to_model = torch.as_tensor(vocab.to_pool, dtype=torch.long)
        else:
            model, to_model = zoo.load_model(directory, torch.device(device), torch.float32), None
            own = zoo.load_tokenizer(directory)
            if own.get_vocab() != tokenizer.get_vocab():   # another tokenizer: it reads the windows as text
                first = own.bos_token_id if own.bos_token_id is not None else own.eos_token_id
                text = TextView(tokenizer, own, int(first))
                others = [m for m in members.values() if m.text is not None]
                if others and others[0].text.own.get_vocab() != own.get_vocab():
                    raise ConfigError(f"members '{others[0].name}' and '{name}' have two tokenizers other than the "
                                      f"pool's; joining aligns one other tokenizer to the pool's, not two")
        for p in model.parameters():
            p.requires_grad_(False)
        first = text.bos if text else bos if to_model is None else int(to_model[bos])
        members[name] = Member(name, model, Receiver(model, own, []), Endpoint.of(model, first), to_model, text)
    return members


def align_job(member_dirs: dict[str, str | Path], corpus_dir: str | Path, tokenizer_dir: str | Path,
              config: dict, seed: int, out_dir: str | Path, *, train_members=None, paths=None, eval_paths=None,
              start_from: str | Path | None = None, device="cpu", run_key: str = "") -> Path:
    """The whole job (see the module docstring); start_from: a translator.pt whose adapters are kept
    (extensibility: new members are added beside them)."""
    t0 = time.time()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = AlignConfig(**config)
    corpus = load_corpus(corpus_dir)
    bos = int(corpus.vocab.to_source[corpus.bos])
    members = load_pool(member_dirs, tokenizer_dir, bos, device)
    missing = [n for n, w in cfg.mix.items() if w > 0 and n not in corpus.train]
    if missing:
        raise ConfigError(f"kv_alignment train.mix names corpora {missing}; the pool corpus has {sorted(corpus.train)}")
    train_streams, held_streams = source_streams(corpus_dir, "train"), source_streams(corpus_dir, "heldout")
    mix = {n: w for n, w in cfg.mix.items() if w > 0}

    def sample(n, generator):
        return sample_windows(train_streams, mix, cfg.window, n, bos, generator)

    per = -(-cfg.eval_windows // len(mix))
    eval_windows = torch.cat([heldout_windows(held_streams[n], cfg.window, bos, per * (cfg.window - 1))
                              for n in mix])[:cfg.eval_windows]
    translator = None
    if start_from is not None:
        seed_everything(seed)   # the newcomers' adapters are initialised from the run's seed, not the process's state
        translator = load_translator(start_from, members)
    translator, curves, scores = train_pool(members, sample, eval_windows, cfg, seed, out_dir, paths=paths,
                                            train_members=train_members, translator=translator,
                                            eval_paths=eval_paths, run_key=run_key, desc=out_dir.name)
    curves.to_csv(out_dir / "curves.csv", index=False)
    scores.to_csv(out_dir / "scores.csv", index=False)
    atomic_save(out_dir / "translator.pt", {"state": translator.state_dict(), "translator": cfg.translator,
                                            "shapes": {n: m.shape for n, m in members.items()},
                                            "members": list(members)})
    summary = {"members": {n: str(d) for n, d in member_dirs.items()}, "config": config, "seed": seed,
               "parameters": {n: _params(translator, n) for n in members},
               "parameters_total": _params(translator, None), "eval_windows": int(len(eval_windows)),
               "train_members": train_members, "seconds": round(time.time() - t0, 1)}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    return out_dir


def _params(translator, name):
    counter = getattr(translator, "num_parameters", None)
    return int(counter(name)) if counter else 0


def load_translator(path: str | Path, members: dict[str, Member]):
    """A saved shared space, with adapters added for members it does not have yet."""
    from ...channels.kv.translators import build_translator, translator_config

    saved = torch.load(path, map_location="cpu", weights_only=False)
    kind, config = translator_config(saved["translator"])
    translator = build_translator(kind, config, saved["shapes"])
    translator.load_state_dict(saved["state"])
    for name, member in members.items():
        if name not in saved["shapes"]:
            translator.add_member(name, member.shape)
    return translator

