"""Study 2's shared space as a study-3 baseline, where a direction's two models share a tokenizer.

    sender cache (store) -> aligned positions (one tokenizer: position i is position i) -> T[sender->S]
    -> T[S->receiver] -> the receiver's cache, scored like a trained transformation (evaluate.evaluate_task:
    both modes and the shuffled control; the zeroed cache and no communication are the direction's own runs')

The adapters are study 2's (kv_alignment run `dense_kv.shared_space.<direction>`): trained for suffix
language modelling on its corpus, never on these tasks. Positions are handled as for the dense
transformation: keys un-rotated with the sender's rotary, re-rotated with the receiver's, its own sink first.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from ...channels.kv.translators import KV
from ...errors import DataError
from ...evaluate import parameters_row, write_rows
from ...receiver import Receiver
from ..kv_alignment.run import load_translator
from .data import MODES, load_task
from .evaluate import evaluate_task
from .run import _models
from .train import Ends

VARIANT = "shared_space"


class ThroughSharedSpace(nn.Module):
    """A shared space's path src -> S -> tgt as a dense transformation: (keys, values) per layer (B, H_s, T, D_s),
    position-free, -> the target's (B, H_t, T, D_t)."""

    def __init__(self, space: nn.Module, src: str, tgt: str):
        super().__init__()
        members = getattr(space, "members", None)     # None: a translator serving any member (identity)
        missing = [name for name in (src, tgt) if members is not None and name not in members]
        if missing:
            raise DataError(f"the shared space has no member {missing} (members: {members})")
        self.space, self.src, self.tgt = space, src, tgt

    @property
    def weight(self) -> dict[str, Tensor]:
        """The parameters every position goes through: src's encoder, tgt's decoder. compute.transform_flops
        prices 2 x these per position: exact for linear adapters, low for cross-attention ones (their
        per-layer attention reuses weights: ~25% more at SmolLM2's sizes)."""
        return {**{f"encode.{n}": p for n, p in self.space.encoders[self.src].named_parameters()},
                **{f"decode.{n}": p for n, p in self.space.decoders[self.tgt].named_parameters()}}

    def forward(self, keys: list[Tensor], values: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        out = self.space.translate(self.src, self.tgt, KV(list(keys), list(values)))
        return list(out.keys), list(out.values)


def shared_space_job(translator_path, src: str, tgt: str, sender_dir, receiver_dir, task_name: str, task: dict, split,
                     sender_store, prompts: dict, out, *, base: dict, seed: int, modes=MODES,
                     device=torch.device("cpu"), batch_size: int = 16) -> Path:
    """Tidy rows (and predictions) of one task through the shared space, with the shuffled control."""
    sender, receiver_model, receiver_tokenizer = _models(sender_dir, receiver_dir, device)
    if sender[0].get_vocab() != receiver_tokenizer.get_vocab():
        raise DataError(f"{sender_dir} and {receiver_dir} have different tokenizers: the shared-space baseline maps "
                        f"position i to position i and needs one tokenizer (dense_kv.shared_space)")
    space = load_translator(translator_path, {})
    space.eval()
    transform = ThroughSharedSpace(space, src, tgt)
    data = load_task(task_name, task, split, sender_store, sender, receiver_tokenizer, prompts)
    receiver = Receiver(receiver_model, receiver_tokenizer, task["verbalizers"])
    ends = Ends(sender[1], receiver_model, receiver_tokenizer)
    rows = evaluate_task(transform, data, receiver, ends, base=base, seed=seed, modes=modes, batch_size=batch_size,
                         alone=False, zero=False)
    # the path's adapters (trained by study 2 on its corpus, not on the task)
    rows.append(parameters_row(dict(base, task=task_name, method=f"cache_{modes[0]}", seed=seed),
                               sum(p.numel() for p in transform.weight.values()), len(data.examples)))
    return write_rows(rows, out)
