"""Stage 05, chat: perplexity on the assistant's tokens (base vs tuned, overall and per slice,
with the token count behind every figure), greedy answers scored by ROUGE-L, BLEU and embedding
similarity, latency, and robustness to noisy prompts.

Token NLLs and answers come from the engine (helpers.inference); this module turns them into
the tables, figures and headline figures of notebook 05 and the report.
"""
from __future__ import annotations

import random
import time
from typing import Any

import numpy as np
import pandas as pd

from . import chat, inference, metrics, plots, textops
from .config import Config
from .evaluation import ci_text

plt = plots.plt


def scoring_precision(lms: dict[str, Any], tokenizer, rows: list[dict], cfg: Config
                      ) -> tuple[bool, pd.DataFrame | None]:
    """Whether to score in bf16 autocast as evaluate.precision says, and the check behind "auto" (else None)."""
    if cfg.evaluate.precision != "auto":
        return cfg.evaluate.precision == "bf16", None
    check = check_bf16(lms, tokenizer, rows, cfg)
    return bf16_ok(check), check


def check_bf16(lms: dict[str, Any], tokenizer, rows: list[dict], cfg: Config, tolerance: float = 0.005) -> pd.DataFrame:
    """Per model: perplexity and time in fp32 and in bf16 autocast on a few test rows, and whether bf16 passes."""
    sample = rows[: cfg.evaluate.batch_size]  # one batch: enough to see the rounding, cheap
    out = []
    for name, model in lms.items():
        for bf16 in (True, False):  # warm up both kernel paths so neither timing pays the first call
            inference.token_nlls(model, tokenizer, sample[:1], cfg.model.max_length, 1, bf16=bf16)
        res = {}
        for bf16 in (False, True):
            start = time.perf_counter()
            ppl = metrics.perplexity(inference.token_nlls(model, tokenizer, sample, cfg.model.max_length,
                                                cfg.evaluate.batch_size, bf16=bf16))["perplexity"]
            res[bf16] = (ppl, time.perf_counter() - start)
        rec = {"model": name, "examples": len(sample), "fp32_perplexity": res[False][0],
               "bf16_perplexity": res[True][0], "relative_diff": abs(res[True][0] / res[False][0] - 1),
               "fp32_seconds": res[False][1], "bf16_seconds": res[True][1]}
        out.append({**rec, "bf16_passes": bf16_passes(rec, tolerance)})
    return pd.DataFrame(out).set_index("model")


def bf16_passes(check: dict[str, Any], tolerance: float) -> bool:
    """bf16 passes for one model when its perplexity moves less than tolerance (relative) and it is faster."""
    return bool(check["relative_diff"] < tolerance and check["bf16_seconds"] < check["fp32_seconds"])


def bf16_ok(check: pd.DataFrame) -> bool:
    """bf16 for all models only if it passes for each: base and tuned must share one precision."""
    return bool(check["bf16_passes"].all())


def score_models(lms: dict[str, Any], tokenizer, rows: list[dict], cfg: Config, bf16: bool = False
                 ) -> dict[str, list[np.ndarray]]:
    """token_nlls of every model on the rows, all in one precision."""
    return {name: inference.token_nlls(m, tokenizer, rows, cfg.model.max_length, cfg.evaluate.batch_size, bf16=bf16)
            for name, m in lms.items()}


def slices(row: dict) -> dict[str, str]:
    """The groups a chat row is reported in: topic, number of user turns, augmentation op."""
    turns = sum(m["role"] == "user" for m in row["messages"])
    out = {"topic": row.get("topic") or "(none)", "turns": f"{turns} turn" + ("s" if turns > 1 else "")}
    if "augment_op" in row:
        out["augmentation"] = row["augment_op"] or "original"
    return out


def _pooled_ppl(sums: np.ndarray, counts: np.ndarray, idx: np.ndarray) -> float:
    """Perplexity of the examples at idx, pooled over their tokens."""
    n = counts[idx].sum()
    return float(np.exp(sums[idx].sum() / n)) if n else float("nan")


def nll_rows(rows: list[dict], nlls: dict[str, list[np.ndarray]]) -> list[dict]:
    """One record per test row for data/nlls.jsonl: answer tokens and each model's summed NLL (nats),
    full precision, so a sweep can pair runs on the same rows (exp(sum nll / sum tokens) is perplexity)."""
    return [{"id": r["id"], "tokens": int(len(nlls["tuned"][i])),
             **{f"{name}_nll": float(v[i].sum()) for name, v in nlls.items()}} for i, r in enumerate(rows)]


