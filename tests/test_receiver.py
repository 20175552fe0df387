import pytest
import torch

from interlingua import zoo
from interlingua.receiver import Prompt, Receiver, verbalizer_trie


def receiver_for(tiny_models, verbalizers):
    model = zoo.load_model(tiny_models["receiver"], torch.device("cpu"), torch.float32)
    return Receiver(model, zoo.load_tokenizer(tiny_models["receiver"]), verbalizers)


def test_left_padding_gives_the_same_scores_as_one_by_one(tiny_models):
    receiver = receiver_for(tiny_models, [" negative", " positive"])
    texts = ["Review: short\nSentiment:", "Review: a much longer review of the movie\nSentiment:"]
    with torch.no_grad():
        batched = receiver.class_scores(receiver.text_prompt(texts))
        single = torch.cat([receiver.class_scores(receiver.text_prompt([t])) for t in texts])
    torch.testing.assert_close(batched, single, atol=1e-4, rtol=1e-4)


def test_sequence_scoring_agrees_with_first_token_scoring_on_one_token_verbalizers(tiny_models):
    receiver = receiver_for(tiny_models, [" a", " b"])
    assert receiver.first_token_scoring
    prompt = receiver.text_prompt(["x y", "the story"])
    with torch.no_grad():
        first = receiver.class_scores(prompt)
        receiver.first_token_scoring = False
        full = receiver.class_scores(prompt)
    # first-token scores are logits: the same up to one normaliser per example, so the same ranking
    torch.testing.assert_close(first - first.logsumexp(-1, keepdim=True), full - full.logsumexp(-1, keepdim=True),
                               atol=1e-4, rtol=1e-4)
    assert torch.equal(first.argmax(-1), full.argmax(-1))


def test_soft_prompt_layout(tiny_models):
    receiver = receiver_for(tiny_models, [" negative", " positive"])
    soft = torch.randn(3, 4, receiver.embed.embedding_dim)
    embeds, mask, prefix = receiver.soft_prompt(soft, "Review:{soft_tokens}\nSentiment:")
    before = len(receiver.prefix_ids) + len(receiver.tokenizer("Review:", add_special_tokens=False)["input_ids"])
    assert prefix.length == before  # everything before the soft tokens is a cached prefix
    assert torch.equal(embeds[:, :4], soft)
    assert mask.shape == embeds.shape[:2] and mask.all()


def full_prompt(receiver, soft, instruction):
    """The same soft prompt with its prefix as plain embeddings, no cache."""
    before, _, after = instruction.partition("{soft_tokens}")
    head = receiver.ids_embeds(receiver.prefix_ids + receiver.tokenizer(before, add_special_tokens=False)["input_ids"])
    tail = receiver.ids_embeds(receiver.tokenizer(after, add_special_tokens=False)["input_ids"])
    embeds = torch.cat([head.expand(len(soft), -1, -1), soft, tail.expand(len(soft), -1, -1)], 1)
    return Prompt(embeds, torch.ones(embeds.shape[:2], dtype=torch.long))


@pytest.mark.parametrize("name", ["sender", "receiver"])
@pytest.mark.parametrize("verbalizers", [[" negative", " positive"], [" a b c", " a"]])
def test_cached_prefix_gives_the_same_loss_gradient_and_scores(tiny_models, name, verbalizers):
    model = zoo.load_model(tiny_models[name], torch.device("cpu"), torch.float32)
    receiver = Receiver(model, zoo.load_tokenizer(tiny_models[name]), verbalizers)
    instruction = "Review: the text is{soft_tokens}\nSentiment:"
    soft = torch.randn(3, 4, receiver.embed.embedding_dim, requires_grad=True)
    labels = torch.tensor([0, 1, 1])
    cached = receiver.soft_prompt(soft, instruction)
    assert cached.prefix is not None
    loss = receiver.label_loss(cached, labels)
    (grad,) = torch.autograd.grad(loss, soft)
    reference_loss = receiver.label_loss(full_prompt(receiver, soft, instruction), labels)
    (reference_grad,) = torch.autograd.grad(reference_loss, soft)
    torch.testing.assert_close(loss, reference_loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad, reference_grad, atol=1e-5, rtol=1e-4)
    with torch.no_grad():
        torch.testing.assert_close(receiver.class_scores(receiver.soft_prompt(soft, instruction)),
                                   receiver.class_scores(full_prompt(receiver, soft, instruction)),
                                   atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name, softcap", [("sender", None), ("receiver", None), ("receiver", 5.0)])
def test_logits_match_the_model_forward(tiny_models, name, softcap):
    model = zoo.load_model(tiny_models[name], torch.device("cpu"), torch.float32)
    model.config.final_logit_softcapping = softcap
    receiver = Receiver(model, zoo.load_tokenizer(tiny_models[name]), [" a", " b"])
    prompt = receiver.text_prompt(["x y z", "a longer prompt here"])
    embeds, mask, _ = prompt
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        reference = model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).logits[:, -3:]
        torch.testing.assert_close(receiver._logits(prompt, keep=3), reference, atol=1e-5, rtol=1e-5)


