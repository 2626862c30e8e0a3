"""New training rows from the training split: EDA word ops, typos, case and punctuation, personas,
multi-turn chats, optional LM paraphrases.

Only training rows are augmented (validation and test stay as collected, so scores measure
real data), and in chats only user turns change: the assistant answers are what the model
learns to produce, so they are never altered. Every draw comes from one `random.Random(seed)`:
the same seed gives the same rows.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from random import Random
from typing import get_args

import pandas as pd

from . import chat
from .config import Config, ConfigError
from .sections import AugmentOp
from .schema import INPUT_ROLES, row_texts, with_text
from .textops import TEXT_OPS, placeholders

OPS = list(get_args(AugmentOp))  # one list of names: the config rejects any other op up front
CHAT_ONLY = {"persona", "multiturn", "paraphrase"}  # they could change a text's label
TRIES = 5  # rows tried per new row before an op is counted as skipped


# ---------------------------------------------------------------- rows

@dataclass
class Augmented:
    """New rows and, per op, how many attempts changed nothing (or grew too long) and were skipped."""

    rows: list[dict] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)


def check_ops(cfg: Config) -> list[str]:
    """The configured ops, validated for the task."""
    ops = cfg.augment.ops  # names already checked by the config (AugmentParams.ops)
    if cfg.experiment.task == "classification" and CHAT_ONLY & set(ops):
        raise ConfigError(f"augment.ops: {sorted(CHAT_ONLY & set(ops))} are for chat only (a persona or a "
                          f"paraphrase could change a text's label); remove them for classification")
    if cfg.augment.ratio > 0 and cfg.augment.enabled and not ops:
        raise ConfigError("augment.ops is empty but augment.ratio > 0; list some ops or set augment.enabled: false")
    return list(ops)


def augment_row(row: dict, op: str, rng: Random, cfg: Config, partner: dict | None = None,
                paraphraser=None) -> dict | None:
    """One new row made from `row` by `op` (user turns only, for chats), or None if nothing changed."""
    new = {k: v for k, v in row.items() if k not in ("augment_op", "augment_of")}
    if op == "multiturn":  # chat only (check_ops): two training chats as one longer conversation
        if partner is None or partner["id"] == row["id"]:
            return None
        return {**new, "messages": [dict(m) for m in row["messages"]]
                + [dict(m) for m in partner["messages"] if m["role"] != "system"]}
    texts = row_texts(row)
    if cfg.experiment.task == "classification":
        i = 0  # the one text
    else:
        users = [k for k, (role, _) in enumerate(texts) if role == "user"]
        if not users:
            return None
        i = users[0] if op == "persona" else rng.choice(users)
        if "```" in texts[i][1]:  # code must stay runnable: leave such turns alone
            return None
    before = texts[i][1]
    after = paraphraser(before) if op == "paraphrase" else TEXT_OPS[op](before, rng, cfg.augment.word_share)
    if not after or after == before or not after.strip() or placeholders(after) != placeholders(before):
        return None
    if op == "paraphrase" and word_overlap(before, after) < 0.2:
        return None  # a small model sometimes answers, or drifts into another language: not a paraphrase
    return with_text(new, i, after)


def word_overlap(a: str, b: str) -> float:
    """Share of b's words (lowercased) that also occur in a."""
    wa, wb = set(re.findall(r"[a-z]+", a.lower())), set(re.findall(r"[a-z]+", b.lower()))
    return len(wa & wb) / len(wb) if wb else 0.0


def augment_rows(rows: list[dict], cfg: Config, tokenizer=None, paraphraser=None) -> Augmented:
    """round(ratio * len(rows)) new rows, ops taken in turn, source rows in a seeded order."""
    ops = check_ops(cfg)
    out = Augmented()
    if not cfg.augment.enabled or not rows or not ops:
        return out
    if "paraphrase" in ops and paraphraser is None:
        raise ConfigError("augment.ops has 'paraphrase': pass a paraphraser (augment.paraphraser(cfg))")
    rng = Random(cfg.experiment.seed)
    order = list(range(len(rows)))
    rng.shuffle(order)
    taken = {r["id"] for r in rows}
    cursor = 0
    for k in range(round(cfg.augment.ratio * len(rows))):
        op = ops[k % len(ops)]
        for _ in range(TRIES):  # the next row in the order, until one changes
            row = rows[order[cursor % len(rows)]]
            cursor += 1
            partner = rows[rng.randrange(len(rows))] if op == "multiturn" else None
            new = augment_row(row, op, rng, cfg, partner, paraphraser)
            if new is not None and tokenizer is not None and cfg.experiment.task == "chat" and \
                    chat.encode(tokenizer, new["messages"], cfg.model.max_length).truncated:
                new = None  # 02 dropped over-long chats; augmentation must not bring them back
            if new is not None:
                n = 1
                while f"{row['id']}~{op}{n}" in taken:
                    n += 1
                new.update(id=f"{row['id']}~{op}{n}", augment_op=op, augment_of=row["id"])
                taken.add(new["id"])
                out.rows.append(new)
                break
        else:
            out.skipped[op] += 1
    return out


