"""Text communication at shorter limits: each message is what generation capped at L tokens writes."""
from interlingua.studies.dense_kv.text import truncated


def test_messages_cut_to_their_first_tokens(real_tokenizers):
    tokenizer = real_tokenizers["smollm2"]
    long = "The review praises the acting and the score, but finds the plot thin and the ending rushed."
    ids = tokenizer(long, add_special_tokens=False)["input_ids"]
    rows = [{"relay": long, "generated_tokens": len(ids) + 1, "finished": True, "seconds": 2.0},
            {"relay": "Positive.", "generated_tokens": 3, "finished": True, "seconds": 0.5}]
    cut = truncated(rows, tokenizer, 8)
    assert tokenizer(cut[0]["relay"], add_special_tokens=False)["input_ids"] == ids[:8]
    assert cut[0]["generated_tokens"] == 8 and cut[0]["finished"] is False
    assert 0 < cut[0]["seconds"] < 2.0
    assert cut[1] == rows[1]                          # within the limit: unchanged
    assert truncated(rows, tokenizer, 10_000) == rows