def test_fused_head_loss_matches_the_plain_head(tiny_models):
    receiver = receiver_for(tiny_models, [" a b c", " a"])
    soft = torch.randn(2, 4, receiver.embed.embedding_dim, requires_grad=True)
    labels = torch.tensor([0, 1])
    assert receiver._fused_head
    fused = receiver.label_loss(receiver.soft_prompt(soft, "Q:{soft_tokens}A:"), labels)
    (fused_grad,) = torch.autograd.grad(fused, soft)
    receiver._fused_head = False
    plain = receiver.label_loss(receiver.soft_prompt(soft, "Q:{soft_tokens}A:"), labels)
    (plain_grad,) = torch.autograd.grad(plain, soft)
    torch.testing.assert_close(fused, plain, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fused_grad, plain_grad, atol=1e-5, rtol=1e-4)


# Shared first tokens (sequence scoring), lengths 1 to 8 tokens on the tiny BPE tokenizer.
RAGGED = [" a b c", " a", " a b", " the movie was great", " the story", " the movie", " great and moving film"]


def looped_scores(receiver, prompt):
    """Reference (B, C): the whole prompt again for every verbalizer, full-vocabulary logits at each of its
    positions, normalised as constrained decoding over the label strings: over the tokens that continue
    some verbalizer (the whole vocabulary after a complete verbalizer; nothing where there is one way on)."""
    verbalizers = receiver.verbalizer_ids
    following, complete = {}, {tuple(ids) for ids in verbalizers}
    for ids in verbalizers:
        for j, token in enumerate(ids):
            following.setdefault(tuple(ids[:j]), set()).add(token)
    batch, columns = prompt.embeds.shape[0], []
    for ids in verbalizers:
        longer, _, _ = receiver._with_targets(prompt, [ids] * batch)
        logits = receiver._head(receiver._last_hidden(longer, keep=len(ids))).view(batch, len(ids), -1)
        total = torch.zeros(batch)
        for j, token in enumerate(ids):
            prefix, after = tuple(ids[:j]), sorted(following[tuple(ids[:j])])
            if j and prefix in complete:
                normaliser = logits[:, j].logsumexp(-1)
            elif j == 0 or len(after) > 1:
                normaliser = logits[:, j, after].logsumexp(-1)
            else:
                continue
            total += logits[:, j, token] - normaliser
        columns.append(total)
    return torch.stack(columns, dim=-1)


def ragged_receiver(tiny_models, name, fused, softcap):
    model = zoo.load_model(tiny_models[name], torch.device("cpu"), torch.float32)
    model.config.final_logit_softcapping = softcap
    receiver = Receiver(model, zoo.load_tokenizer(tiny_models[name]), RAGGED)
    assert not receiver.first_token_scoring
    receiver._fused_head = receiver._fused_head and fused
    return receiver


def sliding_window(receiver) -> int:
    return getattr(receiver.model.config, "sliding_window", None) or 0


HEADS = [("receiver", True, None), ("receiver", False, 5.0), ("receiver", True, 5.0), ("sender", False, None)]


