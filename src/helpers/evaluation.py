"""Stage 05: score the tuned model on the test split against a reference point.

Chat: perplexity on the assistant's tokens, base vs tuned, overall and per slice, with the
token count behind every figure; greedy answers scored by ROUGE-L, BLEU and embedding
similarity; latency; robustness to noisy prompts. Classification: the tuned classifier
against a TF-IDF + logistic regression baseline trained on the same rows, in every table
and figure. Headline figures carry seeded bootstrap 95% intervals.
"""
from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import chat, data, metrics, plots
from .config import Config
from .runs import Run

plt = plots.plt


# ---------------------------------------------------------------- shared

def test_rows(run: Run, cfg: Config) -> list[dict]:
    """The test split, or a seeded subsample of evaluate.max_examples rows of it."""
    rows = data.read_jsonl(run.data / "test.jsonl")
    n = cfg.evaluate.max_examples
    if n and len(rows) > n:
        keep = sorted(random.Random(cfg.experiment.seed).sample(range(len(rows)), n))
        rows = [rows[i] for i in keep]
    return rows


def train_rows(run: Run) -> tuple[list[dict], str]:
    """The rows the model was tuned on (Run.train_file decides which file) and that file's name."""

    path = run.train_file
    return data.read_jsonl(path), path.name


def load_tuned(run: Run, cfg: Config) -> tuple[Any, Any]:
    """The tuned model in model/final and its tokenizer (pad token set), in eval mode."""
    folder = run.model / "final"
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} holds no model: run 04-tune-model first (it saves the merged model there)")
    return load_model(folder, cfg)


def load_model(folder: Path, cfg: Config) -> tuple[Any, Any]:
    """A model saved by tune.save_model (the task's kind) and its tokenizer (pad token set), in eval mode."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from . import models

    auto = AutoModelForCausalLM if cfg.experiment.task == "chat" else AutoModelForSequenceClassification
    model = auto.from_pretrained(folder, dtype=models.torch_dtype(cfg), use_safetensors=True,
                                 trust_remote_code=False)
    tok = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return ready(model), tok


def ready(model: Any) -> Any:
    """The model in eval mode, on the GPU when there is one (scoring needs no gradients)."""
    import torch

    return model.eval().to("cuda") if torch.cuda.is_available() else model.eval()


def _autocast(bf16: bool) -> Any:
    """bf16 autocast on the model's device when asked, else a no-op context."""
    import contextlib

    import torch

    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda" if torch.cuda.is_available() else "cpu", dtype=torch.bfloat16)


def _ci_text(lo: float, hi: float, digits: int = 2) -> str:
    """An interval as 'lo – hi' for tables."""
    return f"{lo:.{digits}f} – {hi:.{digits}f}"


# ---------------------------------------------------------------- chat: perplexity

def token_nlls(model, tokenizer, rows: list[dict], max_length: int, batch_size: int,
               bf16: bool = False) -> list[np.ndarray]:
    """Per-token NLL (nats) of each conversation's assistant tokens, in row order."""
    import torch

    encoded = [chat.encode(tokenizer, r["messages"], max_length) for r in rows]
    order = sorted(range(len(rows)), key=lambda i: len(encoded[i].input_ids))  # less padding per batch
    out: list[np.ndarray] = [np.zeros(0)] * len(rows)
    pad = tokenizer.pad_token_id
    model.eval()
    with torch.inference_mode(), _autocast(bf16):
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            width = max(len(encoded[i].input_ids) for i in idx)
            # Right padding: a causal model's real tokens never attend to pads that come after them.
            ids = torch.full((len(idx), width), pad, dtype=torch.long)  # (B, T)
            labels = torch.full((len(idx), width), chat.IGNORE, dtype=torch.long)  # (B, T)
            mask = torch.zeros((len(idx), width), dtype=torch.long)  # (B, T)
            for row, i in enumerate(idx):
                n = len(encoded[i].input_ids)
                ids[row, :n] = torch.tensor(encoded[i].input_ids)
                labels[row, :n] = torch.tensor(encoded[i].labels)
                mask[row, :n] = 1
            dev = model.device
            for i, nll in zip(idx, _labelled_nlls(model, ids.to(dev), mask.to(dev), labels.to(dev))):
                out[i] = nll.double().cpu().numpy()
    return out


