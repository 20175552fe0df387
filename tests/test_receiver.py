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
    torch.testing.assert_close(first, full, atol=1e-4, rtol=1e-4)


def test_soft_prompt_layout(tiny_models):
    receiver = receiver_for(tiny_models, [" negative", " positive"])
    soft = torch.randn(3, 4, receiver.embed.embedding_dim)
    embeds, mask = receiver.soft_prompt(soft, "Review:{soft_tokens}\nSentiment:")
    before = len(receiver.prefix_ids) + len(receiver.tokenizer("Review:", add_special_tokens=False)["input_ids"])
    assert torch.equal(embeds[:, before:before + 4], soft)
    assert mask.shape == embeds.shape[:2] and mask.all()
