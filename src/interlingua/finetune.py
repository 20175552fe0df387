"""Fine-tuning baselines: the receiver reads the task text and part of it is trained.

Two methods, one config dict each (`finetune` below), trained with the bridge's loop (`train.fit`),
loss (the receiver's label cross-entropy) and step budget (`train.steps` x `train.batch_size`):
  lora         peft LoRA adapters (rank r, scale alpha / r) on every attention and MLP projection;
               the module names are shared by Llama-family (SmolLM2) and Gemma-3 blocks
  last_layers  the last N decoder blocks and the final norm; everything else frozen, in particular
               the (tied) embedding / output head, 262k x 640 for Gemma-3

A checkpoint holds only the trained tensors; the frozen rest is rebuilt from the receiver's files.
Evaluation merges LoRA into the weights it adapts, so the receiver runs at its plain speed.
LoRA adapters are float32 whatever the compute dtype; last_layers trains the blocks in the compute
dtype, so on a bf16 GPU run prefer `runtime.dtype: float32` for it (bf16 weights absorb tiny updates).
"""
from __future__ import annotations

import time
from pathlib import Path

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from torch import nn

from . import zoo
from .errors import ConfigError, DataError
from .evaluate import fit_for_receiver, parameters_row, predict_texts, rows_for, truncated_rows, write_rows
from .fingerprint import fingerprint
from .receiver import Receiver
from .tasks import max_tokens, read_split
from .train import _save, fit, load_trainable_state, resume_path_for, trainable_state

PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
KEYS = {"lora": {"method", "rank", "alpha", "dropout", "target_modules", "lr"},
        "last_layers": {"method", "layers", "lr"}}
DEFAULTS = {"lora": {"dropout": 0.0, "target_modules": PROJECTIONS}, "last_layers": {}}


def check_spec(finetune: dict) -> dict:
    """The finetune dict with defaults filled; unknown methods or keys are an error naming them."""
    method = finetune.get("method")
    if method not in KEYS:
        raise ConfigError(f"finetune.method: unknown method {method!r} (known: {sorted(KEYS)})")
    spec = {**DEFAULTS[method], **finetune}
    unknown, missing = sorted(set(spec) - KEYS[method]), sorted(KEYS[method] - set(spec))
    if unknown or missing:
        raise ConfigError(f"finetune ({method}): unknown key(s) {unknown}, missing key(s) {missing}")
    return spec


def method_name(finetune: dict) -> str:
    """The `method` column of results: lora or finetune_last<N>."""
    return "lora" if finetune["method"] == "lora" else f"finetune_last{finetune['layers']}"


def method_specs(section: dict) -> dict[str, dict]:
    """Config section `finetune` -> {method name: finetune dict}, one per run kind (lora, finetune_last2, ...)."""
    specs = {}
    if "lora" in section:
        specs["lora"] = check_spec({"method": "lora", **section["lora"]})
    if "last_layers" in section:
        options = dict(section["last_layers"])
        for layers in options.pop("layers"):
            spec = check_spec({"method": "last_layers", "layers": layers, **options})
            specs[method_name(spec)] = spec
    return specs