def scoring_precision(lms: dict[str, Any], tokenizer, rows: list[dict], cfg: Config
                      ) -> tuple[bool, pd.DataFrame | None]:
    """Whether to score in bf16 autocast as evaluate.precision says, and the check behind "auto" (else None)."""
    if cfg.evaluate.precision != "auto":
        return cfg.evaluate.precision == "bf16", None
    check = check_bf16(lms, tokenizer, rows, cfg)
    return bf16_ok(check), check


def _labelled_nlls(model, ids, mask, labels) -> list:
    """Per-row NLLs of the labelled tokens, scoring the vocabulary only where a label follows.

    The output layer (49k scores per position for SmolLM2) is most of a forward pass's memory;
    prompts carry no label, so the head runs on the answer positions alone (same numbers).
    """
    import torch.nn.functional as F

    head, decoder = model.get_output_embeddings(), model.get_decoder()
    if head is None or decoder is None or getattr(model.config, "final_logit_softcapping", None):
        logits = model(input_ids=ids, attention_mask=mask).logits  # (B, T, V): the model's own head
        return metrics.token_nlls(logits, labels, chat.IGNORE)
    hidden = decoder(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, T, H)
    targets = labels[:, 1:]  # (B, T-1): position t predicts token t+1
    scored = targets != chat.IGNORE
    nll = F.cross_entropy(head(hidden[:, :-1][scored]).float(), targets[scored], reduction="none")  # (N,)
    return list(nll.split(scored.sum(dim=1).tolist()))


def check_bf16(lms: dict[str, Any], tokenizer, rows: list[dict], cfg: Config, tolerance: float = 0.005) -> pd.DataFrame:
    """Per model: perplexity and time in fp32 and in bf16 autocast on a few test rows, and whether bf16 passes."""
    sample = rows[: cfg.evaluate.batch_size]  # one batch: enough to see the rounding, cheap
    out = []
    for name, model in lms.items():
        for bf16 in (True, False):  # warm up both kernel paths so neither timing pays the first call
            token_nlls(model, tokenizer, sample[:1], cfg.model.max_length, 1, bf16=bf16)
        res = {}
        for bf16 in (False, True):
            start = time.perf_counter()
            ppl = metrics.perplexity(token_nlls(model, tokenizer, sample, cfg.model.max_length,
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
    return {name: token_nlls(m, tokenizer, rows, cfg.model.max_length, cfg.evaluate.batch_size, bf16=bf16)
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
            rec[f"{model}_ci"] = _ci_text(lo, hi)
            rec[f"{model}_lo"], rec[f"{model}_hi"] = lo, hi

        def change(s: np.ndarray) -> float:
            """Tuned vs base perplexity change (%) on the examples idx[s]."""
            return 100 * (_pooled_ppl(sums["tuned"], counts, idx[s]) / _pooled_ppl(sums["base"], counts, idx[s]) - 1)

        rec["change_pct"] = change(np.arange(len(idx)))
        lo, hi = metrics.bootstrap_ci(change, len(idx), resamples, seed)
        rec["change_ci"] = _ci_text(lo, hi, 1)
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
            recs.append({"id": r["id"], "topic": r.get("topic", ""), "prompt": _last(r, "user"),
                         "reference": _last(r, "assistant"), "tokens": len(tuned),
                         "tuned_loss": float(tuned.mean()), "base_loss": float(base.mean())})
    cols = ["which", "id", "topic", "prompt", "reference", "tokens", "tuned_loss", "base_loss"]
    if not recs:  # every answer cut off by model.max_length: nothing was scored
        return pd.DataFrame(columns=cols)
    df = pd.DataFrame(recs).sort_values("tuned_loss")
    k = min(k, len(df) // 2)  # a small test split: never list one example as both best and worst
    both = pd.concat([df.head(k).assign(which="best"), df.tail(k).iloc[::-1].assign(which="worst")])
    return both[cols].round(3)


def _last(row: dict, role: str) -> str:
    """Content of the conversation's last message with this role."""
    return next((m["content"] for m in reversed(row["messages"]) if m["role"] == role), "")


# ---------------------------------------------------------------- chat: answers

def generate(model, tokenizer, rows: list[dict], max_new_tokens: int, batch_size: int) -> list[dict]:
    """Greedy answers (KV cache, left-padded batches) to each row's last prompt, with the
    generated token count and the batch's wall time shared out per answer."""
    import torch

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
            width = max(map(len, batch))
            # Left padding: every prompt ends where generation starts, so new tokens line up.
            ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch])  # (B, T)
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])  # (B, T)
            t0 = time.perf_counter()
            gen = model.generate(input_ids=ids.to(model.device), attention_mask=mask.to(model.device),
                                 max_new_tokens=max_new_tokens, **kwargs)
            seconds = time.perf_counter() - t0
            for new in gen[:, width:].tolist():  # (B, new)
                n = next((j + 1 for j, t in enumerate(new) if t in eos_ids), len(new))  # up to and with the end of turn
                out.append({"answer": tokenizer.decode(new[:n], skip_special_tokens=True).strip(),
                            "new_tokens": n, "seconds": seconds / len(batch)})
    return out


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
    refs = [_last(r, "assistant") for r in rows]
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

    refs = [_last(r, "assistant") for r in rows]
    suite = evaluate.combine([metrics.RougeL(), metrics.Bleu(), metrics.SemanticSimilarity()])
    recs = []
    for name, ans in answers.items():
        res = suite.compute(predictions=[a["answer"] for a in ans], references=refs)
        recs.append({"model": name, "answers": len(ans), **res})
    return pd.DataFrame(recs).round(3)


