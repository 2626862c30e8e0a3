"""report.html and reports/index.html: self-contained, escaped, complete; checked in a real browser."""
import html
import json
import re
import shlex
import shutil
import subprocess

import pandas as pd
import pytest

from helpers import artifacts, data, paths, plots, report, runs
from helpers.config import load_config

CHAT_METRICS = {"task": "chat", "examples": 6, "tokens": 349, "perplexity_base": 22.0, "perplexity_tuned": 11.0,
                "perplexity_base_ci": [18.0, 26.0], "perplexity_tuned_ci": [9.0, 13.0],
                "perplexity_change_pct": -50.0, "perplexity_change_ci": [-55.0, -45.0],
                "quality": {"answers": 2, "rougeL_base": 0.1, "rougeL_tuned": 0.3}}
CLS_METRICS = {"task": "classification", "examples": 45, "accuracy": 0.8, "accuracy_ci": [0.7, 0.9],
               "macro_f1": 0.7, "macro_f1_ci": [0.6, 0.8], "macro_auc": 0.9, "macro_auc_ci": [0.85, 0.95],
               "baseline_accuracy": 0.6, "baseline_macro_f1": 0.5, "baseline_macro_auc": 0.7}


def make_run(params: str, evaluate: dict, overrides: dict | None = None) -> runs.Run:
    """A run folder with one artifact of each kind, stage timings and evaluation metrics."""
    run = runs.create_run(load_config(params, overrides))
    fig, ax = plots.plt.subplots()
    ax.plot([0, 1], [1, 0])
    artifacts.figure(run, "tune", "loss", fig, "Training loss per step")
    artifacts.table(run, "evaluate", "summary", pd.DataFrame({"model": ["tuned", "<b>base</b>"], "score": [0.81234, 0.5]}),
                    "Scores")
    artifacts.note(run, "clean", "finding", "Dropped **2** rows with <script>alert(1)</script> in them.")
    runs.record_stage(run, "04-tune-model", seconds=12.5, status="ok")
    runs.record_stage(run, "05-evaluate-model", seconds=3.0, status="ok")
    runs.record_metrics(run, "evaluate", evaluate)
    return run


@pytest.fixture
def chat_run(reports):
    return make_run("params/smoke.yaml", CHAT_METRICS)


def test_report_is_one_self_contained_escaped_page(chat_run):
    page = report.render_run(chat_run).read_text()
    assert page.count("data:image/png;base64,") == 1 and "Training loss per step" in page
    assert "<script" not in page and not re.search(r'(src|href)="(https?:)?//', page)  # nothing external
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<strong>2</strong>" in page  # markdown, raw HTML as text
    assert "&lt;b&gt;base&lt;/b&gt;" in page and ">0.812<" in page
    for anchor in ("headline", "run", "clean", "tune", "evaluate"):
        assert f'href="#{anchor}"' in page and f'id="{anchor}"' in page
    assert "@media print" in page and "break-inside:avoid" in page


def test_report_shows_manifest_params_diff_and_timings(chat_run):
    page = report.render_run(chat_run).read_text()
    # The changed values as JSON, their quotes escaped (Jinja's autoescape writes " as &#34;).
    assert "data.source" in page and "&#34;support&#34;" in page and "&#34;chatterbot&#34;" in page
    assert "git commit" in page and "transformers" in page
    assert "04-tune-model" in page and "12.5" in page
    assert "Training <span class=\"muted\">(12.5 s, ok)</span>" in page


