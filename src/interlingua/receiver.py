"""A frozen receiver that reads soft tokens (or text) and scores label verbalizers.

Inputs are built as embeddings, left-padded, with explicit position ids, so the same
code serves soft tokens (fixed length) and text prompts (ragged). Soft-token layout:
    [tokenizer prefix, e.g. <bos>] [instruction before {soft_tokens}] [M soft tokens] [rest of instruction]
The receiver never sees the input text on the soft-token path. The part before the soft tokens
is the same for every example: its KV cache is computed once (`PrefixCache`) and every batch
continues from it, so training and evaluation never recompute it.

A prefix can also be a `KVBlock` (the KV channel): per-example, ragged, differentiable keys and values
with their own mask and positions; each row's continuation starts after its own last prefix position.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .channels.kv.cache import KVBlock
from .errors import DataError
from .fused_head import head_nll
from .runtime import cache_kwarg, returned_cache

SOFT = "{soft_tokens}"
# Cached positions (rows x sequence length) per chunk when verbalizers continue one prompt cache: bounds the
# expanded KV cache (about 300 MB for Gemma-3 270M in fp32).
SCORE_CHUNK_POSITIONS = 8192
HEAD_CHUNK_ROWS = 64  # rows of full-vocabulary logits at a time on the unfused head (262k columns for Gemma-3)


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
    that comes before them: one PrefixCache shared by every row, or a KVBlock with one cache per row
    (then the embeds must be right-padded, so each row's continuation follows its prefix directly)."""
    embeds: torch.Tensor
    mask: torch.Tensor
    prefix: PrefixCache | KVBlock | None = None


@dataclass
class VerbalizerTrie:
    """The verbalizers as a prefix tree, for scoring every class from one prompt cache.

    Scoring is decoding constrained to the label strings: at the root and at every prefix where
    verbalizers part ways, the next token is normalised over the tokens that continue some
    verbalizer there. A token that is the only way on carries no information and is not fed.
    Where a complete verbalizer is also the prefix of a longer one (" top up" / " top up limits"),
    the longer one's next token is normalised over the whole vocabulary so it still pays for its
    extra words. When the first tokens are distinct this is the same argmax as first-token scoring.
    """
    firsts: list[int]                   # (C,) each class's first token
    roots: list[int]                    # (R,) the distinct first tokens, normalised over each other
    paths: list[list[int]]              # token sequences fed after the prompt to reach every scored node
    path_nodes: list[list[int]]         # the node at each position of each path
    candidates: list[list[int] | None]  # (N,) each node's next tokens (None: the whole vocabulary)
    step_nodes: list[int]               # (S,) step s adds log p(step_targets[s] | step_nodes[s])
    step_targets: list[int]             #      to class step_classes[s]
    step_classes: list[int]

    @property
    def count(self) -> int:
        return len(self.candidates)


def verbalizer_trie(verbalizer_ids: list[list[int]]) -> VerbalizerTrie:
    """The prefix tree of the verbalizers' token ids (C lists)."""
    following: dict[tuple[int, ...], list[int]] = {}
    for ids in verbalizer_ids:
        for j, token in enumerate(ids):
            after = following.setdefault(tuple(ids[:j]), [])
            if token not in after:
                after.append(token)
    complete = {tuple(ids) for ids in verbalizer_ids}
    scored = {prefix for prefix, after in following.items() if prefix and (len(after) > 1 or prefix in complete)}
    # Feed the longest scored prefixes: their positions give every scored node on the way.
    paths = [list(p) for p in sorted(scored) if not any(q[:len(p)] == p and q != p for q in scored)]
    nodes: dict[tuple[int, ...], int] = {}
    path_nodes = [[nodes.setdefault(tuple(path[:j + 1]), len(nodes)) for j in range(len(path))] for path in paths]
    candidates = [None] * len(nodes)
    for prefix, n in nodes.items():
        candidates[n] = None if prefix in complete else list(following.get(prefix, []))
    steps = [(nodes[tuple(ids[:j])], ids[j], c) for c, ids in enumerate(verbalizer_ids)
             for j in range(1, len(ids)) if tuple(ids[:j]) in scored]
    step_nodes, step_targets, step_classes = (list(column) for column in zip(*steps)) if steps else ([], [], [])
    return VerbalizerTrie([ids[0] for ids in verbalizer_ids], following[()], paths, path_nodes, candidates,
                          step_nodes, step_targets, step_classes)


