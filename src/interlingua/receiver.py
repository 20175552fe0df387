"""A frozen receiver that reads soft tokens (or text) and scores label verbalizers.

Inputs are built as embeddings, left-padded, with explicit position ids, so the same
code serves soft tokens (fixed length) and text prompts (ragged). Soft-token layout:
    [tokenizer prefix, e.g. <bos>] [instruction before {soft_tokens}] [M soft tokens] [rest of instruction]
The receiver never sees the input text on the soft-token path. The part before the soft tokens
is the same for every example: its KV cache is computed once (`PrefixCache`) and every batch
continues from it, so training and evaluation never recompute it.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .fused_head import head_nll

SOFT = "{soft_tokens}"


def cache_kwarg(decoder) -> str:
    """Name of the KV-cache argument: `cache` from transformers 5.x (the rename), else `past_key_values`."""
    return "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"


@dataclass
class PrefixCache:
    """Keys and values (1, H_kv, P, D) per layer of a fixed prompt prefix, computed once without grad."""
    layers: list[tuple[torch.Tensor, torch.Tensor]]
    length: int  # P

    def for_batch(self, batch: int, config):
        """A fresh DynamicCache holding the prefix for `batch` rows (views, no copy)."""
        from transformers import DynamicCache

        cache = DynamicCache(config=config)
        for index, (keys, values) in enumerate(self.layers):
            cache.update(keys.expand(batch, -1, -1, -1), values.expand(batch, -1, -1, -1), index)
        return cache


class Prompt(NamedTuple):
    """What the receiver reads: input embeds (B, T, d), mask (B, T), and an optional cached prefix
    that comes before them (the same for every row)."""
    embeds: torch.Tensor
    mask: torch.Tensor
    prefix: PrefixCache | None = None


def embedding_rms(model, sample: int = 4096, seed: int = 0) -> float:
    """RMS of the receiver's input embeddings as the model itself produces them (Gemma scales by sqrt(d))."""
    embed = model.get_input_embeddings()
    vocab = embed.weight.shape[0]
    ids = torch.randperm(vocab, generator=torch.Generator().manual_seed(seed))[:sample]
    with torch.no_grad():
        vectors = embed(ids.to(embed.weight.device)).float()
    return vectors.pow(2).mean(-1).sqrt().mean().item()


