"""How rows are measured, one definition for 01 (which shows the numbers) and 02 (which acts on them):
the text a row is about, symbol share, token lengths, outlier fences, duplicate keys, similar pairs."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd

from . import chat
from .schema import row_texts


def analysis_text(row: dict) -> str:
    """The words a row is about: its text, or a chat's user and assistant turns (no system prompt,
    which repeats in every chat and would make them all look alike)."""
    return "\n".join(text for role, text in row_texts(row) if role != "system")


def symbol_share(text: str) -> float:
    """Share of non-space characters that are not letters (digits, punctuation, symbols)."""
    chars = [c for c in text if not c.isspace()]
    return sum(1 for c in chars if not c.isalpha()) / len(chars) if chars else 0.0


def token_lengths(rows: list[dict], tokenizer, task: str) -> pd.DataFrame:
    """Tokens per row as the model sees it (chats under the chat template, texts with special
    tokens) and, for chats, the loss tokens; 01 shows these numbers, 02 drops rows by them."""
    ids = [r["id"] for r in rows]
    if task == "chat":
        enc = [chat.encode(tokenizer, r["messages"], max_length=10**9) for r in rows]
        return pd.DataFrame({"id": ids, "tokens": [len(e.input_ids) for e in enc],
                             "loss_tokens": [e.n_loss_tokens for e in enc]}, columns=["id", "tokens", "loss_tokens"])
    texts = [r["text"] for r in rows]
    tokens = [len(i) for i in tokenizer(texts, add_special_tokens=True)["input_ids"]] if texts else []
    return pd.DataFrame({"id": ids, "tokens": tokens}, columns=["id", "tokens"])


def iqr_fences(values: list[float], k: float) -> tuple[float, float]:
    """Tukey's fences (Q1 - k*IQR, Q3 + k*IQR): values outside are outliers."""
    q1, q3 = np.percentile(values, [25, 75]) if values else (0.0, 0.0)
    return float(q1 - k * (q3 - q1)), float(q3 + k * (q3 - q1))


def dedup_key(row: dict) -> str:
    """What makes two rows the same: case- and space-insensitive text (every turn, for chats)."""
    def norm(t: str) -> str:
        return " ".join(t.casefold().split())

    return json.dumps([(role, norm(text)) for role, text in row_texts(row)])


def shingles(text: str, k: int = 5) -> set[bytes]:
    """Character k-grams of the lowercased, space-collapsed text (robust for short texts too)."""
    t = " ".join(text.casefold().split())
    return {t[i:i + k].encode() for i in range(max(1, len(t) - k + 1))}


def similar_pairs(texts: list[str], threshold: float, seed: int, num_perm: int = 128) -> list[tuple[int, int, float]]:
    """Pairs (i, j, jaccard) with i < j whose shingle Jaccard similarity is >= threshold (MinHash LSH)."""
    from datasketch import MinHash, MinHashLSH

    sets = [shingles(t) for t in texts]
    hashes = MinHash.bulk(sets, num_perm=num_perm, seed=seed)
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    for i, h in enumerate(hashes):
        lsh.insert(i, h)
    pairs = []
    for i, h in enumerate(hashes):
        for j in lsh.query(h):
            if j > i:  # LSH gives candidates; the exact Jaccard decides (no false positives)
                sim = len(sets[i] & sets[j]) / len(sets[i] | sets[j])
                if sim >= threshold:
                    pairs.append((i, j, sim))
    return sorted(pairs)


# ---------------------------------------------------------------- model.max_length: auto

# Rounded up to a multiple of 8: tensor cores and bf16 kernels want it, and it costs < 8 tokens.
LENGTH_MULTIPLE = 8
# The memory rule of model.max_length: auto. Activation memory and time grow with the length (and
# attention's with its square); on a CPU a 135M-parameter model at batch 8 x 1024 tokens already
# takes minutes per step, so auto never picks more than this, even where the model's context allows it.
AUTO_CAP = {"cpu": 1024, "cuda": 4096}


def auto_max_length(tokens: list[int], context: int | None, cap: int, quantile: float = 0.99) -> int:
    """The smallest multiple of LENGTH_MULTIPLE covering `quantile` of the token lengths, at most
    min(context, cap) (the model's position embeddings and the memory cap), at least 8."""
    # inverted_cdf: the smallest length at or under which at least `quantile` of the rows are.
    need = float(np.quantile(tokens, quantile, method="inverted_cdf")) if len(tokens) else 8.0
    rounded = int(-(-need // LENGTH_MULTIPLE) * LENGTH_MULTIPLE)
    limit = min(c for c in (context, cap) if c)
    return max(8, min(rounded, limit - limit % LENGTH_MULTIPLE))


# ---------------------------------------------------------------- long chats as windows of whole turns

def exchanges(messages: list[dict]) -> tuple[list[dict], list[list[dict]]]:
    """The system prompt (a list of 0 or 1 message) and the turns cut after each assistant turn:
    each exchange is the user turn(s) and the answer that ends it."""
    system = messages[:1] if messages and messages[0]["role"] == "system" else []
    out: list[list[dict]] = [[]]
    for m in messages[len(system):]:
        out[-1].append(m)
        if m["role"] == "assistant":
            out.append([])
    return system, [e for e in out if e]


def template_length(tokenizer, messages: list[dict]) -> int:
    """Tokens of a conversation under the chat template (what chat.encode measures)."""
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def longest_exchange(tokenizer, messages: list[dict]) -> int:
    """Tokens of the longest single exchange with the system prompt: the least a window needs."""
    system, parts = exchanges(messages)
    return max(template_length(tokenizer, system + e) for e in parts)


def chat_windows(tokenizer, messages: list[dict], max_length: int) -> list[list[dict]]:
    """A long chat as windows of whole exchanges, each within max_length: every window keeps the
    system prompt and ends on an answer; the answers trained on (targets) are disjoint and together
    cover every answer once; earlier exchanges are added in front as context while they fit, their
    answers marked {"weight": 0} (chat.encode puts no loss on them). [] if one exchange does not fit."""
    system, parts = exchanges(messages)
    windows, a = [], 0
    while a < len(parts):
        b = a + 1  # targets: exchanges a..b-1, as many as fit
        if template_length(tokenizer, system + parts[a]) > max_length:
            return []
        while b < len(parts) and template_length(tokenizer, system + sum(parts[a:b + 1], [])) <= max_length:
            b += 1
        targets = sum(parts[a:b], [])
        context: list[dict] = []
        for e in reversed(parts[:a]):  # the nearest earlier exchanges first
            muted = [dict(m, weight=0) if m["role"] == "assistant" else m for m in e]
            if template_length(tokenizer, system + muted + context + targets) > max_length:
                break
            context = muted + context
        windows.append(system + context + targets)
        a = b
    return windows