def test_headline_cards_by_hand():
    chat = dict((k, (v, d)) for k, v, d in report.headline({"evaluate": CHAT_METRICS}))
    value, detail = chat["perplexity base → tuned"]
    assert value == '22 → <span class="good">11</span>' and detail.startswith("-50.0%; 95% CI -55.0% to -45.0%")
    assert chat["ROUGE-L base → tuned"][0] == '0.1 → <span class="good">0.3</span>'
    cls = dict((k, (v, d)) for k, v, d in report.headline({"evaluate": CLS_METRICS}))
    assert cls["accuracy"] == ("0.8", "95% CI 0.700 – 0.900; baseline 0.6")
    assert report.headline({}) == []
    tune = {"steps": 228, "steps_rule": "time budget", "time_budget_minutes": 2.0, "epochs_trained": 3.65,
            "step_seconds": 114.0, "stopped_early": True, "best_step": 150, "seconds_per_step": 0.5,
            "step_time_vs_01_estimate": 1.08, "eval_rows": 1436}
    value, detail = dict((k, (v, d)) for k, v, d in report.headline({"tune": tune}))["training steps"]
    assert value == "228" and detail == ("set by time budget (2 min); 3.65 epochs; 1.9 min in optimizer steps; "
                                         "validated on a sample of 1,436 rows; "
                                         "stopped early (best step 150); 0.5 s per step, 1.08x 01's estimate")
    cls = dict((k, (v, d)) for k, v, d in report.headline({"evaluate": {**CLS_METRICS, "single_accuracy": 0.75},
                                                           "tune": {**tune, "ensemble": {"members": 3}}}))
    assert cls["accuracy"][1].endswith("; one model of the ensemble 0.75")
    assert cls["training steps"][1].startswith("set by time budget (2 min); planned for each of 3 ensemble members")


def test_report_and_notebook_table_say_whether_tuning_helped_and_what_to_try(chat_run):
    runs.write_json(chat_run.model / "log_history.json", [{"step": 0, "eval_loss": 3.3}, {"step": 3, "eval_loss": 3.1},
                                                          {"step": 6, "eval_loss": 2.9}])
    runs.record_metrics(chat_run, "tune", {"steps": 6, "step_seconds": 12.0, "stopped_early": False})
    page = report.render_run(chat_run).read_text()
    assert '<span class="good">Helped</span> Tuning helped: test perplexity -50.0%' in page
    assert '<span class="warn">Check</span> Under-trained' in page and "<code>tune.max_steps</code>" in page
    table = report.verdicts_table(chat_run)
    assert list(table["verdict"]) == ["helped", "check"] and "tune.max_steps" in table["params to change"][1]


def test_headline_table_is_plain_text_for_notebook_06():
    table = report.headline_table({"evaluate": CHAT_METRICS}).set_index("figure")
    assert list(table.loc["perplexity base → tuned", ["value", "change"]]) == ["22 → 11", "better"]
    assert list(table.loc["ROUGE-L base → tuned", ["value", "change"]]) == ["0.1 → 0.3", "better"]
    assert not table.map(lambda v: "<" in v).any().any()  # no markup for a notebook to print
    cls = report.headline_table({"evaluate": CLS_METRICS}).set_index("figure")
    assert list(cls.loc["accuracy", ["value", "change"]]) == ["0.8", ""]
    assert report.headline_table({}).empty


def test_fmt_reads_well():
    assert [report.fmt(v) for v in (3.0, 0.81234, 2e-4, float("nan"), None, "x")] == ["3", "0.812", "0.0002", "", "", "x"]


def test_index_lists_runs_with_metrics_links_and_changes(reports):
    chat = make_run("params/smoke.yaml", CHAT_METRICS)
    cls = make_run("params/smoke-sentiment.yaml", CLS_METRICS, {"tune.learning_rate": 1e-4})
    report.render_run(cls)
    page = report.write_index(reports).read_text()
    assert f'href="{cls.dir.name}/report.html"' in page and f'href="{chat.dir.name}/report.html"' not in page
    assert 'data-sort="0.8"' in page and 'data-sort="-50.0"' in page
    assert "tune.learning_rate: 0.0001" in page
    data = json.loads(re.search(r'<script type="application/json" id="runs-data">(.*?)</script>', page, re.S).group(1))
    assert {d["run"] for d in data} == {chat.dir.name, cls.dir.name}
    assert data[0]["run"] == cls.dir.name  # newest first