class Receiver:
    def __init__(self, model, tokenizer, verbalizers: list[str]):
        self.model, self.tokenizer = model, tokenizer
        self.embed = model.get_input_embeddings()
        self.decoder, self.head = model.get_decoder(), model.get_output_embeddings()
        self.softcap = getattr(model.config, "final_logit_softcapping", None)
        self.device = self.embed.weight.device
        self.prefix_ids = tokenizer("", add_special_tokens=True)["input_ids"]  # e.g. [<bos>] or []
        self.verbalizer_ids = [tokenizer(v, add_special_tokens=False)["input_ids"] for v in verbalizers]
        firsts = [ids[0] for ids in self.verbalizer_ids]
        # One forward pass scores all classes when their first tokens differ.
        self.first_token_scoring = len(set(firsts)) == len(firsts)
        self._cache_kwarg = cache_kwarg(self.decoder)
        self._prefixes: dict[tuple[int, ...], PrefixCache] = {}
        # On CPU the big fp32 head is memory-bound: one fused pass for loss and gradient (fused_head.py).
        weight = self.head.weight
        self._fused_head = (weight.device.type == "cpu" and weight.dtype == torch.float32
                            and self.head.bias is None and not weight.requires_grad)

    def ids_embeds(self, ids: list[int]) -> torch.Tensor:
        return self.embed(torch.tensor(ids, dtype=torch.long, device=self.device))  # (T, d)

    def prefix_cache(self, ids: list[int]) -> PrefixCache | None:
        """The KV cache of a fixed token prefix, computed on first use and kept."""
        if not ids:
            return None
        key = tuple(ids)
        if key not in self._prefixes:
            with torch.no_grad():
                out = self.decoder(inputs_embeds=self.ids_embeds(ids).unsqueeze(0), use_cache=True)
            cache = getattr(out, "cache", None) or out.past_key_values
            layers = [(layer.keys.detach(), layer.values.detach()) for layer in cache.layers]
            self._prefixes[key] = PrefixCache(layers, len(ids))
        return self._prefixes[key]

    def soft_prompt(self, soft: torch.Tensor, instruction: str):
        """Soft tokens (B, M, d) inside the instruction: embeds (B, M + A, d) of the soft tokens and the
        text after them, mask (B, M + A), and the cached prefix (everything before the soft tokens)."""
        before, _, after = instruction.partition(SOFT) if SOFT in instruction else ("", "", instruction)
        prefix = self.prefix_cache(self.prefix_ids + self.tokenizer(before, add_special_tokens=False)["input_ids"])
        tail = self.ids_embeds(self.tokenizer(after, add_special_tokens=False)["input_ids"])
        batch = soft.shape[0]
        embeds = torch.cat([soft.to(tail.dtype), tail.expand(batch, -1, -1)], dim=1)    # (B, M + A, d)
        return Prompt(embeds, torch.ones(embeds.shape[:2], dtype=torch.long, device=self.device), prefix)

    def text_prompt(self, texts: list[str]) -> Prompt:
        """Left-padded embeds (B, P, d) and mask (B, P) for plain text prompts."""
        ids = [self.tokenizer(t, add_special_tokens=True)["input_ids"] for t in texts]
        return Prompt(*self._left_pad([self.ids_embeds(row) for row in ids]))

    def _left_pad(self, rows: list[torch.Tensor]):
        longest = max(len(r) for r in rows)
        embeds = rows[0].new_zeros(len(rows), longest, rows[0].shape[-1])
        mask = torch.zeros(len(rows), longest, dtype=torch.long, device=self.device)
        for i, row in enumerate(rows):
            embeds[i, longest - len(row):] = row
            mask[i, longest - len(row):] = 1
        return embeds, mask

    def _last_hidden(self, prompt: Prompt, keep: int) -> torch.Tensor:
        """Final hidden states (B*keep, d) of the last `keep` positions, as one contiguous 2-D block.

        The trunk and the output head are called separately: transformers' `logits_to_keep` slice
        makes the head a batched matmul against a copy of the (262k x 640 for Gemma-3) head per
        example, about 50x slower on CPU, backward included.
        """
        embeds, mask, prefix = prompt
        if prefix is None:
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            hidden = self.decoder(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                                  use_cache=False).last_hidden_state                 # (B, T, d)
        else:
            batch = embeds.shape[0]
            full_mask = torch.cat([mask.new_ones(batch, prefix.length), mask], dim=1)  # (B, P + T)
            positions = (full_mask.cumsum(-1) - 1)[:, prefix.length:]
            cache = {self._cache_kwarg: prefix.for_batch(batch, self.model.config)}
            hidden = self.decoder(inputs_embeds=embeds, attention_mask=full_mask, position_ids=positions,
                                  use_cache=True, **cache).last_hidden_state        # (B, T, d)
        return hidden[:, -keep:].reshape(-1, hidden.shape[-1])                       # (B*keep, d)

    def _head(self, hidden, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Output logits for all vocabulary rows, or only `rows` (cheap candidate scoring)."""
        weight = self.head.weight if rows is None else self.head.weight[rows]
        bias = self.head.bias if rows is None or self.head.bias is None else self.head.bias[rows]
        logits = torch.nn.functional.linear(hidden, weight, bias).float()
        if self.softcap:  # Gemma-2-style final logit soft-capping
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def _logits(self, prompt: Prompt, keep: int):
        """Logits (B, keep, V) of the last `keep` positions."""
        return self._head(self._last_hidden(prompt, keep)).view(prompt.embeds.shape[0], keep, -1)

    def _with_targets(self, prompt: Prompt, targets: list[list[int]]):
        """Append all but the last token of right-padded targets (the last one predicts nothing);
        returns the longer prompt, target ids (B, L) and valid (B, L)."""
        embeds, mask, prefix = prompt
        longest = max(len(t) for t in targets)
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.tensor([t + [pad] * (longest - len(t)) for t in targets], device=self.device)
        valid = torch.tensor([[1] * len(t) + [0] * (longest - len(t)) for t in targets], device=self.device)
        fed = ids[:, :-1]                                                      # (B, L-1)
        longer = Prompt(torch.cat([embeds, self.embed(fed).to(embeds.dtype)], 1),
                        torch.cat([mask, valid[:, :-1]], 1), prefix)
        return longer, ids, valid

    def target_logprobs(self, prompt: Prompt, targets: list[list[int]]):
        """Per-token log-probs (B, L) of target continuations and their validity mask (B, L)."""
        longer, ids, valid = self._with_targets(prompt, targets)
        hidden = self._last_hidden(longer, keep=ids.shape[1])  # position t predicts token t+1  (B*L, d)
        if self._fused_head:
            logprobs = -head_nll(hidden, self.head.weight, ids.reshape(-1), self.softcap)          # (B*L,)
        else:
            logprobs = self._head(hidden).log_softmax(-1).gather(-1, ids.reshape(-1, 1)).squeeze(-1)
        return logprobs.view(ids.shape), valid

    def label_loss(self, prompt: Prompt, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy over the gold verbalizer's tokens (mean over tokens)."""
        logprobs, valid = self.target_logprobs(prompt, [self.verbalizer_ids[int(y)] for y in labels])
        return -(logprobs * valid).sum() / valid.sum()

    def class_scores(self, prompt: Prompt) -> torch.Tensor:
        """(B, C) scores, highest = predicted: first-token logits when the verbalizers' first tokens are
        distinct, else summed sequence log-probs."""
        if self.first_token_scoring:
            # Only the candidates' rows of the head: the argmax over classes is the same as over
            # their log-probabilities (one shared normaliser), at a fraction of a 262k-way head.
            firsts = torch.tensor([ids[0] for ids in self.verbalizer_ids], device=self.device)
            return self._head(self._last_hidden(prompt, keep=1), firsts)
        scores = []
        for ids in self.verbalizer_ids:
            logprobs, valid = self.target_logprobs(prompt, [ids] * prompt.embeds.shape[0])
            scores.append((logprobs * valid).sum(-1))
        return torch.stack(scores, dim=-1)


def diversity_penalty(soft: torch.Tensor) -> torch.Tensor:
    """Mean off-diagonal cosine similarity between examples' soft tokens: penalises collapse to one prompt."""
    flat = F.normalize(soft.flatten(1).float(), dim=-1)  # (B, M*d)
    batch = flat.shape[0]
    if batch < 2:
        return soft.new_zeros(())
    similarity = flat @ flat.T                               # (B, B)
    return (similarity.sum() - similarity.diagonal().sum()) / (batch * (batch - 1))