def combined(train: list[dict], new: list[dict]) -> list[dict]:
    """train.augmented.jsonl: the training rows tagged augment_op "" followed by the new rows."""
    return [{**r, "augment_op": "", "augment_of": r.get("augment_of", "")} for r in train] + new


# ---------------------------------------------------------------- paraphrase (optional, slow)

def paraphraser(cfg: Config):
    """A function text -> paraphrase by the base chat model (seeded sampling); slow on CPU."""
    import torch

    from . import models

    tok, model = models.load_tokenizer(cfg), models.load_causal_lm(cfg)
    model.eval()
    calls = Counter()

    def rewrite(text: str) -> str:
        msgs = [{"role": "system", "content": "Rewrite the user's message in other words with the same meaning. "
                                              "Reply with the rewritten message only."},
                {"role": "user", "content": text}]
        ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        torch.manual_seed(cfg.experiment.seed + calls["n"])  # each call its own seed: reproducible
        calls["n"] += 1
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=cfg.augment.paraphrase_max_new_tokens, do_sample=True,
                                 top_p=0.9, temperature=0.7, pad_token_id=tok.pad_token_id)
        return tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip().strip('"')

    return rewrite


# ---------------------------------------------------------------- reporting

def changed_text(new: dict, original: dict) -> tuple[str, str]:
    """(before, after): the text or user turn that changed (for multiturn, the turns added)."""
    old, cur = row_texts(original), row_texts(new)
    if len(cur) > len(old):
        return "", " / ".join(f"{role}: {text}" for role, text in cur[len(old):])
    i = next((k for k, (a, b) in enumerate(zip(old, cur)) if a[1] != b[1]), 0)
    return old[i][1], cur[i][1]


def pairs_table(new: list[dict], train: list[dict], per_op: int) -> pd.DataFrame:
    """The first `per_op` before/after pairs of each op."""
    by_id = {r["id"]: r for r in train}
    shown: Counter = Counter()
    lines = []
    for r in new:
        if shown[r["augment_op"]] < per_op:
            shown[r["augment_op"]] += 1
            before, after = changed_text(r, by_id[r["augment_of"]])
            lines.append({"op": r["augment_op"], "source": r["augment_of"], "before": before, "after": after})
    return pd.DataFrame(lines, columns=["op", "source", "before", "after"]).sort_values("op", kind="stable")


def demo(rows: list[dict], cfg: Config, min_words: int = 8) -> pd.DataFrame:
    """Each configured text op applied once to one text: the first with at least min_words words."""
    texts = [next(text for role, text in row_texts(r) if role in INPUT_ROLES) for r in rows]
    text = next((t for t in texts if len(t.split()) >= min_words), texts[0])  # short texts show little
    rng = Random(cfg.experiment.seed)
    lines = [{"op": "(original)", "text": text}]
    for op in check_ops(cfg):
        if op in TEXT_OPS:
            out = TEXT_OPS[op](text, rng, cfg.augment.word_share)
            lines.append({"op": op, "text": out if out != text else "(unchanged: nothing this op can change)"})
    return pd.DataFrame(lines)


def verify(new: list[dict], train: list[dict]) -> None:
    """Raise if a new row does not come from a training row, reuses an id, or changed an assistant turn."""
    by_id = {r["id"]: r for r in train}
    ids = Counter(r["id"] for r in train + new)
    for r in new:
        if r["augment_of"] not in by_id:
            raise AssertionError(f"{r['id']}: augment_of {r['augment_of']!r} is not a training row")
        if ids[r["id"]] > 1:
            raise AssertionError(f"{r['id']}: id used twice")
        old = [t for t in row_texts(by_id[r["augment_of"]]) if t[0] == "assistant"]  # none in a labelled row
        if [t for t in row_texts(r) if t[0] == "assistant"][:len(old)] != old:
            raise AssertionError(f"{r['id']}: an assistant turn changed; only user turns may be augmented")
        if r.get("label") != by_id[r["augment_of"]].get("label"):  # chats have none
            raise AssertionError(f"{r['id']}: the label changed")


def summary(train: list[dict], result: Augmented, cfg: Config) -> dict:
    """The numbers 03 records under metrics["augment"]."""
    by_op = Counter(r["augment_op"] for r in result.rows)
    return {"train_rows": len(train), "new_rows": len(result.rows), "total_rows": len(train) + len(result.rows),
            "ratio_asked": cfg.augment.ratio, "ratio_made": round(len(result.rows) / max(len(train), 1), 4),
            "by_op": {op: by_op.get(op, 0) for op in cfg.augment.ops}, "skipped": dict(result.skipped)}