@pytest.mark.parametrize("chunk_positions", [8192, 1])  # all trie paths in one chunk, or one per chunk
@pytest.mark.parametrize("name, fused, softcap", HEADS)
def test_cached_sequence_scores_match_the_looped_ones_for_a_soft_prompt(tiny_models, monkeypatch, name, fused,
                                                                        softcap, chunk_positions):
    monkeypatch.setattr("interlingua.receiver.SCORE_CHUNK_POSITIONS", chunk_positions)
    receiver = ragged_receiver(tiny_models, name, fused, softcap)
    # 12 soft tokens after a cached prefix: prompt and continuations cross the tiny Gemma-3's 16-token window.
    soft = torch.randn(3, 12, receiver.embed.embedding_dim) * 0.1
    prompt = receiver.soft_prompt(soft, "Review: the text is{soft_tokens}\nSentiment:")
    assert prompt.prefix.length + prompt.mask.shape[1] > sliding_window(receiver)
    with torch.no_grad():
        reference = looped_scores(receiver, prompt)
    with torch.inference_mode():
        scores = receiver.class_scores(prompt)
    torch.testing.assert_close(scores, reference, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("chunk_positions", [8192, 1])
@pytest.mark.parametrize("name, fused, softcap", HEADS)
def test_cached_sequence_scores_match_the_looped_ones_for_left_padded_text(tiny_models, monkeypatch, name, fused,
                                                                           softcap, chunk_positions):
    monkeypatch.setattr("interlingua.receiver.SCORE_CHUNK_POSITIONS", chunk_positions)
    receiver = ragged_receiver(tiny_models, name, fused, softcap)
    texts = ["Review: dull\nSentiment:", "Review: a much longer review of the movie with many words in it\nSentiment:",
             "Review: a charming, funny and heartfelt comedy\nSentiment:"]
    prompt = receiver.text_prompt(texts)
    assert prompt.prefix is None and not prompt.mask.all() and prompt.mask.shape[1] > sliding_window(receiver)
    with torch.no_grad():
        reference = looped_scores(receiver, prompt)
        scores = receiver.class_scores(prompt)
    torch.testing.assert_close(scores, reference, atol=1e-4, rtol=1e-4)


def test_cached_sequence_scores_leave_the_inputs_untouched(tiny_models):
    receiver = ragged_receiver(tiny_models, "receiver", True, None)
    prompt = receiver.soft_prompt(torch.randn(2, 4, receiver.embed.embedding_dim), "Q:{soft_tokens}A:")
    before = [(keys.clone(), values.clone()) for keys, values in prompt.prefix.layers]
    with torch.no_grad():
        first, again = receiver.class_scores(prompt), receiver.class_scores(prompt)
    assert torch.equal(first, again)
    for (keys, values), (old_keys, old_values) in zip(prompt.prefix.layers, before):
        assert torch.equal(keys, old_keys) and torch.equal(values, old_values)


def test_verbalizer_trie_scores_only_where_verbalizers_part_ways():
    trie = verbalizer_trie([[1, 2, 3], [1], [1, 2], [4, 5], [1, 2, 6], [7, 8, 9]])
    assert trie.firsts == [1, 1, 1, 4, 1, 7] and trie.roots == [1, 4, 7]
    assert trie.paths == [[1, 2]]              # (1,) and (1, 2) are complete verbalizers others continue
    node = {tuple(path[:j + 1]): n for path, nodes in zip(trie.paths, trie.path_nodes) for j, n in enumerate(nodes)}
    assert trie.candidates[node[(1,)]] is None and trie.candidates[node[1, 2]] is None   # whole vocabulary
    steps = sorted(zip(trie.step_classes, trie.step_nodes, trie.step_targets))
    # (4,) -> 5 and (7,) -> 8 -> 9 are the only ways on: no steps, nothing fed
    assert steps == sorted([(0, node[(1,)], 2), (0, node[1, 2], 3), (2, node[(1,)], 2),
                            (4, node[(1,)], 2), (4, node[1, 2], 6)])


def test_verbalizer_trie_normalises_a_branch_over_its_continuations():
    trie = verbalizer_trie([[1, 2], [1, 3], [1, 3, 4], [5]])
    assert trie.paths == [[1, 3]]
    node = {tuple(path[:j + 1]): n for path, nodes in zip(trie.paths, trie.path_nodes) for j, n in enumerate(nodes)}
    assert trie.candidates[node[(1,)]] == [2, 3] and trie.candidates[node[1, 3]] is None


def test_label_loss_over_labels_is_the_cross_entropy_of_the_scores_evaluation_ranks(tiny_models):
    receiver = receiver_for(tiny_models, [" good", " bad", " fine"])
    assert receiver.first_token_scoring
    soft = torch.randn(3, 4, receiver.embed.embedding_dim, requires_grad=True)
    labels, weights = torch.tensor([0, 2, 1]), torch.tensor([1.0, 3.0, 2.0])
    prompt = receiver.soft_prompt(soft, "Q:{soft_tokens}A:")
    scores = receiver.class_scores(prompt)                                         # (B, C): what evaluation ranks
    expected = (torch.nn.functional.cross_entropy(scores, labels, reduction="none") * weights).sum() / weights.sum()
    loss = receiver.label_loss(prompt, labels, weights=weights)
    torch.testing.assert_close(loss, expected)
    (grad,) = torch.autograd.grad(loss, soft)
    assert grad.abs().sum() > 0
    # the vocabulary loss is larger: the same gold logit under a bigger normaliser
    vocabulary = receiver.label_loss(prompt, labels, weights=weights, over="vocabulary")
    assert vocabulary > loss
    with pytest.raises(ValueError, match="labels"):
        receiver.label_loss(prompt, labels, over="tokens")


def test_label_loss_over_labels_falls_back_to_the_vocabulary_for_shared_first_tokens(tiny_models):
    receiver = receiver_for(tiny_models, RAGGED)
    assert not receiver.first_token_scoring
    soft = torch.randn(2, 4, receiver.embed.embedding_dim)
    prompt = receiver.soft_prompt(soft, "Q:{soft_tokens}A:")
    labels = torch.tensor([3, 1])
    torch.testing.assert_close(receiver.label_loss(prompt, labels), receiver.label_loss(prompt, labels, over="vocabulary"))


# -- a per-row KV cache as the prefix (the KV channel) ------------------------------------------------------
PREFIX_LENGTHS, SUFFIX_LENGTHS = [30, 5, 21], [6, 9, 2]   # ragged; two prefixes longer than Gemma-3's 16-token window


def kv_receiver(kind: str) -> Receiver:
    """A tiny random receiver whose attention depends on positions: Llama's q/k projections are scaled up
    (at the default init its attention is nearly uniform, so a wrong position barely shows); Gemma-3
    normalises queries and keys, as it is."""
    from interlingua.tiny import TINY_GEMMA3, TINY_LLAMA, build_random_model, build_tokenizer

    tokenizer = build_tokenizer("bytes" if kind == "llama" else "bpe")
    model = build_random_model(TINY_LLAMA if kind == "llama" else TINY_GEMMA3, tokenizer).eval().requires_grad_(False)
    if kind == "llama":
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(8.0)
            layer.self_attn.k_proj.weight.mul_(8.0)
    return Receiver(model, tokenizer, [" a", " b"])


def ragged_ids(vocab, lengths, seed):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(4, vocab, (n,), generator=generator).tolist() for n in lengths]


