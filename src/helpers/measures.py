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
