"""Stage 06: one self-contained HTML page per run, and reports/index.html over all runs.

report.html embeds its figures as base64 PNGs and carries its own CSS (no scripts, no
links out), so it opens from file://, survives being mailed, and prints cleanly. The index
has a little inline JavaScript: sortable columns and a side-by-side comparison of two runs.
The pages are Jinja2 templates (templates/*.html.j2, autoescaped): this module gathers what
they show as plain values, the markup is all in the templates.

    python -m helpers.report --index                 # rebuild reports/index.html
    python -m helpers.report --run reports/<run>     # rebuild one run's report.html
"""
from __future__ import annotations

import argparse
import base64
import json
import math
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
import pandas as pd
from markupsafe import Markup

from . import artifacts, paths, verdicts as rules
from .config import Config, ConfigError, diff_from_defaults, flatten, task_defaults
from .runs import Run, read_json, write_text

SECTION_TITLES = {"explore": "Data", "clean": "Cleaning", "augment": "Augmentation", "tune": "Training",
                  "search": "Search", "evaluate": "Evaluation"}
STAGE_NOTEBOOKS = {"explore": "01-explore-data", "clean": "02-clean-data", "augment": "03-augment-data",
                   "tune": "04-tune-model", "evaluate": "05-evaluate-model"}


def fmt(value: Any, digits: int = 3) -> str:
    """A number rounded for reading (trailing zeros dropped), or the value as text."""
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        if abs(value) >= 1e-3:
            return f"{value:.{digits}f}".rstrip("0").rstrip(".")
        return f"{value:.{digits}g}"
    return "" if value is None else str(value)


def fmt_any(value: Any) -> str:
    """fmt, applied to each item of a list."""
    return ", ".join(fmt(v) for v in value) if isinstance(value, list) else fmt(value)


