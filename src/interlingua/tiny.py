"""Tiny offline tokenizers and randomly initialised models (tests and the smoke config).

Two tokenizers that split text differently, like a real cross-family pair:
  bytes  one token per UTF-8 byte (256 + specials)
  bpe    byte-level BPE trained on a fixed built-in corpus (deterministic)
"""
from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]

# A fixed corpus so the BPE merges never depend on the task data.
_CORPUS = """
The movie was a great and moving film with wonderful acting and a clever story.
This is a dull, boring and badly written picture; the plot is bad and the jokes fall flat.
Sentiment positive negative review answer question world sports business science technology.
What is the name of the city where the river meets the sea? How many people live there?
A charming, funny and heartfelt comedy that never loses its way. An awful mess of a thriller.
""".strip().splitlines()


def build_tokenizer(kind: str) -> PreTrainedTokenizerFast:
    if kind == "bytes":
        alphabet = pre_tokenizers.ByteLevel.alphabet()
        vocab = {tok: i for i, tok in enumerate(SPECIALS + sorted(alphabet))}
        core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    elif kind == "bpe":
        core = Tokenizer(models.BPE(unk_token="<unk>"))
        core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        trainer = trainers.BpeTrainer(vocab_size=384, special_tokens=SPECIALS, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        core.train_from_iterator(_CORPUS * 4, trainer=trainer)
    else:
        raise ValueError(f"unknown tiny tokenizer '{kind}' (bytes or bpe)")
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<bos>",
                                   eos_token="<eos>", unk_token="<unk>")


def build_random_model(config_overrides: dict, tokenizer: PreTrainedTokenizerFast, seed: int = 0):
    """A randomly initialised causal LM of `model_type` with the tokenizer's vocabulary."""
    overrides = dict(config_overrides)
    model_type = overrides.pop("model_type")
    config = AutoConfig.for_model(
        model_type, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **overrides,
    )
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config)


# Shared by tests and config/smoke.yaml: two architectures of different families.
TINY_LLAMA = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4,
              "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512}
TINY_GEMMA3 = {"model_type": "gemma3_text", "hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 3,
               "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 24, "sliding_window": 16,
               "layer_types": ["sliding_attention", "sliding_attention", "full_attention"],
               "max_position_embeddings": 512}
