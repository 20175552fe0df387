"""The pool's pre-training text: corpora tokenized with SmolLM2's tokenizer, split, and one pool vocabulary.

Corpora (files relative to the datasets mirror, read in this order):
  tinystories  tinystories_excerpt/train.jsonl                           a document = one row (one story)
  wikitext     wikitext103_v1/validation.jsonl, wikitext103_v1/test.jsonl  a document = one article: the rows
               from one ' = Title = ' heading to the next, blank rows dropped, joined by "\\n" (`<unk>` and the
               ' @-@ ' escapes stay literal text, as WikiText-103 v1 ships them)
Held-out split, per corpus: the LAST ceil(held_out_fraction x documents) documents in file order (TinyStories:
the last stories of the excerpt; WikiText: the last articles of the test file). No held-out document is trained on.
Streams: each document's ids (no specials) followed by one separator (the tokenizer's eos). A window is
[bos] + (seq_len - 1) stream tokens: position 0 is always bos, the attention sink that is never translated.
Pool vocabulary: bos, the separator and the most frequent ids of the training streams (all corpora together)
get pool ids 0..size-2 (frequency rank, ties by smaller id); every other SmolLM2 id maps to one OOV id, size-1.
Members read and predict pool ids; positions stay one-to-one with SmolLM2's tokens.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import yaml

from ...errors import ConfigError, DataError
from ...fingerprint import file_sha256
from ...runtime import atomic_dir

MANIFEST = "corpus.json"
VOCAB_FILE = "vocab.npy"  # (source_size,) int32: SmolLM2 id -> pool id

# name -> (files in reading order, how rows become documents)
CORPORA = {
    "tinystories": (["tinystories_excerpt/train.jsonl"], "rows"),
    "wikitext": (["wikitext103_v1/validation.jsonl", "wikitext103_v1/test.jsonl"], "wikitext_articles"),
}
_ARTICLE_HEADING = re.compile(r" = [^=].* = ")  # ' = Homarus gammarus = ' (sections are ' = = ... = = ')


@dataclass
class CorpusConfig:
    vocab_size: int = 4096            # pool vocabulary incl. the OOV id (4095 ids cover ~90% of the tokens)
    held_out_fraction: float = 0.1    # last fraction of each corpus's documents
    corpora: list = field(default_factory=lambda: list(CORPORA))  # names from CORPORA


def read_settings(source, cls) -> dict:
    """The keys of dataclass `cls` from a dict, a JSON/YAML string or a .json/.yaml file; unknown keys fail."""
    if not isinstance(source, dict):
        inline = str(source).lstrip().startswith(("{", "[")) or "\n" in str(source)
        text = source if inline or not Path(source).is_file() else Path(source).read_text()
        try:
            source = yaml.safe_load(text)  # YAML is a superset of JSON
        except yaml.YAMLError as exc:
            raise ConfigError(f"{cls.__name__}: {source!r} is neither a file nor JSON/YAML: {exc}") from None
        if not isinstance(source, dict):
            raise ConfigError(f"{cls.__name__}: expected a mapping, got {type(source).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(source) - known)
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown key(s) {unknown} (known: {sorted(known)})")
    return source


# ----------------------------------------------------------------------------- pool vocabulary

@dataclass(frozen=True)
class PoolVocab:
    to_pool: np.ndarray    # (source_size,) int64, SmolLM2 id -> pool id
    to_source: np.ndarray  # (size,) int64, pool id -> SmolLM2 id; the OOV id -> -1

    @property
    def size(self) -> int:
        return len(self.to_source)

    @property
    def oov(self) -> int:
        return self.size - 1

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.to_pool.astype(np.int32).tobytes()).hexdigest()[:16]

    def encode(self, ids):
        """SmolLM2 ids -> pool ids (numpy array or torch tensor, any shape)."""
        if isinstance(ids, torch.Tensor):
            return torch.as_tensor(self.to_pool, device=ids.device)[ids]
        return self.to_pool[np.asarray(ids)]

    def decode(self, ids):
        """Pool ids -> SmolLM2 ids (OOV -> -1)."""
        if isinstance(ids, torch.Tensor):
            return torch.as_tensor(self.to_source, device=ids.device)[ids]
        return self.to_source[np.asarray(ids)]

    @classmethod
    def from_to_pool(cls, to_pool: np.ndarray) -> "PoolVocab":
        to_pool = np.asarray(to_pool, dtype=np.int64)
        size = int(to_pool.max()) + 1
        to_source = np.full(size, -1, dtype=np.int64)
        kept = to_pool < size - 1
        to_source[to_pool[kept]] = np.nonzero(kept)[0]
        if (to_source[:-1] < 0).any():
            raise DataError(f"pool vocabulary of size {size} leaves pool ids unused: not a build_vocab mapping")
        return cls(to_pool, to_source)

    def save(self, path: str | Path) -> None:
        np.save(path, self.to_pool.astype(np.int32))

    @classmethod
    def load(cls, path: str | Path) -> "PoolVocab":
        return cls.from_to_pool(np.load(path))


def build_vocab(ids, size: int, *, source_size: int | None = None, keep=()) -> PoolVocab:
    """Pool vocabulary of `size` ids (OOV included): `keep` first, then the most frequent of `ids`
    (ties: smaller id first), every other source id -> the OOV id size - 1."""
    ids = np.asarray(ids, dtype=np.int64).ravel()
    source_size = int(ids.max()) + 1 if source_size is None else source_size
    if ids.size and (ids.min() < 0 or ids.max() >= source_size):
        raise DataError(f"token ids must lie in [0, {source_size}); got [{ids.min()}, {ids.max()}]")
    if not len(set(keep)) + 1 <= size - 1 < source_size:
        raise ConfigError(f"vocab_size={size} must leave room for keep={list(keep)}, the OOV id and be "
                          f"<= the source vocabulary ({source_size})")
    counts = np.bincount(ids, minlength=source_size)
    order = np.argsort(-counts, kind="stable")  # frequency rank, ties by smaller id
    kept = list(dict.fromkeys(int(k) for k in keep))
    kept += [int(i) for i in order if int(i) not in set(kept)][: size - 1 - len(kept)]
    to_pool = np.full(source_size, size - 1, dtype=np.int64)
    to_pool[kept] = np.arange(size - 1)
    return PoolVocab.from_to_pool(to_pool)


def unigram_nll(train_ids, eval_ids, vocab_size: int) -> float:
    """Mean NLL (nats) of `eval_ids` under the add-one smoothed unigram of `train_ids`:
    p(v) = (count(v) + 1) / (N + V)."""
    train_ids, eval_ids = np.asarray(train_ids).ravel(), np.asarray(eval_ids).ravel()
    if eval_ids.size == 0:
        raise DataError("unigram_nll: no evaluation tokens")
    counts = np.bincount(train_ids, minlength=vocab_size).astype(np.float64)
    if counts.size != vocab_size:
        raise DataError(f"unigram_nll: train ids reach {counts.size - 1}, beyond vocab_size={vocab_size}")
    log_p = np.log(counts + 1.0) - math.log(train_ids.size + vocab_size)
    return float(-log_p[eval_ids].mean())


# ----------------------------------------------------------------------------- reading and tokenizing

def read_documents(datasets_dir: str | Path, name: str) -> list[str]:
    """A corpus's documents in file order (see the module docstring)."""
    if name not in CORPORA:
        raise ConfigError(f"unknown pool corpus '{name}' (known: {sorted(CORPORA)})")
    files, rule = CORPORA[name]
    rows = []
    for rel in files:
        path = Path(datasets_dir) / rel
        if not path.is_file():
            raise DataError(f"pool corpus '{name}' needs {path} (datasets mirror: {datasets_dir})")
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            try:
                rows.append(json.loads(line)["text"])
            except (ValueError, KeyError) as exc:
                raise DataError(f"{path}:{n}: not a JSON object with a 'text' field ({exc})") from None
    if rule == "rows":
        return [r for r in rows if r.strip()]
    documents: list[list[str]] = []
    for row in rows:
        if _ARTICLE_HEADING.fullmatch(row) or not documents:
            documents.append([])
        if row.strip():
            documents[-1].append(row)
    return ["\n".join(d) for d in documents if d]


