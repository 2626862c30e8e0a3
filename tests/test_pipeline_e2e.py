"""End to end: the six notebooks through Papermill on the smoke profiles, real bundled models."""
import html as htmllib
import json
import math
import re

import nbformat
import numpy as np
import pandas as pd
import pytest

from helpers import ensemble, paths, pipeline, stagerun
from helpers.runs import Run

pytestmark = pytest.mark.slow


def artifact(folder, name, kind):
    entries = json.loads((folder / "artifacts.json").read_text())
    return next(e for e in entries if e["name"] == name and e["kind"] == kind)


def assert_only_task(folder, task):
    """The executed notebooks and their HTML hold the run's task-tagged cells and none of the other task's:
    no cell, no heading, no "only: skipped" line (the source notebooks have both, e.g. 05)."""
    other = {"chat": "classification", "classification": "chat"}[task]
    seen_other = 0
    for name in pipeline.NOTEBOOKS:
        source = nbformat.read(paths.NOTEBOOKS / f"{name}.ipynb", as_version=4).cells
        executed = nbformat.read(folder / "notebooks" / f"{name}.ipynb", as_version=4).cells
        page = (folder / "notebooks" / f"{name}.html").read_text()
        ran = [c.source for c in executed]
        own = [c.source for c in source if task in stagerun.cell_tasks(c)]
        assert all(s in ran for s in own), f"{name}: a {task} cell is missing from the {task} run"
        for cell in (c for c in source if stagerun.cell_tasks(c) == {other}):
            seen_other += 1
            assert cell.source not in ran, f"{name}: a {other} cell was executed in a {task} run"
            for heading in re.findall(r"^#+ (.+)$", cell.source, re.M):
                assert htmllib.escape(heading, quote=False) not in page, f"{name}.html shows {heading!r}"
        outputs = "".join(o.get("text", "") for c in executed for o in c.get("outputs", []))
        assert "only: skipped" not in outputs and "only (and" not in outputs, name
    assert seen_other, f"no notebook has {other}-only cells: the check above checked nothing"


def test_chat_smoke_end_to_end(smoke_chat_run):
    folder, reports = smoke_chat_run, smoke_chat_run.parent  # `make pipeline EXP=params/smoke.yaml`, once a session
    stages = json.loads((folder / "manifest.json").read_text())["stages"]
    assert [s for s in pipeline.NOTEBOOKS if stages[s]["status"] == "ok"] == pipeline.NOTEBOOKS
    for name in pipeline.NOTEBOOKS:  # the executed notebooks and their HTML are the record
        assert (folder / "notebooks" / f"{name}.html").stat().st_size > 0
    # Nothing silently lost: every loaded row is kept or rejected with a reason.
    clean = json.loads((folder / "metrics.json").read_text())["clean"]
    assert clean["input"] == clean["kept"] + sum(clean["dropped"].values())
    # The perplexity table: base and tuned, finite, with token counts, and in the report.
    ppl = pd.read_csv(folder / artifact(folder, "perplexity", "table")["path"])
    numbers = ppl.select_dtypes("number").to_numpy().ravel()
    assert len(ppl) >= 1 and numbers.size and all(math.isfinite(x) for x in numbers)
    m = json.loads((folder / "metrics.json").read_text())["evaluate"]
    assert math.isfinite(m["perplexity_base"]) and math.isfinite(m["perplexity_tuned"]) and m["tokens"] > 0
    html = (folder / "report.html").read_text()
    assert re.search(r"<table.*?[Pp]erplexity", html, re.S)
    assert html.count("data:image/png;base64,") >= 3  # word cloud, loss curve, perplexity chart...
    assert 'alt="' in html and "wordcloud" in html.lower().replace(" ", "")
    assert (folder / "model" / "final" / "model.safetensors").is_file()
    assert (reports / "index.html").is_file() and folder.name in (reports / "index.html").read_text()
    assert_only_task(folder, "chat")
    evaluated = nbformat.read(folder / "notebooks" / "05-evaluate-model.ipynb", as_version=4)  # figures inline
    assert any("image/png" in o.get("data", {}) for c in evaluated.cells for o in c.get("outputs", []))


