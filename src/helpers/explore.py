"""What is in the data, before anything is changed: counts, lengths in tokens, groups, duplicates, noise.

01-explore-data calls these one by one and shows each result (the words and topics come from
`helpers.words`). Nothing here modifies rows: findings are reported, and 02-clean-data decides
what to drop, with the same measures and patterns (`helpers.measures`, `helpers.textrules`), so
what 01 shows is what 02 will act on. A row's texts are read through `schema.row_texts`; what
differs by task comes from the task given.
"""
from __future__ import annotations

import math
import re
from collections import Counter

import numpy as np
import pandas as pd

from . import chat, measures, models, runs, textrules
from .bookkeeping import visible
from .config import Config, apply_overrides, to_yaml
from .measures import token_lengths  # noqa: F401  (one definition: 01 shows what 02 acts on)
from .schema import Loaded, group_key, row_texts


# ---------------------------------------------------------------- counts and problems

def summary(loaded: Loaded, cfg: Config) -> dict:
    """Rows kept, rows set aside by validation (per rule), rows left out on purpose (per reason)."""
    # `filtered`: rows the source's definition or the data.max_examples subsample leaves out by
    # design (not bad rows), counted so that every row of the source is accounted for.
    return {"task": cfg.experiment.task, "source": cfg.data.source, "rows": len(loaded.rows),
            "set_aside": len(loaded.problems), "set_aside_by_rule": dict(Counter(p["rule"] for p in loaded.problems)),
            "filtered": sum(loaded.filtered.values()), "filtered_by_reason": dict(loaded.filtered),
            # how the file was read, when that needs saying (decoded as Windows-1252, ...)
            **({"notes": list(loaded.notes)} if loaded.notes else {})}


def problems_table(problems: list[dict]) -> pd.DataFrame:
    """The rows validation set aside: where, which rule, why (the raw row is in problems.jsonl)."""
    return pd.DataFrame(problems, columns=["source", "rule", "reason"])


def row_warnings(rows: list[dict], task: str) -> pd.DataFrame:
    """Rows that loaded but look wrong (kept: 02 or you decide), one line per finding."""
    found = []
    labels = sorted({r["label"] for r in rows}) if task == "classification" else []
    for label in labels:  # "Positive" and "positive" would be two classes
        twins = [l for l in labels if l != label and l.strip().casefold() == label.strip().casefold()]
        if twins:
            found.append({"source": "(labels)", "check": "label_variant",
                          "detail": f"label {label!r} differs from {twins} only in case or spaces; fix the file "
                                    f"or list the allowed labels in data.labels"})
    for row in rows:
        found += [{"source": row["source"], "check": c, "detail": d} for c, d in _row_findings(row, task)]
    return pd.DataFrame(found, columns=["source", "check", "detail"])


def warning_metrics(warnings_found: pd.DataFrame) -> dict:
    """Row warnings per check, for metrics["explore"]."""
    return {"warnings": {k: int(v) for k, v in warnings_found["check"].value_counts().items()}}


def _row_findings(row: dict, task: str) -> list[tuple[str, str]]:
    """(check, detail) for each thing that looks wrong in one row."""
    turns = row_texts(row)
    texts = [text for _, text in turns]
    out = []
    if any("\ufffd" in t for t in texts):
        out.append(("replacement_char", "holds U+FFFD: characters were lost when the file was decoded; "
                                        "re-export it as UTF-8"))
    if any(textrules.CONTROL_RE.search(t) for t in texts):
        out.append(("control_chars", "holds invisible control characters (02 removes them)"))
    if not any(c.isalpha() for c in measures.analysis_text(row)):
        out.append(("no_letters", "no letters at all: numbers or symbols only"))
    if task == "chat":  # the checks of a conversation's turns
        tiny = [i for i, text in enumerate(texts) if len(text.strip()) <= 1]
        if tiny:
            out.append(("tiny_turn", f"turn {tiny[0]} has one character: a broken conversation "
                                     f"(e.g. a text split into letters)?"))
        roles = [role for role, _ in turns]
        twice = [i for i in range(1, len(roles)) if roles[i] == roles[i - 1]]
        if twice:
            out.append(("same_role_twice", f"turns {twice[0] - 1} and {twice[0]} are both {roles[twice[0]]}; "
                                            f"merge them so turns alternate"))
        if any(roles[i] == "assistant" and roles[i - 1] == "user"
               and texts[i].strip().casefold() == texts[i - 1].strip().casefold()
               for i in range(1, len(turns))):
            out.append(("echo", "the answer repeats the question word for word"))
    return out


# ---------------------------------------------------------------- lengths in tokens

