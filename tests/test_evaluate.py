import torch

from interlingua import zoo
from interlingua.evaluate import predict, predict_texts
from interlingua.receiver import Receiver


def test_length_sorted_batches_predict_the_same_classes_in_example_order(tiny_models):
    cpu = torch.device("cpu")
    receiver = Receiver(zoo.load_model(tiny_models["receiver"], cpu, torch.float32),
                        zoo.load_tokenizer(tiny_models["receiver"]), [" negative", " positive"])
    texts = [f"Review: {'so ' * (7 * i % 11)}good {i}\nSentiment:" for i in range(13)]
    one_by_one = torch.cat([predict(receiver, lambda rows: receiver.text_prompt([text]), 1, 1, "one")
                            for text in texts])
    scores = torch.stack([receiver.class_scores(receiver.text_prompt([text]))[0] for text in texts])
    assert len(set(scores.argmax(-1).tolist())) == 2  # both classes occur: the order is observable
    assert torch.equal(one_by_one, scores.argmax(-1))
    assert torch.equal(predict_texts(receiver, texts, batch_size=4, desc="sorted"), one_by_one)
