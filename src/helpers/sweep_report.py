"""The sweep page: each variant's headline figures with their 95% intervals, each variant's
difference from the first with a paired bootstrap interval on the same test rows, and the
headline metric plotted against every swept key. Rendered with Jinja2 (templates/sweep.html.j2).

Paired: both runs are scored on the same resampled test rows (matched by id), so the interval
reflects only how the two models differ on those rows, not which rows happened to be drawn;
it is much narrower than comparing the two runs' own intervals. Chat pairs on data/nlls.jsonl
(summed answer-token NLL per test chat), classification on data/predictions.jsonl.
"""
from __future__ import annotations

import base64
import json
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from . import metrics, plots
from .report import TEMPLATES, fmt
from .runs import Run, read_json

# (metrics.json key, its interval key, column title, lower is better)
CHAT_METRICS = [("perplexity_base", "perplexity_base_ci", "perplexity base", True),
                ("perplexity_tuned", "perplexity_tuned_ci", "perplexity tuned", True),
                ("perplexity_change_pct", "perplexity_change_ci", "change vs base %", True)]
CLASS_METRICS = [("accuracy", "accuracy_ci", "accuracy", False), ("macro_f1", "macro_f1_ci", "macro F1", False),
                 ("macro_auc", "macro_auc_ci", "macro AUC", False)]
# The paired differences (variant - reference) and the metric each is a difference of.
CHAT_PAIRED = [("perplexity_tuned", "Δ perplexity tuned")]
CLASS_PAIRED = [("accuracy", "Δ accuracy"), ("macro_f1", "Δ macro F1"), ("macro_auc", "Δ macro AUC")]
PLOTTED = {"chat": "perplexity_tuned", "classification": "macro_f1"}


# ---------------------------------------------------------------- paired bootstrap

def paired_difference(stat_ref: Callable[[np.ndarray], float], stat_var: Callable[[np.ndarray], float],
                      n: int, resamples: int, seed: int) -> dict[str, Any]:
    """stat_var - stat_ref on all n rows, and its 95% interval with both statistics on the same resamples."""
    everything = np.arange(n)
    lo, hi = metrics.bootstrap_ci(lambda s: stat_var(s) - stat_ref(s), n, resamples, seed)
    return {"diff": stat_var(everything) - stat_ref(everything), "ci": [lo, hi]}


def pooled_perplexity(nll: np.ndarray, tokens: np.ndarray, idx: np.ndarray) -> float:
    """exp(summed NLL / tokens) over the rows idx (as evaluation pools it)."""
    n = tokens[idx].sum()
    return float(np.exp(nll[idx].sum() / n)) if n else float("nan")


def paired_perplexity(ref: list[dict], var: list[dict], ids: list[str], resamples: int, seed: int) -> dict[str, dict]:
    """Δ tuned perplexity (variant - reference) on the rows ids, from two runs' data/nlls.jsonl."""
    a, b = ({r["id"]: r for r in rows} for rows in (ref, var))
    nll_a, tok_a = np.array([a[i]["tuned_nll"] for i in ids]), np.array([a[i]["tokens"] for i in ids])
    nll_b, tok_b = np.array([b[i]["tuned_nll"] for i in ids]), np.array([b[i]["tokens"] for i in ids])
    return {"perplexity_tuned": paired_difference(lambda s: pooled_perplexity(nll_a, tok_a, s),
                                                  lambda s: pooled_perplexity(nll_b, tok_b, s), len(ids), resamples, seed)}


def _class_stats(y: np.ndarray, probs: np.ndarray) -> dict[str, Callable[[np.ndarray], float]]:
    """Accuracy, macro F1 and macro AUC of one model on the rows s (as evaluation computes them)."""
    from sklearn.metrics import f1_score

    pred = probs.argmax(1)
    k = probs.shape[1]
    return {"accuracy": lambda s: float((pred[s] == y[s]).mean()),
            "macro_f1": lambda s: float(f1_score(y[s], pred[s], average="macro", labels=range(k), zero_division=0)),
            "macro_auc": lambda s: metrics.roc_auc(y[s], probs[s])["macro_auc"]}