def length_stats(lengths: pd.DataFrame, max_length: int) -> dict:
    """Mean / median / p95 / max tokens and how many rows exceed model.max_length."""
    t = lengths["tokens"]
    over = int((t > max_length).sum())
    return {"tokens_mean": round(float(t.mean()), 1), "tokens_median": float(t.median()),
            "tokens_p95": round(float(t.quantile(0.95)), 1), "tokens_max": int(t.max()), "max_length": max_length,
            "over_max_length": over, "over_max_length_share": round(over / len(t), 4)}


# The fixed length every run had before model.max_length: auto; 01 says what it would have cut.
FIXED_LENGTH = 256


def choose_max_length(lengths: pd.DataFrame, cfg: Config, context: int | None, device: str) -> dict:
    """model.max_length for this data: the number given, or auto's choice (measures.auto_max_length),
    with what it leaves over, and what the fixed 256 would have left over."""
    t = lengths["tokens"]
    cap = measures.AUTO_CAP.get(device, measures.AUTO_CAP["cpu"])
    auto = cfg.model.max_length == "auto"
    chosen = measures.auto_max_length(t.tolist(), context, cap) if auto else int(cfg.model.max_length)
    # Over the length, a chat is split into windows of whole turns by 02 (dropped only when one
    # exchange does not fit); a text is cut at it by the classifier.
    fate = "windowed or dropped by 02" if cfg.experiment.task == "chat" else "cut by the classifier"
    return {"max_length": chosen, "setting": "auto" if auto else "params",
            "tokens_p99": float(np.quantile(t, 0.99, method="inverted_cdf")), "model_context": context,
            "memory_cap": cap, "device": device, "over": int((t > chosen).sum()),
            "over_fixed_256": int((t > FIXED_LENGTH).sum()), "over_means": fate}


def resolve_max_length(run: runs.Run, cfg: Config, lengths: pd.DataFrame) -> tuple[Config, dict]:
    """Decide model.max_length (auto: from the data) and, when auto, write the number into the run's
    config.yaml, so stages 02-05 read an int; the choice is recorded in metrics["explore"]."""
    import torch

    context = models.context_length(cfg)
    choice = choose_max_length(lengths, cfg, context, "cuda" if torch.cuda.is_available() else "cpu")
    if choice["setting"] == "auto":
        cfg = apply_overrides(cfg, {"model.max_length": choice["max_length"]})
        runs.write_text(run.config_file, to_yaml(cfg))  # config.yaml says what ran
    runs.record_metrics(run, "explore", {"max_length_choice": choice})
    return cfg, choice