def test_classification_smoke_end_to_end(smoke_classifier_run):
    folder = smoke_classifier_run  # `make pipeline EXP=params/smoke-sentiment.yaml`, once a session
    metrics = json.loads((folder / "metrics.json").read_text())
    # smoke-sentiment: a 300-tweet seeded subsample split 80/10/10, stratified.
    test_rows = (folder / "data" / "test.jsonl").read_text().splitlines()
    assert metrics["clean"]["input"] == 300 and len(test_rows) == metrics["evaluate"]["examples"]
    predictions = [json.loads(line) for line in (folder / "data" / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == len(test_rows)
    assert {p["label"] for p in predictions} == {"negative", "neutral", "positive"}
    m = metrics["evaluate"]
    hand_accuracy = sum(p["predicted"] == p["label"] for p in predictions) / len(predictions)
    assert abs(m["accuracy"] - hand_accuracy) < 1e-9  # the headline is what the predictions say
    for key in ("macro_f1", "macro_auc", "baseline_accuracy"):
        assert 0.0 <= m[key] <= 1.0, key
    html = (folder / "report.html").read_text()
    roc = artifact(folder, "roc", "figure")
    assert (folder / roc["path"]).stat().st_size > 0
    assert "roc" in html.lower() and "wordcloud" in html.lower().replace(" ", "")
    assert_only_task(folder, "classification")
    # smoke-sentiment trains an ensemble of two (tune.ensemble): 04's cell trained the second member, 05
    # scored their average as "tuned" and model/final alone as "single", and the report says both.
    cfg = Run(folder).config()
    assert metrics["tune"]["ensemble"]["seeds"] == [cfg.experiment.seed, cfg.experiment.seed + 1]
    assert (folder / artifact(folder, "ensemble", "table")["path"]).is_file()
    members = ensemble.members_proba(Run(folder), cfg, [p["text"] for p in predictions], 16)
    assert len(members.members) == 2 and not np.allclose(*members.members)
    labels = members.labels
    written = np.array([[p["probs"][label] for label in labels] for p in predictions])
    alone = np.array([[p["single_probs"][label] for label in labels] for p in predictions])
    assert np.allclose(written, members.average, atol=1e-4) and np.allclose(alone, members.members[0], atol=1e-4)
    assert "one model of the ensemble" in html


def test_failing_stage_names_notebook_and_cell_and_keeps_it(reports, monkeypatch, capsys):
    monkeypatch.setenv("TUNEBOOK_REPORTS", str(reports))
    code = pipeline.main(["--params", "params/smoke.yaml", "--set", "data.source=no/such/file.jsonl",
                          "--stages", "01"])
    assert code == 1
    err = capsys.readouterr().err
    assert "01-explore-data.ipynb failed in cell" in err and "neither a bundled name" in err
    (folder,) = [p for p in reports.iterdir() if p.is_dir()]
    assert (folder / "notebooks" / "01-explore-data.ipynb").is_file()


def test_resume_finishes_only_the_stages_left(reports, monkeypatch):
    monkeypatch.setenv("TUNEBOOK_REPORTS", str(reports))
    assert pipeline.main(["--params", "params/smoke.yaml", "--stages", "01,02"]) == 0
    (folder,) = [p for p in reports.iterdir() if p.is_dir()]
    before = json.loads((folder / "manifest.json").read_text())["stages"]
    assert set(before) == {"01-explore-data", "02-clean-data"}
    assert pipeline.main(["--resume", str(folder), "--stages", "01,02,03"]) == 0
    after = json.loads((folder / "manifest.json").read_text())["stages"]
    assert after["01-explore-data"] == before["01-explore-data"]  # done before: not rerun
    assert after["03-augment-data"]["status"] == "ok"
    assert [p for p in reports.iterdir() if p.is_dir()] == [folder]  # no new run folder