def perplexity_table(rows: list[dict], nlls: dict[str, list[np.ndarray]], resamples: int, seed: int) -> pd.DataFrame:
    """Base vs tuned perplexity overall and per slice, with tokens, 95% bootstrap intervals
    and the paired change (same resampled examples for both models)."""
    sums = {k: np.array([v.sum() for v in vs]) for k, vs in nlls.items()}
    counts = np.array([len(v) for v in nlls["tuned"]])
    groups: list[tuple[str, str, np.ndarray]] = [("overall", "all", np.arange(len(rows)))]
    keys = [slices(r) for r in rows]
    for name in keys[0] if keys else []:
        for value in sorted({k[name] for k in keys}):
            groups.append((name, value, np.array([i for i, k in enumerate(keys) if k[name] == value])))
    out = []
    for slice_name, value, idx in groups:
        rec: dict[str, Any] = {"slice": slice_name, "group": value, "examples": len(idx), "tokens": int(counts[idx].sum())}
        for model in ("base", "tuned"):
            rec[f"{model}_ppl"] = _pooled_ppl(sums[model], counts, idx)
            lo, hi = metrics.bootstrap_ci(lambda s: _pooled_ppl(sums[model], counts, idx[s]), len(idx), resamples, seed)
            rec[f"{model}_ci"] = ci_text(lo, hi)
            rec[f"{model}_lo"], rec[f"{model}_hi"] = lo, hi

        def change(s: np.ndarray) -> float:
            """Tuned vs base perplexity change (%) on the examples idx[s]."""
            return 100 * (_pooled_ppl(sums["tuned"], counts, idx[s]) / _pooled_ppl(sums["base"], counts, idx[s]) - 1)

        rec["change_pct"] = change(np.arange(len(idx)))
        lo, hi = metrics.bootstrap_ci(change, len(idx), resamples, seed)
        rec["change_ci"] = ci_text(lo, hi, 1)
        rec["change_lo"], rec["change_hi"] = lo, hi
        out.append(rec)
    return pd.DataFrame(out)


def perplexity_display(table: pd.DataFrame) -> pd.DataFrame:
    """The perplexity table as a reader wants it: rounded, intervals as text, no raw bounds."""
    cols = ["slice", "group", "examples", "tokens", "base_ppl", "base_ci", "tuned_ppl", "tuned_ci", "change_pct", "change_ci"]
    return table[cols].round({"base_ppl": 2, "tuned_ppl": 2, "change_pct": 1}).rename(columns={
        "base_ppl": "base perplexity", "base_ci": "base 95% CI", "tuned_ppl": "tuned perplexity",
        "tuned_ci": "tuned 95% CI", "change_pct": "change %", "change_ci": "change 95% CI"})