def length_histogram(lengths: pd.DataFrame, max_length: int, title: str):
    """Histogram of tokens per row with model.max_length marked."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.hist(lengths["tokens"], bins=min(60, max(10, len(lengths) // 5)), color="C0")
    ax.axvline(max_length, color="C3", linestyle="--", label=f"model.max_length = {max_length}")
    ax.set(title=title, xlabel="tokens per example", ylabel="examples")
    ax.legend()
    return fig


def epoch_tokens(lengths: pd.DataFrame, cfg: Config) -> dict:
    """Rows, tokens (and loss tokens) and optimizer steps of one training epoch, estimated from the split
    shares (02 has not run yet), before augmentation (03 adds augment.ratio rows per training row)."""
    s = cfg.data.split
    share = 1.0 - s.validation - s.test
    capped = lengths["tokens"].clip(upper=cfg.model.max_length)
    n_train = round(len(lengths) * share)
    out = {"train_rows_estimate": n_train, "validation_rows_estimate": round(len(lengths) * s.validation),
           "tokens_per_epoch": int(capped.sum() * share),
           "steps_per_epoch": math.ceil(n_train / (cfg.tune.batch_size * cfg.tune.grad_accum))}
    if "loss_tokens" in lengths:
        out["loss_tokens_per_epoch"] = int(lengths["loss_tokens"].sum() * share)
    return out


def time_training(run: runs.Run, cfg: Config, rows: list[dict], lengths: pd.DataFrame,
                  epoch: dict) -> tuple[Config, dict | None]:
    """Time a few real optimizer steps of stage 04's own path (budget.measure) and estimate an epoch
    from them; with tune.time_budget_minutes, turn the budget into steps and write them into the run's
    config.yaml (budget.plan_budget). None when explore.measure_speed is off and there is no budget."""
    t = cfg.tune
    planning = bool(t.time_budget_minutes) and t.max_steps <= 0
    if t.time_budget_minutes and not planning:
        # tune.max_steps wins (a smoke profile's steps under a bundled file's budget): the budget is not
        # used, and config.yaml says so, so that 04 and the report name max_steps as what set the steps.
        print(f"tune.max_steps = {t.max_steps} is set: it wins over tune.time_budget_minutes = "
              f"{t.time_budget_minutes:g}, which this run does not use (config.yaml sets it to null)")
        cfg = apply_overrides(cfg, {"tune.time_budget_minutes": None})
        runs.write_text(run.config_file, to_yaml(cfg))
    if not (cfg.explore.measure_speed or planning):
        return cfg, None
    from . import budget  # the training engine (torch, peft): loaded only when 01 times it

    # A chat over max_length is windowed by 02 (and cut here): time the ones that fit. A text over it
    # is cut by the classifier in training too, so every text is timed as it will train.
    fits = rows if cfg.experiment.task == "classification" else \
        [rows[i] for i in lengths.index[lengths["tokens"] <= cfg.model.max_length]]
    timing = budget.measure(cfg, fits, fits)
    steps, val_rows = epoch["steps_per_epoch"], epoch["validation_rows_estimate"]
    validation = timing["seconds_per_validation_row"] * val_rows
    out = {"timing": timing, "est_seconds_per_step": timing["seconds_per_step"],
           "est_seconds_per_epoch": round(steps * timing["seconds_per_step"], 1),
           "est_seconds_per_validation": round(validation, 1)}
    if planning:
        plan = budget.plan_budget(cfg, timing, epoch["train_rows_estimate"], val_rows)
        cfg = apply_overrides(cfg, budget.plan_overrides(plan))
        runs.write_text(run.config_file, to_yaml(cfg))  # config.yaml says what ran: 04 trains these steps
        out["budget"] = plan
    runs.record_metrics(run, "explore", {"training_time": out})
    return cfg, out


def pick_example(rows: list[dict], lengths: pd.DataFrame, max_length: int) -> dict:
    """The first row that fits in max_length (the one to show), else the first row."""
    fits = lengths.index[lengths["tokens"] <= max_length]
    return rows[int(fits[0])] if len(fits) else rows[0]


def render_example(tokenizer, row: dict, max_length: int, task: str) -> str:
    """A chat as the model trains on it, loss tokens in [[...]]; a text with its token pieces."""
    if task == "classification":
        ids = tokenizer(row["text"], truncation=True, max_length=max_length)["input_ids"]
        return f"label: {row['label']}\n" + " | ".join(tokenizer.convert_ids_to_tokens(ids))
    enc = chat.encode(tokenizer, row["messages"], max_length)
    if enc.n_loss_tokens == 0:
        raise ValueError(f"{row['source']}: no token carries the loss (the assistant answer is cut off at "
                         f"model.max_length = {max_length}, or the chat template hides it); the model would "
                         f"learn nothing from it. Raise model.max_length or shorten the example.")
    return chat.show_mask(tokenizer, enc)


# ---------------------------------------------------------------- composition

def group_sizes(rows: list[dict], key: str) -> pd.DataFrame:
    """Rows per label (or topic) and their share, biggest first."""
    counts = Counter(r.get(key) or "(none)" for r in rows)
    df = pd.DataFrame(counts.most_common(), columns=[key, "rows"])
    df["share"] = (df["rows"] / df["rows"].sum()).round(3)
    return df


def group_metrics(sizes: pd.DataFrame, key: str) -> dict:
    """Rows per label or topic (a group_sizes table), for metrics["explore"]."""
    return {f"rows_per_{key}": {str(g): int(n) for g, n in zip(sizes[key], sizes["rows"])}}


def bar_chart(df: pd.DataFrame, x: str, y: str, title: str):
    """A horizontal bar chart of one column against another."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, max(2.0, 0.35 * len(df) + 1)))
    ax.barh(df[x].astype(str)[::-1], df[y][::-1], color="C0")
    ax.set(title=title, xlabel=y)
    return fig


def chat_roles(rows: list[dict], tokenizer) -> pd.DataFrame:
    """Turns and content tokens per role (chat), without the template's own tokens."""
    stats: dict[str, list[int]] = {}
    for r in rows:
        for role, text in row_texts(r):
            stats.setdefault(role, []).append(len(tokenizer(text, add_special_tokens=False)["input_ids"]))
    return pd.DataFrame([{"role": role, "turns": len(v), "tokens": int(sum(v)),
                          "tokens_per_turn": round(float(np.mean(v)), 1)} for role, v in stats.items()])


def turns_per_chat(rows: list[dict]) -> pd.DataFrame:
    """How many chats have 1, 2, ... user turns (exchanges)."""
    counts = Counter(sum(role == "user" for role, _ in row_texts(r)) for r in rows)
    return pd.DataFrame(sorted(counts.items()), columns=["user_turns", "chats"])


def chat_metrics(roles: pd.DataFrame, turns: pd.DataFrame) -> dict:
    """Turns and tokens per role, and chats per number of user turns, for metrics["explore"]."""
    return {"roles": roles.set_index("role").to_dict("index"),
            "user_turns": {str(t): int(n) for t, n in zip(turns["user_turns"], turns["chats"])}}