# The pages' templates: autoescaped, and a missing value is an error rather than an empty cell.
TEMPLATES = jinja2.Environment(loader=jinja2.PackageLoader("helpers"), autoescape=True,
                               undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
TEMPLATES.filters.update(fmt=fmt, fmt_any=fmt_any, pyrepr=repr)
TEMPLATES.policies["json.dumps_kwargs"] = {"sort_keys": False, "default": str}


def macro(name: str):
    """A macro of templates/macros.html.j2, to call from Python (it returns safe markup)."""
    return getattr(TEMPLATES.get_template("macros.html.j2").module, name)


# ---------------------------------------------------------------- what the pages show

def markdown_html(text: str) -> Markup:
    """Markdown to HTML with raw HTML shown as text: notes quote user data, which may hold tags."""
    import markdown

    md = markdown.Markdown(extensions=["tables", "fenced_code", "sane_lists"])
    md.preprocessors.deregister("html_block")
    md.inlinePatterns.deregister("html")
    return Markup(md.convert(text))  # markdown escapes the text; with raw HTML off, all tags are its own


def figure_view(path: Path, caption: str) -> dict[str, Any]:
    """A figure with its PNG as base64, so the page needs no other file (data None: missing)."""
    data = base64.b64encode(path.read_bytes()).decode("ascii") if path.is_file() else None
    return {"name": path.name, "stem": path.stem, "caption": caption, "data": data}


def table_view(df: pd.DataFrame, max_rows: int, caption: str = "", empty: str = "") -> dict[str, Any]:
    """A DataFrame as text cells (numbers rounded, marked for right alignment), cut at max_rows."""
    shown = df.head(max_rows)
    numeric = [pd.api.types.is_numeric_dtype(shown[c]) for c in shown.columns]
    rows = [[("" if pd.isna(v) else fmt(v), num) for v, num in zip(row, numeric)]
            for row in shown.itertuples(index=False)]
    return {"caption": caption, "columns": list(zip(map(str, shown.columns), numeric)), "rows": rows,
            "more": max(len(df) - max_rows, 0), "empty": empty or "no rows: nothing of this kind was found"}


def links_html(links: dict[str, Path]) -> Markup:
    """Links to local files, paths made relative to here and URL-quoted (a run name is user text)."""
    return macro("links")([(text, quote(Path(os.path.relpath(path)).as_posix())) for text, path in links.items()])


# ---------------------------------------------------------------- headline figures

def _change(name: str, before: float | None, after: float | None, lower_is_better: bool, detail: str) -> dict:
    """A card 'before → after' and whether the change helped (good), hurt (bad) or is nil at 2 decimals."""
    if before is None or after is None:
        return _value(name, after if after is not None else before, detail)
    better = after < before if lower_is_better else after > before
    verdict = "" if round(after, 2) == round(before, 2) else "good" if better else "bad"
    return {"name": name, "before": fmt(before, 2), "after": fmt(after, 2), "verdict": verdict, "detail": detail}


def _value(name: str, value: Any, detail: str) -> dict:
    """A card that shows one value."""
    return {"name": name, "before": None, "after": fmt(value), "verdict": "", "detail": detail}


def cards(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """The headline cards from metrics.json['evaluate'] as plain values: what a reader looks at first."""
    ev = metrics.get("evaluate", {})
    out: list[dict[str, Any]] = []
    if "perplexity_tuned" in ev:
        lo, hi = ev.get("perplexity_change_ci", [None, None])
        ci = f"; 95% CI {lo:+.1f}% to {hi:+.1f}%" if lo is not None else ""
        out.append(_change("perplexity base → tuned", ev.get("perplexity_base"), ev["perplexity_tuned"], True,
                           f"{ev.get('perplexity_change_pct', 0):+.1f}%{ci}; {ev.get('tokens', '?')} answer tokens, "
                           f"{ev.get('examples', '?')} test chats"))
        q = ev.get("quality", {})
        for key, label in (("rougeL", "ROUGE-L"), ("bleu", "BLEU"), ("semantic_similarity", "answer similarity")):
            if f"{key}_tuned" in q:
                out.append(_change(f"{label} base → tuned", q.get(f"{key}_base"), q[f"{key}_tuned"], False,
                                   f"{q.get('answers', '?')} generated answers vs the reference"))
        lat = ev.get("latency", {})
        if "ms_per_answer_tuned" in lat:
            out.append(_change("ms per answer base → tuned", lat.get("ms_per_answer_base"), lat["ms_per_answer_tuned"],
                               True, f"{fmt(lat.get('tokens_per_s_tuned'), 1)} generated tokens/s tuned"))
    if "accuracy" in ev:
        for key, label in (("accuracy", "accuracy"), ("macro_f1", "macro F1"), ("macro_auc", "macro AUC")):
            lo, hi = ev.get(f"{key}_ci", [None, None])
            ci = f"95% CI {lo:.3f} – {hi:.3f}; " if lo is not None else ""
            single = f"; one model of the ensemble {fmt(ev[f'single_{key}'])}" if f"single_{key}" in ev else ""
            out.append(_value(label, ev[key], f"{ci}baseline {fmt(ev.get(f'baseline_{key}'))}{single}"))
        out.append(_value("test examples", ev.get("examples", "?"), "TF-IDF + logistic regression is the baseline"))
    if metrics.get("tune", {}).get("steps"):
        out.append(_value("training steps", metrics["tune"]["steps"], training_detail(metrics["tune"])))
    return out


def training_detail(tune: dict[str, Any]) -> str:
    """What set the steps, the epochs and minutes they made, and 01's step-time estimate against the real one."""
    parts = [f"set by {tune.get('steps_rule', 'epochs')}"]
    if tune.get("time_budget_minutes"):
        parts[0] += f" ({fmt(tune['time_budget_minutes'])} min)"
    if tune.get("ensemble", {}).get("members", 1) > 1:  # each member trained these steps
        parts[0] += f"; planned for each of {tune['ensemble']['members']} ensemble members (figures: model/final's)"
    if tune.get("epochs_trained") is not None:
        parts.append(f"{fmt(tune['epochs_trained'], 2)} epochs")
    if tune.get("step_seconds") is not None:
        parts.append(f"{tune['step_seconds'] / 60:.1f} min in optimizer steps")
    if tune.get("eval_rows"):
        parts.append(f"validated on a sample of {tune['eval_rows']:,} rows")
    if tune.get("stopped_early"):
        parts.append(f"stopped early (best step {tune.get('best_step')})")
    if tune.get("step_time_vs_01_estimate"):
        parts.append(f"{fmt(tune['seconds_per_step'], 3)} s per step, {fmt(tune['step_time_vs_01_estimate'], 2)}x "
                     f"01's estimate")
    return "; ".join(parts)


def headline(metrics: dict[str, Any]) -> list[tuple[str, Markup, str]]:
    """(name, value HTML, detail) per card, as the report shows them (the change coloured by the template)."""
    return [(c["name"], macro("change")(c), c["detail"]) for c in cards(metrics)]


def headline_table(metrics: dict[str, Any]) -> pd.DataFrame:
    """The headline cards as a plain-text table, for a notebook: the change is a word, not a colour."""
    words = {"good": "better", "bad": "worse", "": ""}
    return pd.DataFrame([{"figure": c["name"], "value": c["after"] if c["before"] is None else f"{c['before']} → {c['after']}",
                          "change": words[c["verdict"]], "detail": c["detail"]} for c in cards(metrics)],
                        columns=["figure", "value", "change", "detail"])


LEVEL_WORDS = {"good": "Helped", "warn": "Check", "bad": "Problem"}


def verdict_views(run: Run, metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """helpers.verdicts' findings on the run (from metrics.json and model/log_history.json), as plain values."""
    history = read_json(run.model / "log_history.json", [])
    return [{"level": v.level, "label": LEVEL_WORDS[v.level], "text": v.text, "keys": v.keys}
            for v in rules.for_run(metrics, history)]


def verdicts_table(run: Run) -> pd.DataFrame:
    """The verdicts as a plain-text table, for notebook 06: finding, level, what it says, keys to change."""
    views = verdict_views(run, read_json(run.metrics_file, {}))
    return pd.DataFrame([{"verdict": v["label"].lower(), "finding": v["text"], "params to change": ", ".join(v["keys"])}
                         for v in views], columns=["verdict", "finding", "params to change"])


# ---------------------------------------------------------------- using the model

def run_path(run: Run) -> str:
    """The run folder as the make commands take it: relative to the repo, else in full."""
    try:
        return str(run.dir.resolve().relative_to(paths.ROOT))
    except ValueError:  # a run outside the repo
        return str(run.dir.resolve())


def use_html(run: Run, cfg: Config | None) -> Markup:
    """The "Use this model" section: this run's make commands and Python snippets (templates/macros)."""
    import shlex

    from . import chat, data

    task = cfg.experiment.task if cfg else "chat"
    if not (run.model / "final" / "config.json").is_file():
        return macro("use")(None)
    system = None
    if task == "chat" and (run.data / "train.jsonl").is_file():
        system = chat.system_prompt(data.read_jsonl(run.data / "train.jsonl"))
    members = []  # an ensemble (tune.ensemble): every member's folder, model/final first
    if task == "classification" and cfg and cfg.tune.ensemble > 1:
        members = [f"{run_path(run)}/model/final"] + [f"{run_path(run)}/model/members/{i}/final"
                                                      for i in range(1, cfg.tune.ensemble)]
    return macro("use")({"task": task, "run_name": run.dir.name, "run_arg": shlex.quote(f"RUN={run_path(run)}"),
                         "folder": f"{run.dir.name}/model/final", "final": f"{run_path(run)}/model/final",
                         "system": system, "members": members})


# ---------------------------------------------------------------- one run

def _run_config(run: Run) -> Config | None:
    """The run's config, or None where this version of the code cannot read it."""
    try:
        return run.config()
    except (ConfigError, OSError):
        return None


def record_view(run: Run, cfg: Config | None, manifest: dict[str, Any]) -> dict[str, Any]:
    """The run's record: facts, params changed from the defaults, stage timings, versions, notebooks."""
    dirty = " (uncommitted changes)" if manifest.get("git_dirty") else ""
    facts = {"experiment": manifest.get("experiment"), "task": manifest.get("task"), "created": manifest.get("created"),
             "seed": manifest.get("seed"), "git commit": f"{manifest.get('git_commit') or 'not a git checkout'}{dirty}",
             "python": manifest.get("python"), "machine": ", ".join(f"{k}: {v}" for k, v in manifest.get("machine", {}).items() if v),
             "run folder": run.dir.name}
    diff = None
    if cfg is not None:
        defaults = flatten(task_defaults(cfg.experiment.task).model_dump(mode="json"))
        diff = table_view(pd.DataFrame([{"param": k, "value": json.dumps(v), "default": json.dumps(defaults.get(k))}
                                        for k, v in diff_from_defaults(cfg).items()],
                                       columns=["param", "value", "default"]), 500)
    stages = None
    if manifest.get("stages"):
        # The report is written by stage 06 itself, so that stage is still running here.
        st = pd.DataFrame([{"stage": k, "seconds": v.get("seconds"),
                            "status": "writing this page" if k.startswith("06-") and v.get("status") == "running"
                            else v.get("status", ""),
                            "reused from": v.get("reused_from", ""),
                            "error": v.get("error", "")} for k, v in manifest["stages"].items()])
        stages = table_view(st.drop(columns=[c for c in ("reused from", "error") if not st[c].any()]), 50)
    notebooks = sorted(run.notebooks.glob("*.html")) if run.notebooks.is_dir() else []
    return {"facts": facts, "diff": diff, "stages": stages,
            "packages": {k: v for k, v in manifest.get("packages", {}).items() if v},
            "notebooks": [(p.name, p.stem) for p in notebooks]}


def block_view(run: Run, entry: dict[str, Any], max_rows: int) -> dict[str, Any]:
    """One registered figure, table or note, ready for the template."""
    block = {"kind": entry["kind"], "title": entry["name"].replace("-", " ").replace("_", " ")}
    if entry["kind"] == "figure":
        block["figure"] = figure_view(run.dir / entry["path"], entry.get("caption", ""))
    elif entry["kind"] == "table":
        path = run.dir / entry["path"]
        if path.is_file():
            block["table"] = table_view(artifacts.read_table(path), max_rows, entry.get("caption", ""),
                                        entry.get("empty", ""))
        else:
            block.update(kind="missing", name=path.name)
    else:
        block["html"] = markdown_html(entry.get("markdown", ""))
    return block


def section_view(run: Run, stage: str, entries: list[dict], stage_metrics: dict, timing: dict,
                 max_rows: int) -> dict[str, Any]:
    """One stage: its timing, its figures, tables and notes in registration order, its scalar metrics."""
    scalars = {k: v for k, v in flatten(stage_metrics).items()
               if not isinstance(v, (list, dict)) or (isinstance(v, list) and len(v) <= 4)}
    return {"id": stage, "title": SECTION_TITLES.get(stage, stage.title()),
            "timing": {"seconds": timing.get("seconds"), "status": timing.get("status", "")} if timing else None,
            "reused_from": timing.get("reused_from"),  # helpers.reuse copied this stage from an earlier run
            "blocks": [block_view(run, e, max_rows) for e in entries if e["kind"] in ("figure", "table", "note")],
            "scalars": scalars}


def render_run(run: Run, out: Path | None = None) -> Path:
    """Write the run's report.html (one self-contained file) and return its path."""
    cfg = _run_config(run)
    manifest = read_json(run.manifest_file, {})
    metrics = read_json(run.metrics_file, {})
    items = artifacts.items(run)
    title = (cfg.report.title if cfg and cfg.report.title else None) or manifest.get("experiment") or run.dir.name
    max_rows = cfg.report.max_table_rows if cfg else 100
    # Every stage gets its section, so a skipped one (search is off by default) says so.
    stages = list(artifacts.STAGES) + sorted({e["stage"] for e in items} - set(artifacts.STAGES))
    timings = manifest.get("stages", {})
    sections = [section_view(run, s, [e for e in items if e["stage"] == s], metrics.get(s, {}),
                             timings.get(STAGE_NOTEBOOKS.get(s, ""), timings.get(s, {})), max_rows) for s in stages]
    html = TEMPLATES.get_template("report.html.j2").render(
        title=title, task=manifest.get("task", ""), run_name=run.dir.name, created=manifest.get("created", "?"),
        cards=headline(metrics), verdicts=verdict_views(run, metrics), use=use_html(run, cfg),
        record=record_view(run, cfg, manifest), sections=sections)
    path = out or run.dir / "report.html"
    write_text(path, html)
    return path


# ---------------------------------------------------------------- the index of runs

def run_summary(folder: Path) -> dict[str, Any]:
    """What the index shows of one run: names, key metrics, changed params, report link."""
    run = Run(folder)
    cfg = _run_config(run)
    manifest = read_json(run.manifest_file, {})
    metrics = read_json(run.metrics_file, {})
    ev = metrics.get("evaluate", {})
    stages = manifest.get("stages", {})
    changed = {k: v for k, v in diff_from_defaults(cfg).items() if k != "experiment.name"} if cfg else {}
    keys = ["perplexity_base", "perplexity_tuned", "perplexity_change_pct", "accuracy", "macro_f1", "macro_auc",
            "baseline_accuracy", "baseline_macro_f1", "baseline_macro_auc"]
    return {"run": folder.name, "experiment": manifest.get("experiment") or (cfg.experiment.name if cfg else ""),
            "task": manifest.get("task") or (cfg.experiment.task if cfg else ""),
            "created": manifest.get("created", ""), "report": (folder / "report.html").is_file(),
            "failed": [k for k, v in stages.items() if v.get("status") == "failed"],
            "sweep": manifest.get("sweep"),
            "metrics": {k: ev.get(k) for k in keys},
            "changed": changed,
            "compare": {**{f"metric: {k}": v for k, v in flatten(ev).items() if not isinstance(v, (list, dict))},
                        **{f"param: {k}": v for k, v in (flatten(cfg.model_dump(mode="json")) if cfg else {}).items()}}}


def index_row(s: dict[str, Any]) -> dict[str, Any]:
    """One run as the index shows it: text cells, numbers with their raw value for sorting, changes."""
    m = s["metrics"]
    numbers = []
    for key in ("perplexity_base", "perplexity_tuned", "perplexity_change_pct", "accuracy", "macro_f1", "macro_auc"):
        v = m.get(key)
        numbers.append((v, fmt(v, 2 if "perplexity" in key else 3) if v is not None else ""))
    base = m.get("baseline_accuracy")
    numbers.append((base, f"{fmt(base)} / {fmt(m.get('baseline_macro_f1'))}" if base is not None else ""))
    t = s.get("sweep")  # a sweep's runs stand together (_group_sweeps), each linking the sweep page
    sweep = {"page": t.get("page", ""), "id": t.get("id", ""), "number": t.get("index", 0) + 1,
             "variants": t.get("variants", "?")} if t else None
    return {"run": s["run"], "report": s["report"], "failed": s["failed"], "sweep": sweep,
            "cells": [s["experiment"], s["task"], s["created"].replace("T", " ")], "numbers": numbers,
            "changed": [f"{k}: {json.dumps(v)}" for k, v in s["changed"].items()]}


def _group_sweeps(summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runs in index order, a sweep's runs moved together (variant order) where its newest run stands."""
    out, placed = [], set()
    for s in summaries:
        sid = (s.get("sweep") or {}).get("id")
        if sid is None:
            out.append(s)
        elif sid not in placed:
            placed.add(sid)
            out += sorted((x for x in summaries if (x.get("sweep") or {}).get("id") == sid),
                          key=lambda x: x["sweep"].get("index", 0))
    return out


def write_index(reports_dir: Path | str | None = None) -> Path:
    """Write reports/index.html: every run folder, newest first, with key metrics and links."""
    reports_dir = Path(reports_dir or paths.REPORTS)
    reports_dir.mkdir(parents=True, exist_ok=True)
    summaries = _group_sweeps(sorted((run_summary(p.parent) for p in reports_dir.glob("*/config.yaml")),
                                     key=lambda s: (s["created"], s["run"]), reverse=True))
    html = TEMPLATES.get_template("index.html.j2").render(
        folder=reports_dir, rows=[index_row(s) for s in summaries],
        data=[{"run": s["run"], "compare": s["compare"]} for s in summaries])
    path = reports_dir / "index.html"
    write_text(path, html)
    return path


def main(argv: list[str] | None = None) -> int:
    """Command line: rebuild the index and/or one run's report."""
    ap = argparse.ArgumentParser(prog="python -m helpers.report", description=__doc__.splitlines()[0])
    ap.add_argument("--index", action="store_true", help="rebuild reports/index.html")
    ap.add_argument("--run", help="a run folder whose report.html to rebuild")
    ap.add_argument("--reports", default=None, help=f"the reports folder (default {paths.REPORTS})")
    args = ap.parse_args(argv)
    if not args.index and not args.run:
        ap.error("give --index and/or --run RUN_FOLDER")
    if args.run:
        run = Run(Path(args.run))
        if not run.config_file.is_file():
            print(f"{run.dir} is not a run folder (no config.yaml)", file=sys.stderr)
            return 2
        print(render_run(run))
    if args.index:
        print(write_index(args.reports))
    return 0


if __name__ == "__main__":
    sys.exit(main())