def side_by_side(rows: list[dict], answers: dict[str, list[dict]]) -> pd.DataFrame:
    """Prompt, reference, base answer and tuned answer in one row per test prompt."""
    return pd.DataFrame({"prompt": [_last(r, "user") for r in rows], "reference": [_last(r, "assistant") for r in rows],
                         **{name: [a["answer"] for a in ans] for name, ans in answers.items()}})


def generation_rows(rows: list[dict], answers: dict[str, list[dict]], scores: pd.DataFrame) -> list[dict]:
    """One record per prompt for data/generations.jsonl: texts, tokens, times and scores."""
    out = []
    for i, r in enumerate(rows):
        rec = {"id": r["id"], "prompt": _last(r, "user"), "reference": _last(r, "assistant")}
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


# ---------------------------------------------------------------- chat: robustness

def perturb_rows(rows: list[dict], op: str, seed: int, share: float) -> list[dict]:
    """The rows with every user message noised by helpers.augment's op of that name (typo, case,
    punct, synonym, swap, delete); answers and system prompts stay as they are."""
    from . import augment

    noise = getattr(augment, op)  # evaluate.robustness_ops (a Literal in the config) names only these
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
    return pd.DataFrame([{"perturbation": "none", "prompt": _last(rows[0], "user")}] +
                        [{"perturbation": op, "prompt": _last(perturb_rows(rows[:1], op, seed, share)[0], "user")}
                         for op in ops])


def chat_headline(ppl: pd.DataFrame, bf16: bool, check: pd.DataFrame | None = None) -> dict[str, Any]:
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


# ---------------------------------------------------------------- classification

def predict_proba(model, tokenizer, texts: list[str], max_length: int, batch_size: int) -> np.ndarray:
    """Class probabilities of a sequence classifier, (N, C), batched and padded."""
    import torch

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


def label_ids(rows: list[dict], labels: list[str]) -> np.ndarray:
    """Each row's label as the index of the model's output for it."""
    unknown = sorted({r["label"] for r in rows} - set(labels))
    if unknown:
        raise ValueError(f"test labels {unknown} are not among the model's labels {labels}: "
                         f"was the model tuned on this run's data?")
    index = {l: i for i, l in enumerate(labels)}
    return np.array([index[r["label"]] for r in rows])


def tfidf_baseline(train: list[dict], texts: list[str], labels: list[str], seed: int) -> np.ndarray:
    """Probabilities from TF-IDF word 1-2 grams + logistic regression fit on train: (N, C)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    pipe = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1),
                         LogisticRegression(max_iter=2000, random_state=seed))
    pipe.fit([r["text"] for r in train], [r["label"] for r in train])
    probs = pipe.predict_proba(texts)
    # Align columns to the model's label order; a label absent from train gets probability 0.
    cols = list(pipe.classes_)
    return np.stack([probs[:, cols.index(l)] if l in cols else np.zeros(len(texts)) for l in labels], axis=1)


def _scores(y: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Accuracy, macro F1/precision/recall, AUCs and ECE of one model, via our evaluate modules."""
    import evaluate

    suite = evaluate.combine([metrics.Accuracy(), metrics.MacroF1(), metrics.RocAuc()])
    res = suite.compute(predictions=probs.argmax(1).tolist(), references=y.tolist(), prediction_scores=probs.tolist())
    res.pop("auc_per_class")
    pred = probs.argmax(1)
    res["ece"] = metrics.expected_calibration_error((pred == y).astype(float), probs.max(1))
    return res