def perplexity_figure(table: pd.DataFrame) -> plt.Figure:
    """Base vs tuned perplexity per slice group, with bootstrap intervals as error bars."""
    n_slices = table["slice"].nunique()
    fig, axes = plt.subplots(1, n_slices, figsize=(plots.PAGE_WIDTH, 3.2), squeeze=False,
                             gridspec_kw={"width_ratios": [max(1, (table["slice"] == s).sum())
                                                           for s in table["slice"].unique()]})
    for ax, (name, part) in zip(axes[0], table.groupby("slice", sort=False)):
        x = np.arange(len(part))
        for k, (model, color) in enumerate((("base", "C7"), ("tuned", "C0"))):
            err = np.vstack([part[f"{model}_ppl"] - part[f"{model}_lo"], part[f"{model}_hi"] - part[f"{model}_ppl"]])
            ax.bar(x + (k - 0.5) * 0.4, part[f"{model}_ppl"], 0.4, yerr=np.clip(err, 0, None), color=color,
                   label=model, capsize=2)
        ax.set_xticks(x, [f"{g}\n({t} tok)" for g, t in zip(part["group"], part["tokens"])], fontsize=7,
                      rotation=30 if len(part) > 3 else 0, ha="right" if len(part) > 3 else "center")
        ax.set_title(name, fontsize=10)
    axes[0][0].set_ylabel("perplexity (lower is better)")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def example_losses(rows: list[dict], nlls: dict[str, list[np.ndarray]], k: int) -> pd.DataFrame:
    """The k test examples the tuned model finds easiest and hardest (mean NLL per token)."""
    recs = []
    for r, base, tuned in zip(rows, nlls["base"], nlls["tuned"]):
        if len(tuned):
            recs.append({"id": r["id"], "topic": r.get("topic", ""), "prompt": chat.last_turn(r["messages"], "user"),
                         "reference": chat.last_turn(r["messages"], "assistant"), "tokens": len(tuned),
                         "tuned_loss": float(tuned.mean()), "base_loss": float(base.mean())})
    cols = ["which", "id", "topic", "prompt", "reference", "tokens", "tuned_loss", "base_loss"]
    if not recs:  # every answer cut off by model.max_length: nothing was scored
        return pd.DataFrame(columns=cols)
    df = pd.DataFrame(recs).sort_values("tuned_loss")
    k = min(k, len(df) // 2)  # a small test split: never list one example as both best and worst
    both = pd.concat([df.head(k).assign(which="best"), df.tail(k).iloc[::-1].assign(which="worst")])
    return both[cols].round(3)


def latency_table(answers: dict[str, list[dict]], batch_size: int) -> pd.DataFrame:
    """Per model: answers, ms per answer, generated tokens and tokens per second."""
    recs = []
    for name, ans in answers.items():
        seconds = sum(a["seconds"] for a in ans)
        tokens = sum(a["new_tokens"] for a in ans)
        recs.append({"model": name, "answers": len(ans), "batch_size": batch_size,
                     "ms_per_answer": 1000 * seconds / max(len(ans), 1), "generated_tokens": tokens,
                     "tokens_per_s": tokens / seconds if seconds else float("nan")})
    return pd.DataFrame(recs).round(1)


def answer_scores(rows: list[dict], answers: dict[str, list[dict]]) -> pd.DataFrame:
    """Per example and model: ROUGE-L, sentence BLEU and embedding similarity to the reference."""
    refs = [chat.last_turn(r["messages"], "assistant") for r in rows]
    ref_vecs = metrics.embed(refs)
    recs = {"id": [r["id"] for r in rows]}
    for name, ans in answers.items():
        preds = [a["answer"] for a in ans]
        recs[f"rougeL_{name}"] = metrics.rouge_l(preds, refs)
        recs[f"bleu_{name}"] = metrics.sentence_bleu(preds, refs)
        recs[f"similarity_{name}"] = metrics.cosine_pairs(metrics.embed(preds), ref_vecs)
    return pd.DataFrame(recs)


def quality_table(rows: list[dict], answers: dict[str, list[dict]]) -> pd.DataFrame:
    """Corpus-level ROUGE-L, BLEU and similarity per model, through our evaluate modules."""
    import evaluate

    from . import metric_modules

    refs = [chat.last_turn(r["messages"], "assistant") for r in rows]
    suite = evaluate.combine([metric_modules.RougeL(), metric_modules.Bleu(), metric_modules.SemanticSimilarity()])
    recs = []
    for name, ans in answers.items():
        res = suite.compute(predictions=[a["answer"] for a in ans], references=refs)
        recs.append({"model": name, "answers": len(ans), **res})
    return pd.DataFrame(recs).round(3)


def side_by_side(rows: list[dict], answers: dict[str, list[dict]]) -> pd.DataFrame:
    """Prompt, reference, base answer and tuned answer in one row per test prompt."""
    return pd.DataFrame({"prompt": [chat.last_turn(r["messages"], "user") for r in rows], "reference": [chat.last_turn(r["messages"], "assistant") for r in rows],
                         **{name: [a["answer"] for a in ans] for name, ans in answers.items()}})


def generation_rows(rows: list[dict], answers: dict[str, list[dict]], scores: pd.DataFrame) -> list[dict]:
    """One record per prompt for data/generations.jsonl: texts, tokens, times and scores."""
    out = []
    for i, r in enumerate(rows):
        rec = {"id": r["id"], "prompt": chat.last_turn(r["messages"], "user"), "reference": chat.last_turn(r["messages"], "assistant")}
        for name, ans in answers.items():
            rec[name] = ans[i]["answer"]
            rec[f"{name}_tokens"] = ans[i]["new_tokens"]
            rec[f"{name}_ms"] = round(1000 * ans[i]["seconds"], 1)
        rec.update({k: float(v) for k, v in scores.iloc[i].items() if k != "id"})
        out.append(rec)
    return out


def answer_metrics(quality: pd.DataFrame, latency: pd.DataFrame) -> dict[str, Any]:
    """Answer quality and latency per model, flat, for metrics.json['evaluate']."""
    q = {"answers": int(quality["answers"].iloc[0])}
    for _, row in quality.iterrows():
        q.update({f"{k}_{row['model']}": float(row[k]) for k in ("rougeL", "bleu", "semantic_similarity")})
    lat = {"batch_size": int(latency["batch_size"].iloc[0])}
    for _, row in latency.iterrows():
        lat.update({f"{k}_{row['model']}": float(row[k]) for k in ("ms_per_answer", "tokens_per_s")})
    return {"quality": q, "latency": lat}


def perturb_rows(rows: list[dict], op: str, seed: int, share: float) -> list[dict]:
    """The rows with every user message noised by helpers.textops' op of that name (typo, case,
    punct, synonym, swap, delete); answers and system prompts stay as they are."""
    noise = getattr(textops, op)  # evaluate.robustness_ops (a Literal in the config) names only these
    rng = random.Random(f"{seed}-robustness-{op}")  # its own stream: adding an op leaves the others unchanged
    return [{**r, "messages": [{**m, "content": noise(m["content"], rng, share)} if m["role"] == "user" else m
                               for m in r["messages"]]} for r in rows]


def robustness_table(lms: dict[str, Any], tokenizer, rows: list[dict], cfg: Config,
                     clean: dict[str, list[np.ndarray]], bf16: bool = False) -> pd.DataFrame:
    """Perplexity of the same answers after noisy prompts, per op and model, vs the clean prompts."""
    recs = []
    for op in cfg.evaluate.robustness_ops:
        noisy_rows = perturb_rows(rows, op, cfg.experiment.seed, cfg.augment.word_share)
        noisy = score_models(lms, tokenizer, noisy_rows, cfg, bf16)
        for name in lms:
            before, after = metrics.perplexity(clean[name]), metrics.perplexity(noisy[name])
            recs.append({"perturbation": op, "model": name, "tokens": after["tokens"],
                         "clean_ppl": before["perplexity"], "perturbed_ppl": after["perplexity"],
                         "change_pct": 100 * (after["perplexity"] / before["perplexity"] - 1)})
    return pd.DataFrame(recs).round(2)


def robustness_metrics(table: pd.DataFrame) -> dict[str, Any]:
    """Perplexity change (%) per perturbation and model, for metrics.json['evaluate']."""
    return {"robustness": {op: {f"{r['model']}_change_pct": float(r["change_pct"]) for _, r in part.iterrows()}
                           for op, part in table.groupby("perturbation", sort=False)}}


def perturbation_examples(rows: list[dict], cfg: Config) -> pd.DataFrame:
    """The first test prompt under each op, so a reader sees what the noise looks like."""
    ops, seed, share = cfg.evaluate.robustness_ops, cfg.experiment.seed, cfg.augment.word_share
    return pd.DataFrame([{"perturbation": "none", "prompt": chat.last_turn(rows[0]["messages"], "user")}] +
                        [{"perturbation": op, "prompt": chat.last_turn(perturb_rows(rows[:1], op, seed, share)[0]["messages"], "user")}
                         for op in ops])


def headline(ppl: pd.DataFrame, bf16: bool, check: pd.DataFrame | None = None) -> dict[str, Any]:
    """The chat figures metrics.json keeps at the top of 'evaluate' (the report and index read them)."""
    o = {k: v.item() if hasattr(v, "item") else v for k, v in ppl.iloc[0].items()}  # plain Python numbers
    out = {"task": "chat", "examples": o["examples"], "tokens": o["tokens"],
           "perplexity_base": o["base_ppl"], "perplexity_base_ci": [o["base_lo"], o["base_hi"]],
           "perplexity_tuned": o["tuned_ppl"], "perplexity_tuned_ci": [o["tuned_lo"], o["tuned_hi"]],
           "perplexity_change_pct": o["change_pct"], "perplexity_change_ci": [o["change_lo"], o["change_hi"]],
           "bf16": bf16}
    if check is not None:  # evaluate.precision "auto": what the choice rested on
        out["bf16_relative_diff"] = {k: float(v) for k, v in check["relative_diff"].items()}
    return out