def test_index_survives_an_unreadable_config(reports):
    run = make_run("params/smoke.yaml", CHAT_METRICS)
    run.config_file.write_text("experiment: {name: x, colour: blue}\n")  # a key this version does not know
    page = report.write_index(reports).read_text()
    assert run.dir.name in page
    assert "cannot be read" in report.render_run(run).read_text()


def test_command_line_rebuilds_the_index(reports, capsys):
    make_run("params/smoke.yaml", CHAT_METRICS)
    assert report.main(["--index", "--reports", str(reports)]) == 0
    assert (reports / "index.html").is_file() and "index.html" in capsys.readouterr().out


# ---------------------------------------------------------------- in a real browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
needs_browser = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install chromium) "
                                                             "to load the pages in a headless browser")


def headless(tmp_path, *args: str) -> subprocess.CompletedProcess:
    """Run headless Chromium offline with a throwaway profile."""
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


@needs_browser
def test_report_renders_and_prints_in_chromium(chat_run, tmp_path):
    page = report.render_run(chat_run)
    shot, pdf = tmp_path / "report.png", tmp_path / "report.pdf"
    headless(tmp_path, "--hide-scrollbars", "--window-size=1100,1400", f"--screenshot={shot}", page.as_uri())
    headless(tmp_path, "--no-pdf-header-footer", f"--print-to-pdf={pdf}", page.as_uri())
    from PIL import Image

    img = Image.open(shot).convert("L")
    assert img.size == (1100, 1400) and img.getextrema()[0] < 100  # dark text was drawn on the white page
    assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 20_000  # the embedded figure made it into print


@needs_browser
def test_index_script_runs_and_compares_two_runs_in_chromium(reports, tmp_path):
    a = make_run("params/smoke.yaml", CHAT_METRICS)
    b = make_run("params/smoke.yaml", CHAT_METRICS, {"tune.learning_rate": 1e-4})
    index = report.write_index(reports)
    dom = headless(tmp_path, "--dump-dom", f"{index.as_uri()}#compare={a.dir.name},{b.dir.name}").stdout
    assert 'data-ready="yes"' in dom  # the inline script ran to the end without an error
    compare = dom[dom.index('id="compare"'):dom.index('id="runs-data"')]
    assert "param: tune.learning_rate" in compare and "0.0002" in compare and "0.0001" in compare
    assert "param: data.source" not in compare  # only what differs between the two runs


def test_empty_tables_render_with_the_stage_reason(chat_run):
    # A chat file without topics makes no per-group columns: pandas writes such a frame as one
    # newline, which read_csv refuses. An empty table is a result, and the page says why.
    artifacts.table(chat_run, "explore", "2-grams-per-group", pd.DataFrame(), "Per group", empty="No groups: no topic")
    artifacts.table(chat_run, "explore", "near-duplicates", pd.DataFrame(columns=["a", "b"]), "Pairs")
    assert (chat_run.dir / "tables" / "explore-2-grams-per-group.csv").stat().st_size <= 2
    page = report.render_run(chat_run).read_text()
    assert "(No groups: no topic)" in page and "(no rows: nothing of this kind was found)" in page
    entries = {e["name"]: e for e in json.loads((chat_run.dir / "artifacts.json").read_text())}
    assert entries["2-grams-per-group"]["rows"] == 0 and entries["summary"]["rows"] == 2