def prepare(model: nn.Module, finetune: dict, seed: int) -> nn.Module:
    """Freeze the receiver, then make trainable what `finetune` names (in place; returns the model)."""
    model.requires_grad_(False)
    if finetune["method"] == "lora":
        torch.manual_seed(seed)  # LoRA A is random (B starts at zero): the seed fixes it
        config = LoraConfig(r=finetune["rank"], lora_alpha=finetune["alpha"], lora_dropout=finetune["dropout"],
                            target_modules=list(finetune["target_modules"]), bias="none")
        inject_adapter_in_model(config, model)
        for name, parameter in model.named_parameters():
            parameter.requires_grad_("lora_" in name)
            if "lora_" in name:  # float32 adapters on a 16-bit receiver (peft casts their input and output)
                parameter.data = parameter.data.float()
    else:
        decoder = model.get_decoder()
        if not 1 <= finetune["layers"] <= len(decoder.layers):
            raise ConfigError(f"finetune.layers = {finetune['layers']}: the receiver has {len(decoder.layers)} blocks")
        for block in decoder.layers[-finetune["layers"]:]:
            block.requires_grad_(True)
        decoder.norm.requires_grad_(True)
    if model.get_input_embeddings().weight.requires_grad or model.get_output_embeddings().weight.requires_grad:
        raise ConfigError("finetune must leave the embedding and output head frozen")
    return model


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def train_finetune(split_path, receiver_dir, out_path, *, task: dict, train: dict, finetune: dict, seed: int,
                   device, dtype) -> Path:
    """Train part of the receiver reading `prompts.text` on the training split; save the trained tensors."""
    finetune = check_spec(finetune)
    rows, meta = read_split(split_path)
    labels = torch.tensor([row["label"] for row in rows])
    model = prepare(zoo.load_model(receiver_dir, device, dtype), finetune, seed)
    # Built after requires_grad is set: the Receiver checks once that the head is frozen (fused head).
    receiver = Receiver(model, zoo.load_tokenizer(receiver_dir), task["verbalizers"])
    rows, truncated = fit_for_receiver(receiver, task, rows, task["prompts"]["text"].format(text=""))
    texts = [task["prompts"]["text"].format(text=row["text"]) for row in rows]

    def make_prompt(batch_rows):
        return receiver.text_prompt([texts[r] for r in batch_rows]), None  # no soft tokens: no diversity term

    receiver_fp = zoo.read_manifest(receiver_dir)["fingerprint"]
    run_fp = fingerprint({"task": meta["content_sha256"], "prompts": task["prompts"]["text"],
                          "verbalizers": task["verbalizers"], "train": train, "finetune": finetune, "seed": seed,
                          "receiver": receiver_fp, "max_tokens": max_tokens(task)})
    started = time.perf_counter()
    log = fit(model, make_prompt, labels, receiver, train, finetune["lr"], seed, 0.0,
              desc=f"finetune {method_name(finetune)}", resume_path=resume_path_for(Path(out_path)), run_key=run_fp)
    payload = {"kind": "finetune", "method": method_name(finetune), "finetune": finetune,
               "state_dict": trainable_state(model), "trainable_parameters": count_trainable(model),
               "receiver": receiver_fp, "seed": seed, "seconds": time.perf_counter() - started,
               "fingerprint": run_fp, "truncated_inputs": truncated}
    _save(Path(out_path), payload, log)
    return Path(out_path)


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold LoRA into the weights it adapts (W + alpha/r * B A): the receiver then runs at its own cost."""
    for module in model.modules():
        if isinstance(module, LoraLayer):
            module.merge()
    return model


def load_finetuned(receiver_dir, checkpoint, task: dict, device, dtype, merge: bool = True):
    """(Receiver with the fine-tuned weights, checkpoint payload)."""
    payload = torch.load(checkpoint, map_location=device, weights_only=False)
    receiver_fp = zoo.read_manifest(receiver_dir)["fingerprint"]
    if payload["receiver"] != receiver_fp:
        raise DataError(f"{checkpoint} fine-tunes receiver {payload['receiver']}, not {receiver_dir} ({receiver_fp})")
    model = prepare(zoo.load_model(receiver_dir, device, dtype), payload["finetune"], payload["seed"])
    load_trainable_state(model, payload["state_dict"])
    if merge:
        merge_lora(model)
    model.eval().requires_grad_(False)
    return Receiver(model, zoo.load_tokenizer(receiver_dir), task["verbalizers"]), payload


def evaluate_finetune(split_path, receiver_dir, checkpoint, out_path, *, task_name: str, task: dict,
                      receiver_alias: str, batch_size: int, device, dtype) -> Path:
    """Accuracy and time per example of the fine-tuned receiver reading the text, and its trained size."""
    examples, meta = read_split(split_path)
    receiver, payload = load_finetuned(receiver_dir, checkpoint, task, device, dtype)
    examples, truncated = fit_for_receiver(receiver, task, examples, task["prompts"]["text"].format(text=""))
    labels = torch.tensor([e["label"] for e in examples])
    texts = [task["prompts"]["text"].format(text=e["text"]) for e in examples]
    started = time.perf_counter()
    predictions = predict_texts(receiver, texts, batch_size, desc=f"{payload['method']} eval")
    base = {"task": task_name, "method": payload["method"], "sender": "", "receiver": receiver_alias, "bridge": "",
            "seed": payload["seed"], "fingerprint": payload["fingerprint"]}
    rows = rows_for(base, predictions, labels, time.perf_counter() - started, examples=range(len(labels)),
                    split=meta["content_sha256"])
    rows += truncated_rows(base, truncated, len(labels))
    return write_rows(rows + [parameters_row(base, payload["trainable_parameters"], len(labels))], out_path)