def length_chunks(lengths: list[int], cost) -> list[list[int]]:
    """Indices grouped by equal length (so nothing is padded), each group split so that
    len(chunk) * cost(length) stays within SCORE_CHUNK_POSITIONS (at least one per chunk)."""
    chunks: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        last = chunks[-1] if chunks else []
        if last and lengths[last[0]] == lengths[i] and (len(last) + 1) * cost(lengths[i]) <= SCORE_CHUNK_POSITIONS:
            last.append(i)
        else:
            chunks.append([i])
    return chunks


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
        self.trie = verbalizer_trie(self.verbalizer_ids) if verbalizers else None  # else: constrained decoding from one prompt pass
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
            layers = [(layer.keys.detach(), layer.values.detach()) for layer in returned_cache(out).layers]
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

    def _forward(self, prompt: Prompt, use_cache: bool = False):
        """The trunk over a prompt, after its cached prefix if any: the decoder output (last_hidden_state
        (B, T, d), and the cache if kept) and the attention mask over prefix and prompt (B, P + T)."""
        embeds, mask, prefix = prompt
        if isinstance(prefix, KVBlock):
            return self._forward_after_block(prompt)
        if prefix is None:
            full_mask, cache = mask, {}
        else:
            batch = embeds.shape[0]
            full_mask = torch.cat([mask.new_ones(batch, prefix.length), mask], dim=1)  # (B, P + T)
            cache = {self._cache_kwarg: prefix.for_batch(batch, self.model.config)}
        # Left padding: each row counts its positions from its first real token.
        positions = (full_mask.cumsum(-1) - 1).clamp(min=0)[:, -mask.shape[1]:]
        out = self.decoder(inputs_embeds=embeds, attention_mask=full_mask, position_ids=positions,
                           use_cache=use_cache or prefix is not None, **cache)
        return out, full_mask

    def _forward_after_block(self, prompt: Prompt):
        """`_forward` after a per-row KVBlock prefix (B, P): the prompt (right-padded) continues each row
        from its own next position; the block's config-less cache keeps every position, and the
        sliding-window mask (built from entry indices) sees prefix and prompt as one contiguous row."""
        embeds, mask, block = prompt
        if block.batch != embeds.shape[0]:
            raise DataError(f"KVBlock prefix has {block.batch} rows, the prompt {embeds.shape[0]}")
        if mask.shape[1] > 1 and bool((mask[:, 1:] > mask[:, :-1]).any()):
            raise DataError("a prompt after a KVBlock prefix must be right-padded (no real token after padding)")
        cache, prefix_mask = block.to_cache()
        full_mask = torch.cat([prefix_mask.to(mask.dtype), mask], dim=1)                    # (B, P + T)
        positions = block.next_positions()[:, None] + torch.arange(mask.shape[1], device=mask.device)  # (B, T)
        out = self.decoder(inputs_embeds=embeds, attention_mask=full_mask, position_ids=positions,
                           use_cache=True, **{self._cache_kwarg: cache})
        return out, full_mask

    @torch.no_grad()
    def attention_to_prefix(self, prompt: Prompt) -> torch.Tensor:
        """(B, P) attention mass each KVBlock prefix entry receives from the prompt's real tokens, summed over
        layers, heads and those tokens (eager attention for this pass: the fused kernels return no weights)."""
        embeds, mask, block = prompt
        if not isinstance(block, KVBlock):
            raise DataError("attention_to_prefix needs a prompt after a KVBlock prefix")
        previous = self.model.config._attn_implementation
        self.model.set_attn_implementation("eager")
        try:
            cache, prefix_mask = block.to_cache()
            full_mask = torch.cat([prefix_mask.to(mask.dtype), mask], dim=1)                # (B, P + T)
            positions = block.next_positions()[:, None] + torch.arange(mask.shape[1], device=mask.device)
            out = self.decoder(inputs_embeds=embeds, attention_mask=full_mask, position_ids=positions,
                               use_cache=True, output_attentions=True, **{self._cache_kwarg: cache})
        finally:
            self.model.set_attn_implementation(previous)
        queries = mask[:, None, :, None].to(embeds.dtype)                                  # (B, 1, T, 1)
        mass = sum((layer[..., :block.length].float() * queries).sum((1, 2)) for layer in out.attentions)
        return mass * block.mask                                                           # (B, P)

    def suffix_nll(self, prefix: KVBlock, suffix_ids: list[list[int]]) -> torch.Tensor:
        """Mean NLL (B,) of each row's suffix tokens after its prefix cache, differentiable w.r.t. the
        prefix's keys and values. The first suffix token is read, not scored: a cache holds no hidden
        state to predict it from. So every suffix needs at least 2 tokens; rows are scored on L_b - 1."""
        if prefix.batch == 1 and len(suffix_ids) > 1:
            prefix = prefix.expand(len(suffix_ids))
        if len(suffix_ids) != prefix.batch:
            raise DataError(f"suffix_nll: {len(suffix_ids)} suffixes for a prefix of {prefix.batch} rows")
        if any(len(ids) < 2 for ids in suffix_ids):
            raise DataError(f"suffix_nll: every suffix needs >= 2 tokens, got lengths {[len(i) for i in suffix_ids]}")
        first = self.embed(torch.tensor([ids[0] for ids in suffix_ids], device=self.device))[:, None]  # (B, 1, d)
        prompt = Prompt(first, torch.ones(first.shape[:2], dtype=torch.long, device=self.device), prefix)
        logprobs, valid = self.target_logprobs(prompt, [ids[1:] for ids in suffix_ids])     # (B, L-1)
        return -(logprobs * valid).sum(1) / valid.sum(1)

    def _last_hidden(self, prompt: Prompt, keep: int) -> torch.Tensor:
        """Final hidden states (B*keep, d) of the last `keep` positions, as one contiguous 2-D block.

        The trunk and the output head are called separately: transformers' `logits_to_keep` slice
        makes the head a batched matmul against a copy of the (262k x 640 for Gemma-3) head per
        example, about 50x slower on CPU, backward included.
        """
        hidden = self._forward(prompt)[0].last_hidden_state                          # (B, T, d)
        if keep == 1 and isinstance(prompt.prefix, KVBlock) and not bool(prompt.mask.bool().all()):
            # After a KVBlock the prompt is right-padded: each row's last real token, one per row. (keep > 1 is
            # target_logprobs' path: a prompt of one length, then right-padded targets, scored where valid;
            # a ragged prompt with targets goes through _ragged_target_hidden instead.)
            last = prompt.mask.sum(1) - 1                                             # (B,)
            return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # (B, d)
        return hidden[:, -keep:].reshape(-1, hidden.shape[-1])                       # (B*keep, d)

    def _head(self, hidden, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Output logits for all vocabulary rows, or only `rows` (cheap candidate scoring)."""
        weight = self.head.weight if rows is None else self.head.weight[rows]
        bias = self.head.bias if rows is None or self.head.bias is None else self.head.bias[rows]
        return self._cap(torch.nn.functional.linear(hidden, weight, bias).float())

    def _cap(self, logits: torch.Tensor) -> torch.Tensor:
        """Gemma-2-style final logit soft-capping, when the model has it."""
        return torch.tanh(logits / self.softcap) * self.softcap if self.softcap else logits

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

    def _ragged_target_hidden(self, prompt: Prompt, targets: list[list[int]]):
        """`_with_targets` + `_last_hidden` for prompts of different lengths after a KVBlock (right-padded):
        each row's targets follow its own last token; returns hidden (B*L, d), ids (B, L), valid (B, L)."""
        embeds, mask, block = prompt
        lengths = mask.sum(1).tolist()
        longest = max(len(t) for t in targets)
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.tensor([t + [pad] * (longest - len(t)) for t in targets], device=self.device)
        valid = torch.tensor([[1] * len(t) + [0] * (longest - len(t)) for t in targets], device=self.device)
        fed = self.embed(ids[:, :-1]).to(embeds.dtype)                                     # (B, L-1, d)
        rows = [torch.cat([embeds[b, :n], fed[b]]) for b, n in enumerate(lengths)]          # (n_b + L - 1, d)
        width = max(len(r) for r in rows)
        joined = embeds.new_zeros(len(rows), width, embeds.shape[-1])
        joined_mask = mask.new_zeros(len(rows), width)
        for b, row in enumerate(rows):
            joined[b, :len(row)] = row
            joined_mask[b, :len(row)] = 1
        hidden = self._forward(Prompt(joined, joined_mask, block))[0].last_hidden_state     # (B, W, d)
        index = torch.tensor(lengths, device=self.device)[:, None] - 1 + torch.arange(longest, device=self.device)
        picked = hidden.gather(1, index[..., None].expand(-1, -1, hidden.shape[-1]))        # (B, L, d)
        return picked.reshape(-1, hidden.shape[-1]), ids, valid

    def target_logprobs(self, prompt: Prompt, targets: list[list[int]]):
        """Per-token log-probs (B, L) of target continuations and their validity mask (B, L)."""
        if isinstance(prompt.prefix, KVBlock) and not bool(prompt.mask.bool().all()):
            hidden, ids, valid = self._ragged_target_hidden(prompt, targets)
        else:
            longer, ids, valid = self._with_targets(prompt, targets)
            hidden = self._last_hidden(longer, keep=ids.shape[1])  # position t predicts token t+1  (B*L, d)
        if self._fused_head:
            logprobs = -head_nll(hidden, self.head.weight, ids.reshape(-1), self.softcap)          # (B*L,)
        else:
            logprobs = self._head(hidden).log_softmax(-1).gather(-1, ids.reshape(-1, 1)).squeeze(-1)
        return logprobs.view(ids.shape), valid

    def label_loss(self, prompt: Prompt, labels: torch.Tensor, weights: torch.Tensor | None = None,
                   over: str = "labels") -> torch.Tensor:
        """Cross-entropy of the gold label. weights (B,): row b counts as weights[b] identical rows (prompt
        tuning: one row per distinct label stands for the batch).

        over="labels": the softmax runs over the C verbalizers' first-token logits, exactly the scores
        evaluation ranks (`class_scores`), so training optimises what is scored. Under the vocabulary
        softmax a fresh soft prompt first has to make the label words likely at all (SST-2 starts at ~4
        nats for 2 classes), and the quickest way there is one prompt for every example: the bridge
        collapses before it reads its input. Labels that share first tokens (Banking77) have no such
        C-way softmax without constrained decoding, which does not run under autograd here: they use
        the vocabulary loss.
        over="vocabulary": the gold verbalizer's tokens under the full-vocabulary softmax (mean over tokens).
        """
        if over not in ("labels", "vocabulary"):
            raise ValueError(f"label_loss over {over!r}: 'labels' or 'vocabulary'")
        if over == "labels" and self.first_token_scoring:
            firsts = torch.tensor([ids[0] for ids in self.verbalizer_ids], device=self.device)
            scores = self._head(self._last_hidden(prompt, keep=1), firsts)                # (B, C)
            nll = torch.nn.functional.cross_entropy(scores, labels.to(self.device), reduction="none")  # (B,)
            weight = torch.ones_like(nll) if weights is None else weights.to(nll)
            return (nll * weight).sum() / weight.sum()
        logprobs, valid = self.target_logprobs(prompt, [self.verbalizer_ids[int(y)] for y in labels])
        if weights is not None:
            valid = valid * weights.to(valid.device, valid.dtype)[:, None]
        return -(logprobs * valid).sum() / valid.sum()

    def class_scores(self, prompt: Prompt) -> torch.Tensor:
        """(B, C) scores, highest = predicted: first-token logits when the verbalizers' first tokens are
        distinct, else log-probs under decoding constrained to the label strings (`VerbalizerTrie`)."""
        if self.first_token_scoring:
            # Only the candidates' rows of the head: the argmax over classes is the same as over
            # their log-probabilities (one shared normaliser), at a fraction of a 262k-way head.
            firsts = torch.tensor([ids[0] for ids in self.verbalizer_ids], device=self.device)
            return self._head(self._last_hidden(prompt, keep=1), firsts)
        return self._sequence_scores(prompt)

    def _sequence_scores(self, prompt: Prompt) -> torch.Tensor:
        """(B, C) log-probs of every verbalizer under decoding constrained to the label strings
        (`VerbalizerTrie`), inference only: the prompt runs once and the scored prefixes continue
        from its KV cache."""
        trie = self.trie
        if isinstance(prompt.prefix, KVBlock) and not bool(prompt.mask.bool().all()):
            # Prompts of different lengths after a per-row cache: each label sequence's log-prob (unconstrained),
            # one pass per label.
            batch = prompt.embeds.shape[0]
            return torch.stack([self.target_logprobs(prompt, [ids] * batch)[0].sum(1) for ids in self.verbalizer_ids], 1)
        out, mask = self._forward(prompt, use_cache=True)
        last = out.last_hidden_state[:, -1]                                           # (B, d)
        roots = self._head(last, torch.tensor(trie.roots, device=self.device)).log_softmax(-1)  # (B, R)
        scores = roots[:, torch.tensor([trie.roots.index(t) for t in trie.firsts], device=self.device)]  # (B, C)
        if trie.step_nodes:
            nodes = self._node_hidden(returned_cache(out), mask, trie)                # (B, N, d)
            classes = torch.tensor(trie.step_classes, device=self.device)
            scores.index_add_(1, classes, self._step_logprobs(nodes, trie))           # (B, S) summed per class
        return scores

    def _node_hidden(self, cache, mask: torch.Tensor, trie: VerbalizerTrie) -> torch.Tensor:
        """Final hidden state (B, N, d) at every trie node after every prompt row (mask (B, P + T)), with the
        trie's paths fed from the prompt's cache in chunks of equal length and bounded cache size."""
        batch, width = mask.shape
        nodes = None
        lengths = [len(path) for path in trie.paths]
        for chunk in length_chunks(lengths, cost=lambda length: batch * (width + length)):
            hidden = self._continue(cache, mask, torch.tensor([trie.paths[i] for i in chunk], device=self.device))
            if nodes is None:
                nodes = hidden.new_zeros(batch, trie.count, hidden.shape[-1])
            nodes[:, torch.tensor([trie.path_nodes[i] for i in chunk], device=self.device)] = hidden
        return nodes

    def _continue(self, cache, mask: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Final hidden states (B, K, L, d) of K token sequences ids (K, L) fed after every prompt row, from
        the prompt's cache (left untouched) and mask (B, P + T). Row b*K + k continues prompt b."""
        (batch, width), (count, length) = mask.shape, ids.shape
        embeds = self.embed(ids).repeat(batch, 1, 1)                                 # (B*K, L, d)
        full_mask = torch.cat([mask.repeat_interleave(count, 0), mask.new_ones(batch * count, length)], 1)
        positions = (full_mask.cumsum(-1) - 1)[:, width:]                            # continue each prompt row
        rows = copy.deepcopy(cache)  # every chunk continues the same prompt cache: expand a copy
        rows.batch_select_indices(torch.arange(batch, device=self.device).repeat_interleave(count))
        hidden = self.decoder(inputs_embeds=embeds, attention_mask=full_mask, position_ids=positions,
                              use_cache=True, **{self._cache_kwarg: rows}).last_hidden_state  # (B*K, L, d)
        return hidden.view(batch, count, length, -1)

    def _step_logprobs(self, nodes: torch.Tensor, trie: VerbalizerTrie) -> torch.Tensor:
        """(B, S) log p(target | node) of every step: one normaliser per node over its candidates (the
        whole vocabulary where it is None), shared by the steps that leave it."""
        batch, count, width = nodes.shape
        normalisers = nodes.new_zeros(batch, count, dtype=torch.float32)                   # (B, N)
        full = [n for n, tokens in enumerate(trie.candidates) if tokens is None]
        if full:
            normalisers[:, full] = self._log_normalisers(nodes[:, full].reshape(-1, width)).view(batch, -1)
        for n, tokens in enumerate(trie.candidates):
            if tokens is not None:
                normalisers[:, n] = self._head(nodes[:, n], torch.tensor(tokens, device=self.device)).logsumexp(-1)
        step_nodes = torch.tensor(trie.step_nodes, device=self.device)
        logits = self._target_logits(nodes[:, step_nodes], torch.tensor(trie.step_targets, device=self.device))
        return logits - normalisers[:, step_nodes]

    def _target_logits(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The head's (soft-capped) logit of one target per hidden state: (..., d), (...) -> (...)."""
        logits = (hidden.float() * self.head.weight[targets].float()).sum(-1)
        if self.head.bias is not None:
            logits = logits + self.head.bias[targets].float()
        return self._cap(logits)

    def _log_normalisers(self, hidden: torch.Tensor) -> torch.Tensor:
        """logsumexp of the full-vocabulary logits (N,), without holding (N, V) logits at once."""
        if self._fused_head:  # the fused NLL of any token is logsumexp minus that token's logit
            zeros = torch.zeros(hidden.shape[0], dtype=torch.long, device=self.device)
            return head_nll(hidden, self.head.weight, zeros, self.softcap) + self._target_logits(hidden, zeros)
        return torch.cat([self._head(rows).logsumexp(-1) for rows in hidden.split(HEAD_CHUNK_ROWS)])


def diversity_penalty(soft: torch.Tensor) -> torch.Tensor:
    """Mean off-diagonal cosine similarity between examples' soft tokens: penalises collapse to one prompt."""
    flat = F.normalize(soft.flatten(1).float(), dim=-1)  # (B, M*d)
    batch = flat.shape[0]
    if batch < 2:
        return soft.new_zeros(())
    similarity = flat @ flat.T                               # (B, B)
    return (similarity.sum() - similarity.diagonal().sum()) / (batch * (batch - 1))