def paired_classification(ref: list[dict], var: list[dict], ids: list[str], resamples: int, seed: int) -> dict[str, dict]:
    """Δ accuracy, macro F1, macro AUC (variant - reference) on the rows ids, from data/predictions.jsonl."""
    a, b = ({r["id"]: r for r in rows} for rows in (ref, var))
    labels = list(a[ids[0]]["probs"])
    if set(b[ids[0]]["probs"]) != set(labels):
        raise ValueError(f"the runs predict different label sets: {sorted(labels)} vs {sorted(b[ids[0]]['probs'])}")
    y = np.array([labels.index(a[i]["label"]) for i in ids])
    pa = np.array([[a[i]["probs"][l] for l in labels] for i in ids])  # (N, C)
    pb = np.array([[b[i]["probs"][l] for l in labels] for i in ids])  # (N, C)
    sa, sb = _class_stats(y, pa), _class_stats(y, pb)
    return {k: paired_difference(sa[k], sb[k], len(ids), resamples, seed) for k in sa}


def common_ids(ref: list[dict], var: list[dict]) -> tuple[list[str], str]:
    """The test row ids both runs scored (reference order) and a note when the rows differ."""
    ra, rb = [r["id"] for r in ref], [r["id"] for r in var]
    shared = set(rb)
    ids = [i for i in ra if i in shared]
    if set(ra) == set(rb) and len(ra) == len(rb):
        return ids, ""
    if not ids:
        return [], f"no test rows in common with the reference ({len(ra)} vs {len(rb)} rows): no paired difference"
    return ids, (f"test rows differ from the reference: paired on the {len(ids)} rows both scored "
                 f"(reference {len(ra)}, this run {len(rb)})")


# ---------------------------------------------------------------- one row per variant

def _status(manifest: dict) -> str:
    """ok, failed: <stage>, or incomplete."""
    stages = manifest.get("stages", {})
    failed = [k for k, v in stages.items() if v.get("status") == "failed"]
    if failed:
        return f"failed: {', '.join(failed)}"
    return "ok" if stages and all(v.get("status") == "ok" for v in stages.values()) else "incomplete"


def _per_example(run: Run, task: str) -> list[dict] | None:
    """The per-example file the paired bootstrap reads, or None if the run has none."""
    path = run.data / ("nlls.jsonl" if task == "chat" else "predictions.jsonl")
    if not path.is_file():
        return None
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def variant_rows(variants: list, runs: dict[int, Run]) -> list[dict[str, Any]]:
    """Per variant (sweep.Variant: values, config): its run folder, status, reused stages, headline figures,
    paired differences."""
    rows: list[dict[str, Any]] = []
    ref_examples: list[dict] | None = None
    for i, v in enumerate(variants):
        task = v.config.experiment.task
        run = runs.get(i)
        row: dict[str, Any] = {"index": i, "values": v.values, "task": task, "run": run.dir.name if run else None,
                               "status": "not started", "reused": {}, "metrics": {}, "paired": {}, "note": ""}
        if run is None:
            rows.append(row)
            continue
        manifest = read_json(run.manifest_file, {})
        ev = read_json(run.metrics_file, {}).get("evaluate", {})
        row["status"] = _status(manifest)
        row["reused"] = {k: s["reused_from"] for k, s in manifest.get("stages", {}).items() if s.get("reused_from")}
        for key, ci, _, _ in CHAT_METRICS if task == "chat" else CLASS_METRICS:
            if key in ev:
                row["metrics"][key] = {"value": ev[key], "ci": ev.get(ci)}
        examples = _per_example(run, task)
        if i == 0:
            ref_examples = examples
        elif examples is None or ref_examples is None:
            row["note"] = "no per-example file in this run or the reference: no paired difference"
        else:
            ids, row["note"] = common_ids(ref_examples, examples)
            if ids:
                ref_cfg = variants[0].config
                pair = paired_perplexity if task == "chat" else paired_classification
                row["paired"] = pair(ref_examples, examples, ids, ref_cfg.evaluate.bootstrap_resamples,
                                     ref_cfg.experiment.seed)
                row["paired_rows"] = len(ids)
        rows.append(row)
    return rows


# ---------------------------------------------------------------- the page

