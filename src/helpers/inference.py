"""Engine, inference side: a model's loss at labelled tokens, token NLLs, greedy answers, class probabilities.

`labelled_nll` is the one home of the output layer at labelled positions: training's packed
loss (helpers.trainer) and stage 05's perplexities both go through it. Models are loaded by
helpers.models (`load_saved` for a run's tuned model).
"""
from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from . import chat, precision


def labelled_nll(model, labels: torch.Tensor, **inputs) -> torch.Tensor:
    """Token NLLs (N,) at the positions whose next token is labelled, row by row; the head runs only there.

    The output layer maps each position to the whole vocabulary (49k scores for SmolLM2); the
    prompt positions carry no label, so scoring only the rest saves most of that work and the
    memory of their logits (measured +14% tokens/s in training). `logits_to_keep` takes the
    positions any row needs, so the call goes through the model's (and DDP's) own forward.
    Same value as the model's loss: token cross-entropy over the labelled tokens.
    """
    targets = labels[:, 1:]  # (B, T-1): position t predicts token t+1
    scored = targets != chat.IGNORE  # (B, T-1)
    keep = scored.any(0).nonzero().squeeze(1)  # (K,) positions at least one row scores
    logits = model(**inputs, logits_to_keep=keep).logits  # (B, K, V)
    chosen = scored[:, keep]  # (B, K)
    return F.cross_entropy(logits[chosen].float(), targets[:, keep][chosen], reduction="none")


def token_nlls(model, tokenizer, rows: list[dict], max_length: int, batch_size: int,
               bf16: bool = False) -> list[np.ndarray]:
    """Per-token NLL (nats) of each conversation's assistant tokens, in row order."""
    encoded = [chat.encode(tokenizer, r["messages"], max_length) for r in rows]
    order = sorted(range(len(rows)), key=lambda i: len(encoded[i].input_ids))  # less padding per batch
    out: list[np.ndarray] = [np.zeros(0)] * len(rows)
    model.eval()
    with torch.inference_mode(), precision.autocast(bf16):
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            # Right padding: a causal model's real tokens never attend to pads that come after them.
            batch = tokenizer.pad([{"input_ids": encoded[i].input_ids} for i in idx], padding="longest",
                                  padding_side="right", return_tensors="pt")  # input_ids, attention_mask: (B, T)
            labels = torch.full(batch["input_ids"].shape, chat.IGNORE, dtype=torch.long)  # (B, T)
            for row, i in enumerate(idx):
                labels[row, :len(encoded[i].labels)] = torch.tensor(encoded[i].labels)
            labels = labels.to(model.device)
            nll = labelled_nll(model, labels, **{k: v.to(model.device) for k, v in batch.items()})
            counts = (labels[:, 1:] != chat.IGNORE).sum(dim=1).tolist()
            for i, part in zip(idx, nll.split(counts)):
                out[i] = part.double().cpu().numpy()
    return out


def generate(model, tokenizer, rows: list[dict], max_new_tokens: int, batch_size: int) -> list[dict]:
    """Greedy answers (KV cache, left-padded batches) to each row's last prompt, with the
    generated token count and the batch's wall time shared out per answer."""
    if not rows:
        return []
    prompts = [chat.prompt_ids(tokenizer, r["messages"]) for r in rows]
    pad = tokenizer.pad_token_id
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos if eos is not None else tokenizer.eos_token_id])
    kwargs = dict(do_sample=False, use_cache=True, pad_token_id=pad, num_beams=1, top_p=None, top_k=None,
                  temperature=None)
    out = []
    with torch.inference_mode():
        model.generate(input_ids=torch.tensor([prompts[0]], device=model.device), max_new_tokens=2, **kwargs)  # warm-up
        for start in range(0, len(prompts), batch_size):
            batch = prompts[start:start + batch_size]
            # Left padding: every prompt ends where generation starts, so new tokens line up.
            enc = tokenizer.pad([{"input_ids": p} for p in batch], padding="longest", padding_side="left",
                                return_tensors="pt")  # input_ids, attention_mask: (B, T)
            width = enc["input_ids"].shape[1]
            t0 = time.perf_counter()
            gen = model.generate(**{k: v.to(model.device) for k, v in enc.items()},
                                 max_new_tokens=max_new_tokens, **kwargs)
            seconds = time.perf_counter() - t0
            for new in gen[:, width:].tolist():  # (B, new)
                n = next((j + 1 for j, t in enumerate(new) if t in eos_ids), len(new))  # up to and with the end of turn
                out.append({"answer": tokenizer.decode(new[:n], skip_special_tokens=True).strip(),
                            "new_tokens": n, "seconds": seconds / len(batch)})
    return out


def predict_proba(model, tokenizer, texts: list[str], max_length: int, batch_size: int) -> np.ndarray:
    """Class probabilities of a sequence classifier, (N, C), batched and padded."""
    out = []
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            enc = tokenizer(texts[i:i + batch_size], padding=True, truncation=True, max_length=max_length,
                            return_tensors="pt").to(model.device)
            out.append(torch.softmax(model(**enc).logits.float(), dim=-1).cpu().numpy())  # (B, C)
    return np.concatenate(out) if out else np.zeros((0, model.config.num_labels))


def model_labels(model) -> list[str]:
    """The label names in the order of the classifier's outputs (from its config's id2label)."""
    id2label = model.config.id2label
    return [id2label[i] for i in range(len(id2label))]