def tokenize_documents(documents: list[str], tokenizer, sep: int) -> np.ndarray:
    """One stream: each document's ids (no specials) followed by `sep`."""
    encoded = tokenizer(documents, add_special_tokens=False)["input_ids"]
    return np.concatenate([np.asarray(ids + [sep], dtype=np.int64) for ids in encoded])


def split_documents(documents: list, held_out_fraction: float) -> tuple[list, list]:
    """(train, held_out): the last ceil(fraction x n) documents are held out."""
    if not 0 < held_out_fraction < 1:
        raise ConfigError(f"held_out_fraction must lie in (0, 1), got {held_out_fraction}")
    n_held = math.ceil(held_out_fraction * len(documents))
    if not 0 < n_held < len(documents):
        raise DataError(f"{len(documents)} documents cannot be split with held_out_fraction={held_out_fraction}")
    return documents[:-n_held], documents[-n_held:]


def special_ids(tokenizer) -> tuple[int, int]:
    """(bos, separator) SmolLM2 ids: the tokenizer's bos and eos (eos doubles as bos when there is none)."""
    sep = tokenizer.eos_token_id
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else sep
    if sep is None:
        raise ConfigError("the pool tokenizer has no eos token (the document separator)")
    return int(bos), int(sep)


def _tokenizer_digest(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def prepare_corpus(datasets_dir: str | Path, tokenizer, out_dir: str | Path,
                   config: CorpusConfig | None = None) -> Path:
    """Tokenize, split and build the pool vocabulary once; writes out_dir/{name}.{train,heldout}.npy
    (SmolLM2 ids), vocab.npy and corpus.json. An out_dir already built from the same request is kept."""
    config = config or CorpusConfig()
    out_dir, datasets_dir = Path(out_dir), Path(datasets_dir)
    bos, sep = special_ids(tokenizer)
    files = {rel: file_sha256(datasets_dir / rel) for name in config.corpora for rel in CORPORA.get(name, ([], ""))[0]
             if (datasets_dir / rel).is_file()}
    request = {"config": vars(config), "files": files, "tokenizer": _tokenizer_digest(tokenizer),
               "source_size": len(tokenizer), "bos": bos, "sep": sep}
    if (out_dir / MANIFEST).is_file() and json.loads((out_dir / MANIFEST).read_text()).get("request") == request:
        return out_dir
    streams, info = {}, {}
    for name in config.corpora:
        train_docs, held_docs = split_documents(read_documents(datasets_dir, name), config.held_out_fraction)
        streams[name] = {"train": tokenize_documents(train_docs, tokenizer, sep),
                         "heldout": tokenize_documents(held_docs, tokenizer, sep)}
        info[name] = {"files": CORPORA[name][0], "documents": {"train": len(train_docs), "heldout": len(held_docs)},
                      "tokens": {part: int(a.size) for part, a in streams[name].items()}}
    all_train = np.concatenate([s["train"] for s in streams.values()])
    vocab = build_vocab(all_train, config.vocab_size, source_size=len(tokenizer), keep=(bos, sep))
    for name, s in streams.items():
        pool = {part: vocab.encode(a) for part, a in s.items()}
        info[name]["oov_rate"] = {part: float((p == vocab.oov).mean()) for part, p in pool.items()}
        info[name]["unigram_nll_heldout"] = unigram_nll(pool["train"], pool["heldout"], vocab.size)
    manifest = {"request": request, "corpora": info, "vocab": {"size": vocab.size, "oov": vocab.oov,
                "digest": vocab.digest, "bos": int(vocab.to_pool[bos]), "sep": int(vocab.to_pool[sep])},
                "source": {"size": len(tokenizer), "bos": bos, "sep": sep},
                "split": f"per corpus, the last ceil({config.held_out_fraction} x documents) documents in file "
                         "order are held out"}
    with atomic_dir(out_dir) as tmp:
        for name, s in streams.items():
            for part, a in s.items():
                np.save(tmp / f"{name}.{part}.npy", a.astype(np.int32))
        vocab.save(tmp / VOCAB_FILE)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return out_dir


# ----------------------------------------------------------------------------- loading and windows

@dataclass
class PoolCorpus:
    vocab: PoolVocab
    train: dict      # corpus -> (n,) int64 pool ids
    heldout: dict    # corpus -> (n,) int64 pool ids
    bos: int         # pool id at position 0 of every window
    manifest: dict


def load_corpus(corpus_dir: str | Path) -> PoolCorpus:
    corpus_dir = Path(corpus_dir)
    if not (corpus_dir / MANIFEST).is_file():
        raise DataError(f"{corpus_dir} is not a pool corpus (no {MANIFEST}); run `interlingua pool-corpus`")
    manifest = json.loads((corpus_dir / MANIFEST).read_text())
    vocab = PoolVocab.load(corpus_dir / VOCAB_FILE)
    if vocab.digest != manifest["vocab"]["digest"]:
        raise DataError(f"{corpus_dir / VOCAB_FILE} does not match {MANIFEST} (digest {vocab.digest})")
    parts = {part: {name: vocab.encode(np.load(corpus_dir / f"{name}.{part}.npy").astype(np.int64))
                    for name in manifest["corpora"]} for part in ("train", "heldout")}
    return PoolCorpus(vocab, parts["train"], parts["heldout"], manifest["vocab"]["bos"], manifest)


def source_streams(corpus_dir: str | Path, part: str) -> dict:
    """corpus -> (n,) int64 SmolLM2 ids of one part (train or heldout): what a member on the full
    vocabulary (SmolLM2 itself) reads; pool members map them with PoolVocab.to_pool."""
    corpus_dir = Path(corpus_dir)
    manifest = json.loads((corpus_dir / MANIFEST).read_text())
    return {name: np.load(corpus_dir / f"{name}.{part}.npy").astype(np.int64) for name in manifest["corpora"]}


def heldout_windows(stream: np.ndarray, seq_len: int, bos: int, max_tokens: int | None = None) -> torch.Tensor:
    """Consecutive non-overlapping windows [bos] + seq_len-1 tokens from the start of `stream`, at most
    `max_tokens` scored (non-bos) tokens; the tail that fills no window is dropped."""
    body = seq_len - 1
    n = len(stream) // body if max_tokens is None else min(len(stream) // body, max_tokens // body)
    if n == 0:
        raise DataError(f"held-out stream of {len(stream)} tokens gives no window of seq_len={seq_len} "
                        f"(max_tokens={max_tokens})")
    chunks = torch.as_tensor(stream[: n * body]).view(n, body)                          # (n, T-1)
    return torch.cat([torch.full((n, 1), bos, dtype=torch.long), chunks.long()], dim=1)  # (n, T)


def sample_windows(streams: dict, mix: dict, seq_len: int, batch: int, bos: int,
                   generator: torch.Generator) -> torch.Tensor:
    """`batch` random windows [bos] + seq_len-1 tokens; each row's corpus drawn with probability ∝ mix."""
    names = [n for n in mix if mix[n] > 0]
    weights = torch.tensor([float(mix[n]) for n in names])
    rows = torch.multinomial(weights, batch, replacement=True, generator=generator)    # (B,)
    out = torch.full((batch, seq_len), bos, dtype=torch.long)                            # (B, T)
    for i, r in enumerate(rows.tolist()):
        stream = streams[names[r]]
        if len(stream) < seq_len:
            raise DataError(f"corpus '{names[r]}' has {len(stream)} training tokens, fewer than seq_len={seq_len}")
        start = int(torch.randint(len(stream) - seq_len + 2, (1,), generator=generator))
        out[i, 1:] = torch.as_tensor(stream[start: start + seq_len - 1])
    return out