def top_groups(rows: list[dict], n: int) -> list[str]:
    """The n biggest labels or topics."""
    key = group_key(rows)
    return [g for g, _ in Counter(r[key] for r in rows if r.get(key)).most_common(n)] if key else []


# ---------------------------------------------------------------- duplicates, outliers, noise

def exact_duplicates(rows: list[dict]) -> int:
    """Rows that repeat an earlier row (same text, case and spacing aside)."""
    counts = Counter(measures.dedup_key(r) for r in rows)
    return sum(n - 1 for n in counts.values())


def near_duplicates(rows: list[dict], threshold: float, seed: int) -> pd.DataFrame:
    """Pairs of rows at least `threshold` similar (MinHash on character 5-grams), most similar first."""
    # Exact copies are counted by exact_duplicates; pairing them again would bury the near ones.
    firsts = {}
    for r in rows:
        firsts.setdefault(measures.dedup_key(r), r)
    rows = list(firsts.values())  # dicts keep insertion order: first copies, in file order
    texts = [measures.analysis_text(r) for r in rows]
    pairs = measures.similar_pairs(texts, threshold, seed)
    df = pd.DataFrame([{"similarity": round(s, 3), "source_a": rows[i]["source"], "source_b": rows[j]["source"],
                        "text_a": texts[i][:120], "text_b": texts[j][:120]} for i, j, s in pairs],
                      columns=["similarity", "source_a", "source_b", "text_a", "text_b"])
    return df.sort_values("similarity", ascending=False, kind="stable").reset_index(drop=True)


def duplicate_metrics(rows: list[dict], pairs: pd.DataFrame, outliers: pd.DataFrame) -> dict:
    """Exact duplicates, near-duplicate pairs and length outliers, for metrics["explore"]."""
    return {"exact_duplicates": exact_duplicates(rows), "near_duplicate_pairs": len(pairs),
            "length_outliers": len(outliers)}


def length_outliers(rows: list[dict], lengths: pd.DataFrame, k: float) -> pd.DataFrame:
    """Rows outside Tukey's fences on token length (Q1 - k*IQR, Q3 + k*IQR), longest first."""
    lo, hi = measures.iqr_fences(lengths["tokens"].tolist(), k)
    df = pd.DataFrame({"source": [r["source"] for r in rows], "tokens": lengths["tokens"],
                       "text": [measures.analysis_text(r)[:120] for r in rows]})
    out = df[(df["tokens"] < lo) | (df["tokens"] > hi)].sort_values("tokens", ascending=False)
    return out.assign(fences=f"[{lo:.0f}, {hi:.0f}]").reset_index(drop=True)


NON_ASCII_RE = re.compile(r"[^\x00-\x7f]")


def _mojibake_re() -> re.Pattern:
    """ftfy's pattern of character sequences that are almost always mojibake (what ftfy.badness counts)."""
    from ftfy.badness import BADNESS_RE

    return BADNESS_RE


NOISE = {  # indicator -> pattern; each says where cleaning or care is needed
    "url": lambda: textrules.URL_RE,
    "html_tag": lambda: textrules.HTML_TAG_RE,
    "html_entity": lambda: textrules.HTML_ENTITY_RE,
    "email": lambda: textrules.EMAIL_RE,
    "phone": lambda: textrules.PHONE_RE,
    "@handle": lambda: textrules.USER_RE,
    "non_ascii": lambda: NON_ASCII_RE,
    "control_chars": lambda: textrules.CONTROL_RE,
    "mojibake": _mojibake_re,
}


def noise_indicators(rows: list[dict], examples: int) -> pd.DataFrame:
    """Share of rows with URLs, HTML, emails, phones, handles, non-ASCII, control chars, mojibake."""
    texts = [measures.analysis_text(r) for r in rows]
    lines = []
    for name, pattern in NOISE.items():
        rx = pattern()
        hits = [(t, m) for t in texts if (m := rx.search(t))]
        # Each example is cut around the finding, which is often at the end of a long text.
        shown = [visible(t[max(0, m.start() - 30):m.end() + 30]) for t, m in hits[:examples]]
        lines.append({"indicator": name, "rows": len(hits), "share": round(len(hits) / max(len(texts), 1), 4),
                      "examples": " | ".join(shown)})
    return pd.DataFrame(lines)


def noise_metrics(noise: pd.DataFrame) -> dict:
    """Share of rows per noise indicator (a noise_indicators table), for metrics["explore"]."""
    return {"noise": {i: float(s) for i, s in zip(noise["indicator"], noise["share"])}}


def print_pairs(df: pd.DataFrame, n: int) -> str:
    """The first n near-duplicate pairs as readable text."""
    return "\n\n".join(f"{r.similarity:.2f}  {r.source_a}: {r.text_a!r}\n      {r.source_b}: {r.text_b!r}"
                       for r in df.head(n).itertuples())

