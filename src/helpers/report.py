"""Stage 06: one self-contained HTML page per run, and reports/index.html over all runs.

report.html embeds its figures as base64 PNGs and carries its own CSS (no scripts, no
links out), so it opens from file://, survives being mailed, and prints cleanly. The index
has a little inline JavaScript: sortable columns and a side-by-side comparison of two runs.

    python -m helpers.report --index                 # rebuild reports/index.html
    python -m helpers.report --run reports/<run>     # rebuild one run's report.html
"""
from __future__ import annotations

import argparse
import base64
import html
import json
import math
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from . import artifacts, paths
from .config import Config, ConfigError, diff_from_defaults, flatten
from .runs import Run, read_json, write_text

SECTION_TITLES = {"explore": "Data", "clean": "Cleaning", "augment": "Augmentation", "tune": "Training",
                  "search": "Search", "evaluate": "Evaluation"}
STAGE_NOTEBOOKS = {"explore": "01-explore-data", "clean": "02-clean-data", "augment": "03-augment-data",
                   "tune": "04-tune-model", "evaluate": "05-evaluate-model"}

CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d232a;max-width:1060px;
 margin:0 auto;padding:1.5rem 2rem 4rem;background:#fff}
h1{font-size:1.7rem;margin:.2rem 0}h2{border-bottom:2px solid #e3e8ee;padding-bottom:.2rem;margin-top:2.2rem}
h3{font-size:1.02rem;margin:1.4rem 0 .4rem}
.sub{color:#5b6670;margin:0 0 1rem}.muted{color:#6b7680}
nav.toc{background:#f5f7fa;border:1px solid #e3e8ee;border-radius:6px;padding:.5rem 1rem;margin:1rem 0}
nav.toc ol{margin:.2rem 0;padding-left:1.3rem;columns:2}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(220px,1fr));gap:.7rem;margin:1rem 0}
.card{border:1px solid #dfe5eb;border-radius:6px;padding:.6rem .8rem;background:#fbfcfd}
.card .k{font-size:.8rem;color:#5b6670;text-transform:uppercase;letter-spacing:.03em}
.card .v{font-size:1.35rem;font-weight:600}.card .d{font-size:.82rem;color:#5b6670}
.good{color:#1a7f37}.bad{color:#b42318}
table{border-collapse:collapse;font-size:.84rem;margin:.4rem 0 1rem;width:auto;max-width:100%}
th,td{border:1px solid #e1e6ea;padding:.25rem .5rem;text-align:left;vertical-align:top;overflow-wrap:break-word}
th{background:#f1f4f7}td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
tr:nth-child(even) td{background:#fafbfc}
.scroll{overflow-x:auto}body.wide{max-width:none}td.changed{min-width:16rem}th[data-col]{cursor:pointer}
th[data-dir=asc]::after{content:" ▲"}th[data-dir=desc]::after{content:" ▼"}
figure{margin:1rem 0;text-align:center}figure img{max-width:100%;height:auto}
figcaption{font-size:.85rem;color:#4b5661;margin-top:.3rem}
.note{border-left:3px solid #8fb3d9;background:#f6f9fc;padding:.2rem .9rem;margin:.8rem 0}
code{background:#f1f3f5;padding:0 .2rem;border-radius:3px}
@media print{
 body{max-width:none;padding:0;font-size:11pt}
 nav.toc{break-after:page}
 figure,table,.card,.note,tr{break-inside:avoid;page-break-inside:avoid}
 h2,h3{break-after:avoid;page-break-after:avoid}
 .scroll{overflow:visible}
 a{color:inherit;text-decoration:none}
 .noprint{display:none}
}
"""


# ---------------------------------------------------------------- small pieces

def esc(value: Any) -> str:
    """Text made safe for HTML."""
    return html.escape("" if value is None else str(value))


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


def markdown_html(text: str) -> str:
    """Markdown to HTML with raw HTML shown as text: notes quote user data, which may hold tags."""
    import markdown

    md = markdown.Markdown(extensions=["tables", "fenced_code", "sane_lists"])
    md.preprocessors.deregister("html_block")
    md.inlinePatterns.deregister("html")
    return md.convert(text)


def image_html(path: Path, caption: str) -> str:
    """A figure with its PNG inlined as base64, so the page needs no other file."""
    if not path.is_file():
        return f'<p class="muted">missing figure: {esc(path.name)}</p>'
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure><img alt="{esc(caption or path.stem)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{esc(caption)}</figcaption></figure>")


def table_html(df: pd.DataFrame, max_rows: int, caption: str = "", empty: str = "") -> str:
    """A DataFrame as an escaped HTML table (numbers right-aligned), cut at max_rows."""
    cap = f'<p class="muted">{esc(caption)}</p>' if caption else ""
    if df.empty:
        return f'{cap}<p class="muted">({esc(empty or "no rows: nothing of this kind was found")})</p>'
    shown = df.head(max_rows)
    numeric = {c for c in shown.columns if pd.api.types.is_numeric_dtype(shown[c])}
    head = "".join(f'<th class="{"num" if c in numeric else ""}">{esc(c)}</th>' for c in shown.columns)
    body = "".join("<tr>" + "".join(f'<td class="{"num" if c in numeric else ""}">{esc(fmt(v) if not pd.isna(v) else "")}</td>'
                                    for c, v in row.items()) + "</tr>" for _, row in shown.iterrows())
    more = f'<p class="muted">{len(df) - max_rows} more rows in the CSV.</p>' if len(df) > max_rows else ""
    return f'{cap}<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>{more}'


def links_html(links: dict[str, Path]) -> str:
    """Links to local files, paths made relative to here, URL-quoted and escaped (a run name is user text)."""
    import os
    from urllib.parse import quote

    return " · ".join(f'<a href="{esc(quote(Path(os.path.relpath(path)).as_posix()))}" target="_blank">{esc(text)}</a>'
                      for text, path in links.items())


def key_values(items: dict[str, Any]) -> str:
    """A two-column table of name / value pairs (short lists shown as rounded numbers)."""
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(fmt_any(v))}</td></tr>" for k, v in items.items())
    return f"<table><tbody>{rows}</tbody></table>"


def page(title: str, body: str, script: str = "", wide: bool = False) -> str:
    """A complete HTML document with the shared CSS (wide: use the whole window, for the index)."""
    js = f"<script>{script}</script>" if script else ""
    cls = ' class="wide"' if wide else ""
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width,initial-scale=1"><title>{esc(title)}</title>'
            f'<style>{CSS}</style></head><body{cls}>{body}{js}</body></html>')


# ---------------------------------------------------------------- headline figures

def _arrow(before: float | None, after: float | None, lower_is_better: bool) -> str:
    """'before → after' with the change coloured by whether it helped."""
    if before is None or after is None:
        return esc(fmt(after if after is not None else before))
    if round(after, 2) == round(before, 2):
        return f"{fmt(before, 2)} → {fmt(after, 2)}"
    better = after < before if lower_is_better else after > before
    return f'{fmt(before, 2)} → <span class="{"good" if better else "bad"}">{fmt(after, 2)}</span>'


def headline(metrics: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(name, value HTML, detail) cards from metrics.json['evaluate']: what a reader looks at first."""
    ev = metrics.get("evaluate", {})
    cards: list[tuple[str, str, str]] = []
    if "perplexity_tuned" in ev:
        lo, hi = ev.get("perplexity_change_ci", [None, None])
        ci = f"; 95% CI {lo:+.1f}% to {hi:+.1f}%" if lo is not None else ""
        cards.append(("perplexity base → tuned", _arrow(ev.get("perplexity_base"), ev["perplexity_tuned"], True),
                      f"{ev.get('perplexity_change_pct', 0):+.1f}%{ci}; {ev.get('tokens', '?')} answer tokens, "
                      f"{ev.get('examples', '?')} test chats"))
        for key, label, lower in (("rougeL", "ROUGE-L", False), ("bleu", "BLEU", False),
                                  ("semantic_similarity", "answer similarity", False)):
            q = ev.get("quality", {})
            if f"{key}_tuned" in q:
                cards.append((f"{label} base → tuned", _arrow(q.get(f"{key}_base"), q[f"{key}_tuned"], lower),
                              f"{q.get('answers', '?')} generated answers vs the reference"))
        lat = ev.get("latency", {})
        if "ms_per_answer_tuned" in lat:
            cards.append(("ms per answer base → tuned", _arrow(lat.get("ms_per_answer_base"), lat["ms_per_answer_tuned"], True),
                          f"{fmt(lat.get('tokens_per_s_tuned'), 1)} generated tokens/s tuned"))
    if "accuracy" in ev:
        for key, label in (("accuracy", "accuracy"), ("macro_f1", "macro F1"), ("macro_auc", "macro AUC")):
            lo, hi = ev.get(f"{key}_ci", [None, None])
            ci = f"95% CI {lo:.3f} – {hi:.3f}; " if lo is not None else ""
            cards.append((label, esc(fmt(ev[key])), f"{ci}baseline {fmt(ev.get(f'baseline_{key}'))}"))
        cards.append(("test examples", esc(ev.get("examples", "?")), "TF-IDF + logistic regression is the baseline"))
    return cards


def cards_html(cards: list[tuple[str, str, str]]) -> str:
    """The headline cards as a grid."""
    if not cards:
        return '<p class="muted">No evaluation figures yet: run 05-evaluate-model.</p>'
    return '<div class="cards">' + "".join(
        f'<div class="card"><div class="k">{esc(k)}</div><div class="v">{v}</div><div class="d">{esc(d)}</div></div>'
        for k, v, d in cards) + "</div>"


# ---------------------------------------------------------------- using the model

USE_TEMPLATE = """
<p>The tuned model is in <code>{{ final }}</code> (merged, plain transformers). From the repo:</p>
<table><tbody>{% for cmd, what in commands %}<tr><td><code>{{ cmd }}</code></td><td>{{ what }}</td></tr>{% endfor %}
</tbody></table>
{% for title, code in snippets %}<h3>{{ title }}</h3><pre><code>{{ code }}</code></pre>{% endfor %}
"""


def run_path(run: Run) -> str:
    """The run folder as the make commands take it: relative to the repo, else in full."""
    try:
        return str(run.dir.resolve().relative_to(paths.ROOT))
    except ValueError:  # a run outside the repo
        return str(run.dir.resolve())


def use_commands(run: Run, task: str) -> list[tuple[str, str]]:
    """This run's make commands and what each does, the run's path shell-quoted."""
    import shlex

    r = shlex.quote(f"RUN={run_path(run)}")
    if task == "chat":
        return [(f"make chat {r}", "chat with it in the terminal (its own template and system prompt)"),
                (f"make serve {r}", "an OpenAI-compatible API on http://127.0.0.1:8000/v1"),
                (f"make export {r}", "export/: safetensors, model.gguf (f16; QUANT=q8_0), Ollama Modelfile, check.json")]
    return [(f"make predict {r} INPUT=new.csv", "label a CSV or JSONL of texts: label, confidence, each class's "
                                                "probability, and the rows that could not be read"),
            (f"make export {r}", "export/: the merged classifier (safetensors) to copy elsewhere")]


def use_snippets(run: Run, task: str, system: str | None) -> list[tuple[str, str]]:
    """Python snippets for this run: the OpenAI client on make serve (chat), a transformers pipeline."""
    final = f"{run_path(run)}/model/final"
    if task != "chat":
        return [("transformers pipeline", "from transformers import pipeline\n\n"
                 f"classify = pipeline(\"text-classification\", model={final!r}, top_k=None)\n"
                 "print(classify(\"The flight was on time and the crew was lovely.\"))")]
    msgs = ([f"{{\"role\": \"system\", \"content\": {system!r}}}"] if system else []) + \
        ['{"role": "user", "content": "Hello! What can you do?"}']
    messages = "messages = [\n    " + ",\n    ".join(msgs) + ",\n]\n"
    return [("OpenAI client (with make serve running)", "from openai import OpenAI\n\n" + messages +
             "client = OpenAI(base_url=\"http://127.0.0.1:8000/v1\", api_key=\"not-needed\")\n"
             f"reply = client.chat.completions.create(model={run.dir.name!r}, messages=messages)\n"
             "print(reply.choices[0].message.content)"),
            ("transformers pipeline", "from transformers import pipeline\n\n" + messages +
             f"chat = pipeline(\"text-generation\", model={final!r})\n"
             "print(chat(messages, max_new_tokens=128)[0][\"generated_text\"][-1][\"content\"])")]


def use_html(run: Run, cfg: Config | None) -> str:
    """The "Use this model" section: this run's commands and snippets (Jinja2, autoescaped)."""
    import jinja2

    from . import chat, data

    task = cfg.experiment.task if cfg else "chat"
    if not (run.model / "final" / "config.json").is_file():
        return '<p class="muted">No tuned model yet: run 04-tune-model.</p>'
    system = None
    if task == "chat" and (run.data / "train.jsonl").is_file():
        system = chat.system_prompt(data.read_jsonl(run.data / "train.jsonl"))
    env = jinja2.Environment(autoescape=True)
    return env.from_string(USE_TEMPLATE).render(final=f"{run.dir.name}/model/final", commands=use_commands(run, task),
                                                snippets=use_snippets(run, task, system))


# ---------------------------------------------------------------- one run

def _run_config(run: Run) -> Config | None:
    """The run's config, or None where this version of the code cannot read it."""
    try:
        return run.config()
    except (ConfigError, OSError):
        return None


def manifest_html(run: Run, cfg: Config | None, manifest: dict[str, Any]) -> str:
    """The run's record: what changed from the defaults, seed, versions, commit, stage timings."""
    dirty = " (uncommitted changes)" if manifest.get("git_dirty") else ""
    facts = {"experiment": manifest.get("experiment"), "task": manifest.get("task"), "created": manifest.get("created"),
             "seed": manifest.get("seed"), "git commit": f"{manifest.get('git_commit') or 'not a git checkout'}{dirty}",
             "python": manifest.get("python"), "machine": ", ".join(f"{k}: {v}" for k, v in manifest.get("machine", {}).items() if v),
             "run folder": run.dir.name}
    out = [key_values(facts)]
    if cfg is not None:
        changed = diff_from_defaults(cfg)
        defaults = flatten(Config().model_dump(mode="json"))
        diff = pd.DataFrame([{"param": k, "value": json.dumps(v), "default": json.dumps(defaults.get(k))}
                             for k, v in changed.items()], columns=["param", "value", "default"])
        out.append("<h3>Params changed from the defaults</h3>" + table_html(diff, 500))
    else:
        out.append('<p class="muted">config.yaml cannot be read by this version of the code.</p>')
    stages = manifest.get("stages", {})
    if stages:
        # The report is written by stage 06 itself, so that stage is still running here.
        st = pd.DataFrame([{"stage": k, "seconds": v.get("seconds"),
                            "status": "writing this page" if k.startswith("06-") and v.get("status") == "running"
                            else v.get("status", ""),
                            "reused from": v.get("reused_from", ""),
                            "error": v.get("error", "")} for k, v in stages.items()])
        st = st.drop(columns=[c for c in ("reused from", "error") if not st[c].any()])
        out.append("<h3>Stages</h3>" + table_html(st, 50))
    packages = {k: v for k, v in manifest.get("packages", {}).items() if v}
    if packages:
        out.append("<h3>Package versions</h3>" + key_values(packages))
    notebooks = sorted(run.notebooks.glob("*.html")) if run.notebooks.is_dir() else []
    if notebooks:
        links = ", ".join(f'<a href="notebooks/{esc(p.name)}">{esc(p.stem)}</a>' for p in notebooks)
        out.append(f'<p class="noprint">Executed notebooks (code included) in the run folder: {links}</p>')
    return "".join(out)


def stage_html(run: Run, stage: str, entries: list[dict], stage_metrics: dict, max_rows: int) -> str:
    """One stage's figures, tables and notes in registration order, then its scalar metrics."""
    parts = []
    for e in entries:
        title = f"<h3>{esc(e['name'].replace('-', ' ').replace('_', ' '))}</h3>"
        if e["kind"] == "figure":
            parts.append(title + image_html(run.dir / e["path"], e.get("caption", "")))
        elif e["kind"] == "table":
            path = run.dir / e["path"]
            if path.is_file():
                body = table_html(artifacts.read_table(path), max_rows, e.get("caption", ""), e.get("empty", ""))
            else:
                body = f'<p class="muted">missing table: {esc(path.name)}</p>'
            parts.append(title + body)
        elif e["kind"] == "note":
            parts.append(f'<div class="note">{markdown_html(e.get("markdown", ""))}</div>')
    scalars = {k: v for k, v in flatten(stage_metrics).items()
               if not isinstance(v, (list, dict)) or (isinstance(v, list) and len(v) <= 4)}
    if scalars:
        parts.append("<h3>Figures recorded in metrics.json</h3>" + key_values(scalars))
    if not parts:
        parts.append('<p class="muted">This stage registered nothing (not run, or skipped by its params).</p>')
    return "".join(parts)


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
    toc = ['<li><a href="#headline">Headline</a></li>', '<li><a href="#use">Use this model</a></li>',
           '<li><a href="#run">The run</a></li>']
    body = []
    for s in stages:
        toc.append(f'<li><a href="#{esc(s)}">{esc(SECTION_TITLES.get(s, s.title()))}</a></li>')
        t = timings.get(STAGE_NOTEBOOKS.get(s, ""), timings.get(s, {}))
        when = f' <span class="muted">({fmt(t.get("seconds"), 1)} s, {esc(t.get("status", ""))})</span>' if t else ""
        if t.get("reused_from"):  # helpers.reuse copied this stage from an earlier run
            when += (f' <span class="muted">reused from <a href="../{esc(t["reused_from"])}/report.html">'
                     f'{esc(t["reused_from"])}</a></span>')
        body.append(f'<section id="{esc(s)}"><h2>{esc(SECTION_TITLES.get(s, s.title()))}{when}</h2>'
                    f'{stage_html(run, s, [e for e in items if e["stage"] == s], metrics.get(s, {}), max_rows)}</section>')
    html_text = page(f"{title}: tunebook report", (
        f"<header><h1>{esc(title)}</h1><p class=\"sub\">{esc(manifest.get('task', ''))} run "
        f"<code>{esc(run.dir.name)}</code>, created {esc(manifest.get('created', '?'))}</p></header>"
        f'<nav class="toc"><strong>Contents</strong><ol>{"".join(toc)}</ol></nav>'
        f'<section id="headline"><h2>Headline</h2>{cards_html(headline(metrics))}</section>'
        f'<section id="use"><h2>Use this model</h2>{use_html(run, cfg)}</section>'
        f'<section id="run"><h2>The run</h2>{manifest_html(run, cfg, manifest)}</section>' + "".join(body)))
    path = out or run.dir / "report.html"
    write_text(path, html_text)
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


INDEX_COLUMNS = [("run", "Run", False), ("experiment", "Experiment", False), ("task", "Task", False),
                 ("created", "Created", False), ("perplexity_base", "Perplexity base", True),
                 ("perplexity_tuned", "Perplexity tuned", True), ("perplexity_change_pct", "Δ perplexity %", True),
                 ("accuracy", "Accuracy", True), ("macro_f1", "Macro F1", True), ("macro_auc", "Macro AUC", True),
                 ("baseline", "Baseline acc / F1", True), ("changed", "Changed from defaults", False)]

INDEX_JS = r"""
const runs = JSON.parse(document.getElementById('runs-data').textContent);
const table = document.getElementById('runs');
table.querySelectorAll('th[data-col]').forEach((th, col) => th.addEventListener('click', () => {
  const body = table.tBodies[0], rows = Array.from(body.rows);
  const asc = th.dataset.dir !== 'asc';
  table.querySelectorAll('th').forEach(h => delete h.dataset.dir);
  th.dataset.dir = asc ? 'asc' : 'desc';
  const key = r => { const c = r.cells[col + 1]; const v = c.dataset.sort ?? c.textContent;
                     return th.dataset.num ? (v === '' ? NaN : parseFloat(v)) : v.toLowerCase(); };
  rows.sort((a, b) => { const x = key(a), y = key(b);
    if (th.dataset.num) { if (isNaN(x)) return 1; if (isNaN(y)) return -1; return asc ? x - y : y - x; }
    return asc ? x.localeCompare(y) : y.localeCompare(x); });
  rows.forEach(r => body.appendChild(r));
}));
const boxes = Array.from(document.querySelectorAll('input.pick'));
function compare() {
  const picked = boxes.filter(b => b.checked).map(b => runs[b.value]);
  const out = document.getElementById('compare');
  if (picked.length !== 2) { out.innerHTML = '<p class="muted">Tick two runs to compare them (' + picked.length + ' ticked).</p>'; return; }
  const [a, b] = picked, keys = Array.from(new Set([...Object.keys(a.compare), ...Object.keys(b.compare)])).sort();
  const show = v => v === undefined || v === null ? '' : (typeof v === 'number' ? (Number.isInteger(v) ? v : parseFloat(v.toPrecision(4))) : JSON.stringify(v));
  const esc = s => String(s).replace(/[&<>"]/g, c => ({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'}[c]));
  const rows = keys.filter(k => k.startsWith('metric: ') || show(a.compare[k]) !== show(b.compare[k]))
    .map(k => '<tr><th>' + esc(k) + '</th><td class="num">' + esc(show(a.compare[k])) + '</td><td class="num">' + esc(show(b.compare[k])) + '</td></tr>');
  out.innerHTML = '<table><thead><tr><th>metric / param that differs</th><th>' + esc(a.run) + '</th><th>' + esc(b.run) +
    '</th></tr></thead><tbody>' + rows.join('') + '</tbody></table>';
}
boxes.forEach(b => b.addEventListener('change', compare));
// index.html#compare=RUN_A,RUN_B opens with those two ticked: a comparison can be shared as a link.
const wanted = decodeURIComponent(location.hash).replace(/^#compare=/, '').split(',');
boxes.forEach(b => { if (wanted.includes(runs[b.value].run)) b.checked = true; });
compare();
document.body.dataset.ready = 'yes';
"""


def _index_row(i: int, s: dict[str, Any]) -> str:
    """One run as a row of the index table; data-sort holds the raw number for sorting."""
    m = s["metrics"]
    name = f'<a href="{esc(s["run"])}/report.html">{esc(s["run"])}</a>' if s["report"] else esc(s["run"])
    if s["failed"]:
        name += f' <span class="bad">failed: {esc(", ".join(s["failed"]))}</span>'
    if s.get("sweep"):  # a sweep's runs stand together (_group_sweeps), each linking the sweep page
        t = s["sweep"]
        name += (f'<br><small>sweep <a href="{esc(t.get("page", ""))}">{esc(t.get("id", ""))}</a> '
                 f'#{esc(t.get("index", 0) + 1)}/{esc(t.get("variants", "?"))}</small>')
    cells = [name, esc(s["experiment"]), esc(s["task"]), esc(s["created"].replace("T", " "))]
    nums = []
    for key in ("perplexity_base", "perplexity_tuned", "perplexity_change_pct", "accuracy", "macro_f1", "macro_auc"):
        v = m.get(key)
        nums.append((v, esc(fmt(v, 2 if "perplexity" in key else 3)) if v is not None else ""))
    base = m.get("baseline_accuracy")
    nums.append((base, f"{fmt(base)} / {fmt(m.get('baseline_macro_f1'))}" if base is not None else ""))
    changed = "<br>".join(esc(f"{k}: {json.dumps(v)}") for k, v in s["changed"].items())
    tds = "".join(f"<td>{c}</td>" for c in cells)
    tds += "".join(f'<td class="num" data-sort="{"" if v is None else v}">{text}</td>' for v, text in nums)
    tds += f'<td class="changed"><small>{changed}</small></td>'
    return f'<tr><td><input type="checkbox" class="pick" value="{i}" aria-label="compare"></td>{tds}</tr>'


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
    summaries = sorted((run_summary(p.parent) for p in reports_dir.glob("*/config.yaml")),
                       key=lambda s: (s["created"], s["run"]), reverse=True)
    head = "<th></th>" + "".join(f'<th data-col="{k}"{" data-num=1" if num else ""} title="click to sort">{esc(t)}</th>'
                                 for k, t, num in INDEX_COLUMNS)
    summaries = _group_sweeps(summaries)
    rows = "".join(_index_row(i, s) for i, s in enumerate(summaries))
    data = json.dumps([{"run": s["run"], "compare": s["compare"]} for s in summaries], default=str)
    data = data.replace("</", "<\\/")  # a run name or param holding </script> must not end the block
    body = (f"<h1>tunebook runs</h1><p class=\"sub\">{len(summaries)} runs under <code>{esc(reports_dir)}</code>. "
            f"Click a column to sort; tick two runs to compare them.</p>"
            f'<div class="scroll"><table id="runs"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>'
            f'<h2>Compare two runs</h2><div id="compare"><noscript>Comparing needs JavaScript.</noscript></div>'
            f'<script type="application/json" id="runs-data">{data}</script>')
    path = reports_dir / "index.html"
    write_text(path, page("tunebook runs", body, INDEX_JS, wide=True))
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
