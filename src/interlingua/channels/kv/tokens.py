"""Token alignment across tokenizers: which sender positions cover the characters of each receiver token.

Both models read the same string (e.g. "Review: {text}"). Each tokenizer gives every token a character
span [start, end) of that string (special tokens such as <bos> have an empty span). Receiver token r is
aligned to every sender token whose span overlaps its own; because both tokenizations walk the string
left to right, that set is one contiguous range [lo_r, hi_r) and the ranges are monotone
(lo and hi never decrease along r). The channel pools the sender's cache over that range.

    receiver  ▁it | ' | s | ▁a       (Gemma-3 splits "'s")
    sender    Ġit | 's    | Ġa       (SmolLM2)
    ranges    [0,1) [1,2) [1,2) [2,3)

`skip` sender positions (the attention sink, position 0) take part in no range; a receiver token whose
characters only they cover gets an empty range and is left out of the transferred block.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ...errors import DataError


def char_spans(tokenizer, text: str, add_special_tokens: bool = True) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids of `text` and each token's character span (start, end); (0, 0) for special tokens.
    Needs a fast tokenizer (offset mapping), which transformers builds also from GGUF files."""
    if not getattr(tokenizer, "is_fast", False):
        raise DataError(f"token alignment needs a fast tokenizer (character offsets); "
                        f"{type(tokenizer).__name__} is not one")
    encoded = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    ids = list(encoded["input_ids"])
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    spans = [(0, 0) if token in special and a == b else (int(a), int(b))
             for token, (a, b) in zip(ids, encoded["offset_mapping"])]
    return ids, spans


@dataclass
class Alignment:
    """Receiver token r reads the sender positions in [lo[r], hi[r]) that are in `used` (not skipped, non-empty
    span); lo == hi: none, and r is left out of the transferred block."""
    lo: list[int]
    hi: list[int]
    used: list[bool]            # per sender position

    @property
    def kept(self) -> list[int]:
        """Receiver positions that read at least one sender position."""
        return [r for r, (a, b) in enumerate(zip(self.lo, self.hi)) if b > a]

    def pooling(self) -> torch.Tensor:
        """(R', S) averaging weights over the kept receiver positions: row r is uniform over its sender positions."""
        used = torch.tensor(self.used, dtype=torch.float32)
        weights = torch.zeros(len(self.kept), len(self.used))
        for out, r in enumerate(self.kept):
            weights[out, self.lo[r]:self.hi[r]] = used[self.lo[r]:self.hi[r]]
        return weights / weights.sum(1, keepdim=True)


def align(receiver_spans: list[tuple[int, int]], sender_spans: list[tuple[int, int]],
          skip: frozenset[int] | set[int] = frozenset()) -> Alignment:
    """For each receiver span, the range of sender tokens (not in `skip`, non-empty spans) overlapping it."""
    for name, spans in (("receiver", receiver_spans), ("sender", sender_spans)):
        starts, ends = [a for a, b in spans if b > a], [b for a, b in spans if b > a]
        if any(b < a for a, b in spans) or starts != sorted(starts) or ends != sorted(ends):
            raise DataError(f"{name} character spans are not monotone: {spans[:12]}")
    used = [b > a and s not in skip for s, (a, b) in enumerate(sender_spans)]
    index = np.flatnonzero(used)                                               # sender positions in use
    starts = np.array([sender_spans[s][0] for s in index], dtype=np.int64)
    ends = np.array([sender_spans[s][1] for s in index], dtype=np.int64)
    lo, hi = [], []
    for a, b in receiver_spans:
        first = int(np.searchsorted(ends, a, side="right"))                    # first used token ending after a
        last = int(np.searchsorted(starts, b, side="left")) if b > a else first  # used tokens starting before b
        if last > first:
            lo.append(int(index[first]))
            hi.append(int(index[last - 1]) + 1)
        else:
            at = int(index[first]) if first < len(index) else len(sender_spans)
            lo.append(at)
            hi.append(at)
    return Alignment(lo, hi, used)


def decoded_spans(tokenizer, ids: list[int], skip_special_tokens: bool = False) -> tuple[str, list[tuple[int, int]]]:
    """The text `ids` decode to and each id's character span in it (ids given, not re-tokenized: e.g. a window
    of a pool that reads token ids). Spans come from the decoded length of each growing prefix; a byte-level
    token that ends inside a multi-byte character gets an empty span and the character goes to the next;
    with skip_special_tokens, special ids decode to nothing and get empty spans."""
    decode = lambda part: tokenizer.decode(part, skip_special_tokens=skip_special_tokens,  # noqa: E731
                                           clean_up_tokenization_spaces=False)
    text = decode(ids)
    spans, end = [], 0
    for k in range(1, len(ids) + 1):
        part = decode(ids[:k]) if k < len(ids) else text
        unfinished = k < len(ids) and part.endswith("\ufffd")
        upto = end if unfinished else min(max(len(part), end), len(text))
        spans.append((end, upto))
        end = upto
    return text, spans


def stretch(spans: list[tuple[int, int]], length: int) -> list[tuple[int, int]]:
    """Spans of one text rescaled onto a text of `length` characters (monotone, covering it): another example's
    tokens laid over this example's characters (the shuffled control across tokenizers)."""
    total = max((b for _, b in spans), default=0)
    if total == 0:
        return [(0, 0)] * len(spans)
    scale = lambda c: round(c * length / total)  # noqa: E731
    return [(scale(a), scale(b)) for a, b in spans]