def _with_ci(value: float | None, ci: list | None, digits: int = 3, signed: bool = False) -> str:
    """'12.3 [11.0, 13.9]' (signed: '+0.12 [-0.05, +0.30]')."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    f = (lambda x: f"{x:+.{digits}f}") if signed else (lambda x: fmt(float(x), digits))
    if ci and all(c is not None and not math.isnan(c) for c in ci):
        return f"{f(value)} [{f(ci[0])}, {f(ci[1])}]"
    return f(value)


def display_table(rows: list[dict[str, Any]], grid: dict[str, list]) -> pd.DataFrame:
    """The page's table as text cells: one row per variant."""
    task = rows[0]["task"] if rows else "chat"
    spec, paired = (CHAT_METRICS, CHAT_PAIRED) if task == "chat" else (CLASS_METRICS, CLASS_PAIRED)
    digits = 2 if task == "chat" else 3
    out = []
    for r in rows:
        rec: dict[str, Any] = {"#": r["index"] + 1}
        rec.update({k: json.dumps(r["values"][k]) for k in grid})
        rec["run"] = r["run"] or ""
        rec["status"] = r["status"]
        rec["reused"] = ", ".join(f"{s[:2]} from {src}" for s, src in r["reused"].items())
        for key, _, title, _ in spec:
            m = r["metrics"].get(key)
            rec[f"{title} [95% CI]"] = _with_ci(m["value"], m["ci"], 1 if "pct" in key else digits) if m else ""
        for key, title in paired:
            p = r["paired"].get(key)
            rec[f"{title} vs #1 [paired 95% CI]"] = ("reference" if r["index"] == 0 else
                                                     _with_ci(p["diff"], p["ci"], digits, signed=True) if p else "")
        out.append(rec)
    return pd.DataFrame(out)


def metric_figure(rows: list[dict[str, Any]], grid: dict[str, list]):
    """The headline metric (with its interval) against each swept key; one line per setting of the others."""
    import matplotlib.pyplot as plt

    task = rows[0]["task"]
    key = PLOTTED[task]
    title = dict((k, t) for k, _, t, _ in CHAT_METRICS + CLASS_METRICS)[key]
    keys = list(grid)
    fig, axes = plt.subplots(1, len(keys), figsize=(plots.PAGE_WIDTH, 3.3), squeeze=False)
    done = [r for r in rows if key in r["metrics"]]
    for ax, k in zip(axes[0], keys):
        values = [r["values"][k] for r in done]
        numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in values)
        # Numbers in value order; other values (true/false, lists) in the grid's order, the reference first.
        order = sorted({json.dumps(x) for x in values}, key=json.loads) if numeric else \
            list(dict.fromkeys(json.dumps(x) for x in grid[k] if json.dumps(x) in {json.dumps(v) for v in values}))
        others = [o for o in keys if o != k]
        groups: dict[str, list[dict]] = {}
        for r in done:
            groups.setdefault(" ".join(f"{o}={json.dumps(r['values'][o])}" for o in others), []).append(r)
        for n, (name, part) in enumerate(sorted(groups.items())):
            part = sorted(part, key=lambda r: order.index(json.dumps(r["values"][k])))
            x = [r["values"][k] if numeric else order.index(json.dumps(r["values"][k])) for r in part]
            y = [r["metrics"][key]["value"] for r in part]
            ci = [r["metrics"][key]["ci"] or [v, v] for r, v in zip(part, y)]
            err = np.clip(np.array([[v - c[0] for v, c in zip(y, ci)], [c[1] - v for v, c in zip(y, ci)]]), 0, None)
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, color=f"C{n % 10}", label=name or None)
        if not numeric:
            ax.set_xticks(range(len(order)), order, fontsize=8)
        elif min(values) > 0 and max(values) / min(values) >= 100:  # learning rates and the like
            ax.set_xscale("log")
        ax.set(xlabel=k, ylabel=f"{title} (95% CI)" if ax is axes[0][0] else "")
        if others and len(groups) > 1:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def write_page(p: Any, rows: list[dict[str, Any]]) -> Path:
    """Write table.csv, figures/metric.png and sweep.html into the folder of p (a sweep.Plan); returns the page."""
    import matplotlib.pyplot as plt

    table = display_table(rows, p.grid)
    table.to_csv(p.folder / "table.csv", index=False)
    image = None
    if any(r["metrics"] for r in rows):
        fig = metric_figure(rows, p.grid)
        png = plots.save(fig, p.folder / "figures", "metric")
        plt.close(fig)
        image = base64.b64encode(png.read_bytes()).decode("ascii")
    notes = [f"#{r['index'] + 1}: {r['note']}" for r in rows if r["note"]]
    numeric = {c for c in table.columns if "CI" in c}
    html = TEMPLATES.get_template("sweep.html.j2").render(
        plan=p, grid=p.grid, columns=list(table.columns), numeric=numeric,
        rows=table.to_dict("records"), runs=[r["run"] for r in rows], notes=notes, image=image,
        task=rows[0]["task"] if rows else "", plotted=PLOTTED.get(rows[0]["task"], "") if rows else "",
        resamples=p.variants[0].config.evaluate.bootstrap_resamples if p.variants else None)
    page = p.folder / "sweep.html"
    page.write_text(html, encoding="utf-8")
    return page