def _boot(y: np.ndarray, probs: np.ndarray, resamples: int, seed: int) -> dict[str, tuple[float, float]]:
    """Bootstrap 95% intervals of accuracy, macro F1 and macro AUC (sklearn directly: fast)."""
    from sklearn.metrics import f1_score

    pred = probs.argmax(1)
    n_classes = probs.shape[1]
    stats = {"accuracy": lambda s: float((pred[s] == y[s]).mean()),
             "macro_f1": lambda s: float(f1_score(y[s], pred[s], average="macro", labels=range(n_classes),
                                                  zero_division=0)),
             "macro_auc": lambda s: metrics.roc_auc(y[s], probs[s])["macro_auc"]}
    return {k: metrics.bootstrap_ci(f, len(y), resamples, seed) for k, f in stats.items()}


def summary_table(y: np.ndarray, probs: dict[str, np.ndarray], resamples: int, seed: int) -> pd.DataFrame:
    """One row per model (tuned, baseline): headline scores with 95% bootstrap intervals."""
    recs = []
    for name, p in probs.items():
        s, ci = _scores(y, p), _boot(y, p, resamples, seed)
        rec: dict[str, Any] = {"model": name, "examples": len(y)}
        for key in ("accuracy", "macro_f1", "macro_auc"):
            rec[key], rec[f"{key}_ci"] = s[key], _ci_text(*ci[key], digits=3)
            rec[f"{key}_lo"], rec[f"{key}_hi"] = ci[key]
        rec.update({k: s[k] for k in ("macro_precision", "macro_recall", "micro_auc", "ece")})
        recs.append(rec)
    return pd.DataFrame(recs)


def summary_display(table: pd.DataFrame) -> pd.DataFrame:
    """The summary without raw interval bounds, rounded for reading."""
    shown = table[[c for c in table.columns if not c.endswith(("_lo", "_hi"))]].round(3)
    # Spaced names wrap in a narrow column; "accuracy_ci" would not.
    return shown.rename(columns=lambda c: c.replace("_ci", " 95% CI").replace("_", " "))


def per_class_table(y: np.ndarray, probs: dict[str, np.ndarray], labels: list[str]) -> pd.DataFrame:
    """Precision, recall, F1, support and one-vs-rest AUC per class, per model."""
    from sklearn.metrics import precision_recall_fscore_support

    recs = []
    for name, p in probs.items():
        pr, rc, f1, sup = precision_recall_fscore_support(y, p.argmax(1), labels=range(len(labels)), zero_division=0)
        auc = metrics.roc_auc(y, p)["auc_per_class"]
        for c, label in enumerate(labels):
            recs.append({"model": name, "class": label, "precision": pr[c], "recall": rc[c], "f1": f1[c],
                         "support": int(sup[c]), "auc": auc[c]})
    return pd.DataFrame(recs).round(3)


def confusion_figure(y: np.ndarray, probs: dict[str, np.ndarray], labels: list[str]) -> plt.Figure:
    """Confusion matrices side by side (rows: true class, columns: predicted), counts shown."""
    from sklearn.metrics import ConfusionMatrixDisplay

    fig, axes = plt.subplots(1, len(probs), figsize=(plots.PAGE_WIDTH, 3.4), squeeze=False)
    for ax, (name, p) in zip(axes[0], probs.items()):
        ConfusionMatrixDisplay.from_predictions(y, p.argmax(1), labels=range(len(labels)), display_labels=labels,
                                                ax=ax, colorbar=False, cmap="Blues")
        ax.set_title(name)
        ax.grid(False)
    fig.tight_layout()
    return fig