def test_use_this_model_gives_the_runs_commands_and_snippets_escaped(reports, monkeypatch):
    # experiment.name is a checked slug, but the folder runs live in is the user's: a hostile one
    # must not break out of the page or the shell command either.
    monkeypatch.setattr(paths, "REPORTS", reports.parent / "bot'\"<b>")
    run = make_run("params/smoke.yaml", CHAT_METRICS)
    (run.model / "final").mkdir()
    (run.model / "final" / "config.json").write_text("{}")
    data.write_jsonl(run.data / "train.jsonl", [{"messages": [{"role": "system", "content": "Be <kind>."},
                                                                {"role": "user", "content": "q"}]}])
    page = report.render_run(run).read_text()
    use = page[page.index('<section id="use">'):page.index('<section id="run">')]
    assert 'href="#use"' in page and "<b>" not in use and "&lt;b&gt;" in use  # nothing breaks out
    assert "'RUN=" not in use and '"' not in re.sub(r'"[^"<>]*"', "", use)  # quotes only as entities in text
    for target in ("chat", "serve", "export"):
        (cmd,) = re.findall(rf"<code>(make {target} .*?)</code>", use)
        assert shlex.split(html.unescape(cmd)) == ["make", target, f"RUN={report.run_path(run)}"]
    code = [html.unescape(c) for c in re.findall(r"<pre><code>(.*?)</code></pre>", use, re.S)]
    assert len(code) == 2 and 'base_url="http://127.0.0.1:8000/v1"' in code[0] and "pipeline(" in code[1]
    for c in code:
        compile(c, "snippet", "exec")  # valid Python whatever the run is called
    assert f"model={run.dir.name!r}" in code[0] and "'Be <kind>.'" in code[0]


def test_use_this_model_for_a_classifier_is_predict(reports):
    run = make_run("params/smoke-sentiment.yaml", CLS_METRICS)
    (run.model / "final").mkdir()
    (run.model / "final" / "config.json").write_text("{}")
    use = report.use_html(run, run.config())
    assert "make predict " in use and "INPUT=new.csv" in use and "make serve" not in use
    assert "text-classification" in use and "OpenAI" not in use
    # smoke-sentiment is an ensemble of two: the snippet averages both folders (test_ensemble runs it)
    assert "ensemble of 2 classifiers" in use and use.count("/final&#39;,") == 2
    single = make_run("params/smoke-sentiment.yaml", CLS_METRICS, {"tune.ensemble": 1})
    (single.model / "final").mkdir()
    (single.model / "final" / "config.json").write_text("{}")
    use = report.use_html(single, single.config())
    assert "ensemble" not in use and "model/members" not in use and "text-classification" in use


EVIL = "<script>alert(1)</script>"


def test_hostile_text_anywhere_comes_out_escaped(reports):
    # User text reaches the pages through notes, table cells, column names, captions, empty
    # reasons, the report title, a stage's error and the index: none of it may become markup.
    run = make_run("params/smoke.yaml", CHAT_METRICS, {"report.title": EVIL})
    fig, ax = plots.plt.subplots()
    ax.plot([0, 1])
    artifacts.figure(run, "explore", "hostile-figure", fig, f'caption {EVIL} "quoted"')
    artifacts.table(run, "explore", "hostile", pd.DataFrame({EVIL: [EVIL, "<img src=x onerror=alert(2)>"]}), EVIL)
    artifacts.table(run, "explore", "hostile-empty", pd.DataFrame(), "empty", empty=EVIL)
    artifacts.note(run, "explore", "hostile-note", f"A user wrote {EVIL} and <img src=x onerror=alert(3)>.")
    runs.record_stage(run, "02-clean-data", status="failed", error=EVIL)
    runs.record_metrics(run, "explore", {"example": EVIL})
    page = report.render_run(run).read_text()
    assert "<script" not in page and "<img src=x" not in page
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;"
    assert page.count(escaped) >= 10  # title x2, figure alt and caption, column, cell, caption, empty, note, error, metric
    assert f"<title>{escaped}: tunebook report</title>" in page and f"<h1>{escaped}</h1>" in page
    assert f'alt="caption {escaped} &#34;quoted&#34;"' in page  # inside an attribute too
    assert f'<p class="muted">({escaped})</p>' in page and f'<td class="">{escaped}</td>' in page
    assert f'<th class="">{escaped}</th>' in page and "&lt;img src=x onerror=alert(3)&gt;" in page
    index = report.write_index(reports).read_text()
    rows = index[index.index("<tbody>"):index.index("</tbody>")]
    assert "<script" not in rows and f"report.title: &#34;{escaped}&#34;" in rows
    data = re.search(r'<script type="application/json" id="runs-data">(.*?)</script>', index, re.S).group(1)
    assert "</script" not in data and json.loads(data)[0]["compare"]["param: report.title"] == EVIL
