"""Train soft-token producers against a frozen receiver, from cached sender states.

Two producers share one loop: a bridge (sender states from the store -> M soft tokens)
and prompt tuning (peft's PromptEmbedding: M learned tokens, no sender, no input).
The sender is never loaded here: the bridge reads the activation store. The same loop
(`fit`) also fine-tunes parts of the receiver itself (finetune.py).
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import torch
from peft import PromptEmbedding, PromptTuningConfig
from torch import nn
from tqdm.auto import tqdm

from . import zoo
from .bridges import bridge_config, build_bridge, is_trainable
from .bridges.input_norm import token_statistics
from .errors import DataError
from .fingerprint import fingerprint
from .receiver import Receiver, diversity_penalty, embedding_rms
from .runtime import atomic_save, lr_lambda, seed_everything
from .store import ActivationStore
from .tasks import read_split


def batches(n_rows: int, batch_size: int, steps: int, generator: torch.Generator):
    """`steps` batches of row indices, walking seeded permutations epoch after epoch."""
    order = torch.empty(0, dtype=torch.long)
    for _ in range(steps):
        while len(order) < batch_size:
            order = torch.cat([order, torch.randperm(n_rows, generator=generator)])
        yield order[:batch_size].tolist()
        order = order[batch_size:]


def trainable_state(module: nn.Module) -> dict:
    """What training changes: the state dict without frozen parameters (trainable ones and buffers).

    For bridges and prompt tuning that is the whole state dict; for a fine-tuned receiver it leaves
    out the frozen model, which is rebuilt from its own files.
    """
    frozen = {name for name, p in module.named_parameters(remove_duplicate=False) if not p.requires_grad}
    return {name: tensor for name, tensor in module.state_dict().items() if name not in frozen}


def load_trainable_state(module: nn.Module, state: dict) -> None:
    """Load a `trainable_state`; every trainable tensor must be in it, and nothing else."""
    missing, unexpected = module.load_state_dict(state, strict=False)
    frozen = {name for name, p in module.named_parameters(remove_duplicate=False) if not p.requires_grad}
    if unexpected or set(missing) - frozen:
        raise DataError(f"state does not fit the module: missing {sorted(set(missing) - frozen)[:5]}, "
                        f"unexpected {sorted(unexpected)[:5]}")


def soft_prompts(soft_tokens, receiver: Receiver, instruction: str):
    """make_prompt for soft-token producers: soft_tokens(rows) (B, M, d_r) placed inside the instruction."""
    def make_prompt(rows):
        soft = soft_tokens(rows)                                     # (B, M, d_r)
        return receiver.soft_prompt(soft, instruction), soft          # embeds (B, M + A, d_r)
    return make_prompt


def fit(module: nn.Module, make_prompt, labels: torch.Tensor, receiver: Receiver, train: dict, lr: float,
        seed: int, diversity_weight: float, desc: str, resume_path: Path | None = None,
        run_key: str = "", input_free: bool = False) -> list[dict]:
    """Optimise the trainable parameters of `module` so the receiver predicts labels.

    make_prompt(rows) -> (Prompt, soft): soft is the (B, M, d_r) soft tokens behind the prompt, which
    feed the diversity term, or None (no diversity term, e.g. a fine-tuned receiver reading text).
    Every `train.checkpoint_every` steps the whole state (trainable weights, optimizer, schedule, RNG,
    log) goes to `resume_path`; a killed run resumes there and ends with the same weights.
    input_free: the prompt is the same for every example (prompt tuning). Rows with the same label are
    then identical, so one row per distinct label, weighted by its count, gives the batch's exact loss
    and gradient (2 rows instead of 8 on SST-2).
    """
    generator = seed_everything(seed)
    plan = list(batches(len(labels), train["batch_size"], train["steps"], generator))  # fixed up front
    optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=lr,
                                  weight_decay=train["weight_decay"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(train["warmup_steps"], train["steps"]))
    log, start = [], 0
    if resume_path is not None and resume_path.exists():
        state = torch.load(resume_path, map_location="cpu", weights_only=False)
        if state["run_key"] == run_key:
            load_trainable_state(module, state["module"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            torch.set_rng_state(state["rng"])
            log, start = state["log"], state["step"]
    module.train()
    bar = tqdm(plan[start:], total=train["steps"], initial=start, desc=desc)
    for step, rows in enumerate(bar, start=start):
        if input_free:
            targets, counts = labels[rows].unique(return_counts=True)
            prompt, soft = make_prompt(rows[:len(targets)])  # which rows does not matter: same prompt
            terms = {"ce": receiver.label_loss(prompt, targets, weights=counts, over=train["loss"])}
        else:
            prompt, soft = make_prompt(rows)
            terms = {"ce": receiver.label_loss(prompt, labels[rows], over=train["loss"])}
        loss = terms["ce"]
        if soft is not None:  # soft tokens: penalise their collapse to one prompt for every example
            terms["diversity"] = diversity_penalty(soft)
            loss = loss + diversity_weight * terms["diversity"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), train["grad_clip"])
        optimizer.step()
        scheduler.step()
        record = {"step": step + 1, "loss": loss.item(), **{key: term.item() for key, term in terms.items()}}
        log.append(record)
        if step % 10 == 0:
            bar.set_postfix({key: f"{value:.3f}" for key, value in record.items() if key in terms})
        if resume_path is not None and (step + 1) % train["checkpoint_every"] == 0 and step + 1 < train["steps"]:
            atomic_save(resume_path, {"run_key": run_key, "step": step + 1, "module": trainable_state(module),
                                       "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                                       "rng": torch.get_rng_state(), "log": log})
    module.eval()
    return log


def resume_path_for(out_path: Path) -> Path:
    return out_path.with_name(out_path.name + ".resume")


def _save(path: Path, payload: dict, log: list[dict]) -> None:
    atomic_save(path, payload)
    path.with_suffix(".log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    resume_path_for(path).unlink(missing_ok=True)


def train_bridge(store_path, receiver_dir, out_path, *, bridge_name: str, bridge_spec: dict, task: dict,
                 train: dict, seed: int, device, dtype, store_request: dict | None = None, code: str = "") -> Path:
    """`code`: the hash of the training code (the job's `code` param): part of the resume key, so a run
    killed before a code edit starts over instead of resuming with the new code."""
    store = ActivationStore(store_path, request=store_request)
    model = zoo.load_model(receiver_dir, device, dtype)
    receiver = Receiver(model, zoo.load_tokenizer(receiver_dir), task["verbalizers"])
    config = bridge_config(bridge_name, bridge_spec, store.hidden_size, model.get_input_embeddings().embedding_dim,
                           seed=seed)
    if config.source_layer not in store.layers:
        raise DataError(f"{store_path}: layer {config.source_layer} not stored (has {store.layers})")
    torch.manual_seed(seed)
    bridge = build_bridge(bridge_spec["type"], config).to(device)
    bridge.calibrate(embedding_rms(model))
    bridge.fit_input(*token_statistics(lambda: (store.row_hidden(r, config.source_layer) for r in range(len(store)))))

    def soft_tokens(rows):
        states, mask, _ = store.batch(rows, config.source_layer, torch.float32, device)
        return bridge(states, mask)

    receiver_fp = zoo.read_manifest(receiver_dir)["fingerprint"]
    # The resume key and the result's fingerprint: everything that decides the trained weights.
    run_fp = fingerprint({"store": store.manifest["fingerprint"], "bridge": bridge_spec, "train": train,
                          "seed": seed, "task": task["prompts"], "verbalizers": task["verbalizers"],
                          "receiver": receiver_fp, **({"code": code} if code else {})})
    started = time.perf_counter()
    log = []  # a fixed, non-learned bridge (identity) is calibrated, not trained
    if is_trainable(bridge):
        log = fit(bridge, soft_prompts(soft_tokens, receiver, task["prompts"]["instruction"]), store.labels,
                  receiver, train, train["lr"], seed, train["diversity_weight"], desc=f"train {bridge_name}",
                  resume_path=resume_path_for(Path(out_path)), run_key=run_fp)
    payload = {"kind": "bridge", "type": bridge_spec["type"], "config": dataclasses.asdict(config),
               "state_dict": bridge.state_dict(), "store_fingerprint": store.manifest["fingerprint"],
               "sender": sender_identity(store.manifest), "receiver": receiver_fp,
               "verbalizers": list(task["verbalizers"]), "seed": seed,
               "seconds": time.perf_counter() - started, "fingerprint": run_fp}
    _save(Path(out_path), payload, log)
    return Path(out_path)


def sender_identity(manifest: dict) -> dict:
    """What a bridge's input depends on, from a store manifest: the same for the train and eval stores
    of one sender, task and prompt (evaluate_bridge checks it)."""
    return {key: manifest.get(key) for key in ("model_fingerprint", "sender_prompt", "task", "storage_dtype",
                                               "compute_dtype", "code")}


def load_bridge(path, device):
    payload = torch.load(path, map_location=device, weights_only=False)
    from .bridges import REGISTRY
    config_class, module_class = REGISTRY[payload["type"]]
    bridge = module_class(config_class(**payload["config"])).to(device)
    bridge.load_state_dict(payload["state_dict"])
    return bridge.eval(), payload


def make_prompt_embedding(model, num_virtual_tokens: int, seed: int) -> PromptEmbedding:
    """peft's prompt-tuning module, initialised from sampled vocabulary embeddings."""
    torch.manual_seed(seed)
    config = PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=num_virtual_tokens,
                                token_dim=model.get_input_embeddings().embedding_dim,
                                num_transformer_submodules=1, prompt_tuning_init="SAMPLE_VOCAB")
    return PromptEmbedding(config, model.get_input_embeddings()).to(model.get_input_embeddings().weight.device)


