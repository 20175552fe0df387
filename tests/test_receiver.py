import pytest
import torch

from interlingua import zoo
from interlingua.receiver import Receiver


def receiver_for(tiny_models, verbalizers):
    model = zoo.load_model(tiny_models["receiver"], torch.device("cpu"), torch.float32)
    return Receiver(model, zoo.load_tokenizer(tiny_models["receiver"]), verbalizers)


def test_left_padding_gives_the_same_scores_as_one_by_one(tiny_models):
    receiver = receiver_for(tiny_models, [" negative", " positive"])
    texts = ["Review: short\nSentiment:", "Review: a much longer review of the movie\nSentiment:"]
    with torch.no_grad():
        batched = receiver.class_scores(*receiver.text_prompt(texts))
        single = torch.cat([receiver.class_scores(*receiver.text_prompt([t])) for t in texts])
    torch.testing.assert_close(batched, single, atol=1e-4, rtol=1e-4)


def test_sequence_scoring_agrees_with_first_token_scoring_on_one_token_verbalizers(tiny_models):
    receiver = receiver_for(tiny_models, [" a", " b"])
    assert receiver.first_token_scoring
    embeds, mask = receiver.text_prompt(["x y", "the story"])
    with torch.no_grad():
        first = receiver.class_scores(embeds, mask)
        receiver.first_token_scoring = False
        full = receiver.class_scores(embeds, mask)
    # first-token scores are logits: the same up to one normaliser per example, so the same ranking
    torch.testing.assert_close(first - first.logsumexp(-1, keepdim=True), full - full.logsumexp(-1, keepdim=True),
                               atol=1e-4, rtol=1e-4)
    assert torch.equal(first.argmax(-1), full.argmax(-1))


def test_soft_prompt_layout(tiny_models):
    receiver = receiver_for(tiny_models, [" negative", " positive"])
    soft = torch.randn(3, 4, receiver.embed.embedding_dim)
    embeds, mask = receiver.soft_prompt(soft, "Review:{soft_tokens}\nSentiment:")
    before = len(receiver.prefix_ids) + len(receiver.tokenizer("Review:", add_special_tokens=False)["input_ids"])
    assert torch.equal(embeds[:, before:before + 4], soft)
    assert mask.shape == embeds.shape[:2] and mask.all()


@pytest.mark.parametrize("name, softcap", [("sender", None), ("receiver", None), ("receiver", 5.0)])
def test_logits_match_the_model_forward(tiny_models, name, softcap):
    model = zoo.load_model(tiny_models[name], torch.device("cpu"), torch.float32)
    model.config.final_logit_softcapping = softcap
    receiver = Receiver(model, zoo.load_tokenizer(tiny_models[name]), [" a", " b"])
    embeds, mask = receiver.text_prompt(["x y z", "a longer prompt here"])
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        reference = model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).logits[:, -3:]
        torch.testing.assert_close(receiver._logits(embeds, mask, keep=3), reference, atol=1e-5, rtol=1e-5)