def reference_logprobs(model, prefix, suffix):
    """log p(suffix[1:]) (L-1,) from one forward over prefix + suffix, one row, no padding and no cache."""
    ids = torch.tensor([prefix + suffix])
    logits = model(ids).logits[0, len(prefix):-1]                                       # (L-1, V)
    return logits.log_softmax(-1).gather(-1, torch.tensor(suffix[1:])[:, None]).squeeze(-1)


@pytest.mark.parametrize("kind, fused", [("llama", False), ("gemma3", True), ("gemma3", False)])
def test_suffix_nll_after_the_models_own_ragged_cache_matches_one_forward(kind, fused):
    from interlingua.channels.kv.cache import kv_of

    receiver = kv_receiver(kind)
    model = receiver.model
    assert receiver._fused_head or not fused
    receiver._fused_head = receiver._fused_head and fused
    vocab = model.config.vocab_size
    prefixes, suffixes = ragged_ids(vocab, PREFIX_LENGTHS, 1), ragged_ids(vocab, SUFFIX_LENGTHS, 2)
    with torch.no_grad():
        block = kv_of(model, prefixes)
        references = [reference_logprobs(model, p, s) for p, s in zip(prefixes, suffixes)]
        first = receiver.embed(torch.tensor([s[0] for s in suffixes]))[:, None]
        logprobs, valid = receiver.target_logprobs(Prompt(first, torch.ones(3, 1, dtype=torch.long), block),
                                                   [s[1:] for s in suffixes])
        nll = receiver.suffix_nll(block, suffixes)
    for row, reference in enumerate(references):                                     # per token, then the mean
        assert valid[row].sum() == len(reference)
        torch.testing.assert_close(logprobs[row, :len(reference)], reference, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(nll, torch.stack([-r.mean() for r in references]), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", ["llama", "gemma3"])
def test_suffix_nll_is_differentiable_in_the_prefix_and_reads_it(kind):
    from interlingua.channels.kv.cache import KVBlock, kv_of

    receiver = kv_receiver(kind)
    model = receiver.model
    vocab = model.config.vocab_size
    prefixes, suffixes = ragged_ids(vocab, PREFIX_LENGTHS, 3), ragged_ids(vocab, SUFFIX_LENGTHS, 4)
    with torch.no_grad():
        own = kv_of(model, prefixes)
    keys = [k.clone().requires_grad_() for k in own.keys]
    values = [v.clone().requires_grad_() for v in own.values]
    nll = receiver.suffix_nll(KVBlock(keys, values, own.mask, own.positions), suffixes)
    nll.sum().backward()
    real = own.mask.bool()[:, None, :]                                                   # (B, 1, P)
    reached = lambda grad: grad.abs().sum(-1) > 0                                        # (B, H, P)
    types = getattr(model.config, "layer_types", None) or ["full_attention"] * len(keys)
    for kind, k, v in zip(types, keys, values):
        assert not (reached(k.grad) & ~real).any() and not (reached(v.grad) & ~real).any()  # padding: no gradient
        if kind == "full_attention":
            assert (reached(k.grad) == real).all() and (reached(v.grad) == real).all()   # every real entry
    if "sliding_attention" in types:  # entries older than the window for every suffix query get no gradient
        window, length = model.config.sliding_window, PREFIX_LENGTHS[0]               # row 0: 30 > 16
        start = own.length - length
        old, recent = slice(start, start + length - window + 1), slice(start + length - window + 1, None)
        grad = keys[types.index("sliding_attention")].grad[0]                            # (H, P, D)
        assert not reached(grad[:, old]).any() and reached(grad[:, recent]).all()
    zeroed = KVBlock([torch.zeros_like(k) for k in own.keys], [torch.zeros_like(v) for v in own.values],
                     own.mask, own.positions)
    with torch.no_grad():
        assert (receiver.suffix_nll(zeroed, suffixes) - nll).abs().min() > 1e-3


def test_suffix_nll_refuses_mismatched_rows_and_one_token_suffixes():
    from interlingua.channels.kv.cache import kv_of
    from interlingua.errors import DataError

    receiver = kv_receiver("llama")
    model = receiver.model
    with torch.no_grad():
        block = kv_of(model, [[5, 6, 7], [8, 9]])
        with pytest.raises(DataError, match="3 suffixes"):
            receiver.suffix_nll(block, [[1, 2], [3, 4], [5, 6]])
        with pytest.raises(DataError, match=">= 2 tokens"):
            receiver.suffix_nll(block, [[1, 2], [3]])


@pytest.mark.parametrize("kind", ["llama", "gemma3"])
@pytest.mark.parametrize("verbalizers", [[" a", " b"], [" alpha", " also"]], ids=["first-token", "sequence"])
def test_prompts_of_different_lengths_after_a_block_score_like_one_forward(kind, verbalizers):
    """Study 3's context-aware prompts: each row reads its own prompt (right-padded) after its own cache; class
    scores, the label loss and target log-probs equal one plain forward per row."""
    from interlingua.channels.kv.cache import kv_of

    base = kv_receiver(kind)
    receiver = Receiver(base.model, base.tokenizer, verbalizers)
    model = receiver.model
    vocab = model.config.vocab_size
    prefixes, prompts = ragged_ids(vocab, PREFIX_LENGTHS, 3), ragged_ids(vocab, [2, 5, 3], 4)
    longest = max(len(p) for p in prompts)
    padded = torch.tensor([p + [0] * (longest - len(p)) for p in prompts])
    mask = torch.tensor([[1] * len(p) + [0] * (longest - len(p)) for p in prompts])
    with torch.no_grad():
        block = kv_of(model, prefixes)
        prompt = Prompt(receiver.embed(padded), mask, block)
        scores = receiver.class_scores(prompt)                                       # (3, 2)
        loss = receiver.label_loss(prompt, torch.tensor([0, 1, 1]))
        for row, (prefix, tail) in enumerate(zip(prefixes, prompts)):
            context = prefix + tail[:-1]                                             # then tail[-1] is read
            if receiver.first_token_scoring:   # first-token logits: equal to the log-probs up to one shift
                alone = torch.stack([reference_logprobs(model, context, tail[-1:] + ids[:1]).sum()
                                     for ids in receiver.verbalizer_ids])
                torch.testing.assert_close(scores[row] - scores[row].max(), alone - alone.max(), atol=1e-4, rtol=1e-4)
            else:                              # each label sequence's log-prob
                alone = torch.stack([reference_logprobs(model, context, tail[-1:] + ids).sum()
                                     for ids in receiver.verbalizer_ids])
                torch.testing.assert_close(scores[row], alone, atol=1e-4, rtol=1e-4)
        assert torch.isfinite(loss)