def train_prompt_tuning(split_path, receiver_dir, out_path, *, task: dict, train: dict, prompt_tuning: dict,
                        seed: int, device, dtype, code: str = "") -> Path:
    """Prompt tuning on the receiver alone: the learned tokens sit where the bridge's soft tokens go.
    `code` as for train_bridge."""
    rows, meta = read_split(split_path)
    labels = torch.tensor([row["label"] for row in rows])
    model = zoo.load_model(receiver_dir, device, dtype)
    receiver = Receiver(model, zoo.load_tokenizer(receiver_dir), task["verbalizers"])
    prompt = make_prompt_embedding(model, prompt_tuning["num_virtual_tokens"], seed)
    indices = torch.arange(prompt_tuning["num_virtual_tokens"], device=receiver.device)

    def soft_tokens(batch_rows):
        return prompt(indices).unsqueeze(0).expand(len(batch_rows), -1, -1)

    run_fp = fingerprint({"task": meta["content_sha256"], "prompts": task["prompts"],
                          "verbalizers": task["verbalizers"], "train": train, **({"code": code} if code else {}),
                          "prompt_tuning": prompt_tuning, "seed": seed,
                          "receiver": zoo.read_manifest(receiver_dir)["fingerprint"]})
    started = time.perf_counter()
    log = fit(prompt, soft_prompts(soft_tokens, receiver, task["prompts"]["instruction"]), labels, receiver, train,
              prompt_tuning["lr"], seed, 0.0, desc="prompt tuning", resume_path=resume_path_for(Path(out_path)),
              run_key=run_fp, input_free=True)
    payload = {"kind": "prompt_tuning", "num_virtual_tokens": prompt_tuning["num_virtual_tokens"],
               "state_dict": prompt.state_dict(), "seed": seed, "seconds": time.perf_counter() - started,
               "fingerprint": run_fp}
    _save(Path(out_path), payload, log)
    return Path(out_path)
