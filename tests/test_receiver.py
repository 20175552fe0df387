import pytest
import torch

from interlingua import zoo
from interlingua.receiver import Prompt, Receiver


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