def roc_figure(y: np.ndarray, probs: dict[str, np.ndarray], labels: list[str]) -> plt.Figure:
    """One-vs-rest ROC curve per class and the micro average, one panel per model, AUC in the legend."""
    from sklearn.metrics import RocCurveDisplay

    onehot = np.eye(len(labels))[y]
    fig, axes = plt.subplots(1, len(probs), figsize=(plots.PAGE_WIDTH, 3.6), squeeze=False, sharey=True)
    for ax, (name, p) in zip(axes[0], probs.items()):
        for c, label in enumerate(labels):
            if 0 < onehot[:, c].sum() < len(y):
                RocCurveDisplay.from_predictions(onehot[:, c], p[:, c], name=label, ax=ax, curve_kwargs={"lw": 1.2})
        RocCurveDisplay.from_predictions(onehot.ravel(), p.ravel(), name="micro avg", ax=ax,
                                         curve_kwargs={"lw": 2, "ls": ":", "color": "k"},
                                         plot_chance_level=True)
        macro = metrics.roc_auc(y, p)["macro_auc"]
        ax.set_title(f"{name} (macro AUC {macro:.3f})", fontsize=10)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate (recall)")
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def pr_figure(y: np.ndarray, probs: dict[str, np.ndarray], labels: list[str]) -> plt.Figure:
    """Precision-recall curve per class (one vs rest), average precision in the legend."""
    from sklearn.metrics import PrecisionRecallDisplay

    onehot = np.eye(len(labels))[y]
    fig, axes = plt.subplots(1, len(probs), figsize=(plots.PAGE_WIDTH, 3.6), squeeze=False, sharey=True)
    for ax, (name, p) in zip(axes[0], probs.items()):
        for c, label in enumerate(labels):
            if onehot[:, c].sum():
                PrecisionRecallDisplay.from_predictions(onehot[:, c], p[:, c], name=label, ax=ax)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.legend(fontsize=6, loc="lower left")
    fig.tight_layout()
    return fig


def calibration_figure(y: np.ndarray, probs: dict[str, np.ndarray], bins: int = 10) -> plt.Figure:
    """Reliability diagram of top-label confidence: on the diagonal, 80% sure means 80% right."""
    from sklearn.calibration import calibration_curve

    fig, ax = plt.subplots(figsize=(plots.PAGE_WIDTH * 0.6, 3.6))
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfectly calibrated")
    for name, p in probs.items():
        correct, conf = (p.argmax(1) == y).astype(int), p.max(1)
        frac, mean_conf = calibration_curve(correct, conf, n_bins=bins, strategy="uniform")
        ece = metrics.expected_calibration_error(correct.astype(float), conf, bins)
        ax.plot(mean_conf, frac, marker="o", label=f"{name} (ECE {ece:.3f})")
    ax.set_xlabel("confidence in the predicted class")
    ax.set_ylabel("share of those predictions that are right")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def prediction_rows(rows: list[dict], probs: dict[str, np.ndarray], labels: list[str]) -> list[dict]:
    """One record per test row for data/predictions.jsonl: label, each model's prediction and probabilities."""
    out = []
    for i, r in enumerate(rows):
        rec = {"id": r["id"], "text": r["text"], "label": r["label"]}
        for name, p in probs.items():
            prefix = "" if name == "tuned" else f"{name}_"
            rec[f"{prefix}predicted"] = labels[int(p[i].argmax())]
            rec[f"{prefix}confidence"] = round(float(p[i].max()), 4)
            rec[f"{prefix}probs"] = {l: round(float(v), 4) for l, v in zip(labels, p[i])}
        out.append(rec)
    return out


def worst_misclassified(rows: list[dict], y: np.ndarray, probs: np.ndarray, labels: list[str], k: int) -> pd.DataFrame:
    """The k wrong predictions the model was most confident in: often label noise or a real gap."""
    pred = probs.argmax(1)
    wrong = np.flatnonzero(pred != y)
    wrong = wrong[np.argsort(-probs[wrong, pred[wrong]])][:k]
    return pd.DataFrame([{"id": rows[i]["id"], "text": rows[i]["text"], "label": labels[y[i]],
                          "predicted": labels[pred[i]], "confidence": round(float(probs[i, pred[i]]), 3),
                          "p(label)": round(float(probs[i, y[i]]), 3)} for i in wrong],
                        columns=["id", "text", "label", "predicted", "confidence", "p(label)"])


def classification_headline(summary: pd.DataFrame) -> dict[str, Any]:
    """The classification figures metrics.json keeps at the top of 'evaluate'."""
    t = summary.set_index("model")
    out: dict[str, Any] = {"task": "classification", "examples": int(t.loc["tuned", "examples"])}
    for model, prefix in (("tuned", ""), ("baseline", "baseline_")):
        for key in ("accuracy", "macro_f1", "macro_auc"):
            out[f"{prefix}{key}"] = float(t.loc[model, key])
            out[f"{prefix}{key}_ci"] = [float(t.loc[model, f"{key}_lo"]), float(t.loc[model, f"{key}_hi"])]
        for key in ("macro_precision", "macro_recall", "micro_auc", "ece"):
            out[f"{prefix}{key}"] = float(t.loc[model, key])
    return out


def write_rows(run: Run, name: str, rows: list[dict]) -> Path:
    """Write per-example results into the run's data folder."""
    return data.write_jsonl(run.data / name, rows)
