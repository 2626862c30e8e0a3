"""End to end: a two-variant smoke sweep through the pipeline CLI; the second run reuses 01-02."""
import json
import math
import re

import pytest

from helpers import pipeline

pytestmark = pytest.mark.slow


def read(path):
    return json.loads(path.read_text())


def test_smoke_sweep_reuses_stages_and_pairs_the_runs(reports, monkeypatch):
    monkeypatch.setenv("TUNEBOOK_REPORTS", str(reports))  # the kernels read it too
    # The issue's sweep, made cheaper where it does not matter here: fewer steps, no speed probe,
    # no robustness pass, one generated answer.
    code = pipeline.main(["--params", "params/smoke.yaml", "--grid", "augment.enabled=true,false",
                          "--set", "tune.max_steps=3", "--set", "tune.batch_size=2",
                          "--set", "explore.measure_speed=false",
                          "--set", "evaluate.robustness_ops=[]", "--set", "evaluate.generate_examples=1"])
    assert code == 0
    (folder,) = [p for p in reports.iterdir() if p.name.startswith("sweep-")]
    summary = read(folder / "sweep.json")
    a, b = (reports / v["run"] for v in summary["variants"])
    assert [v["values"] for v in summary["variants"]] == [{"augment.enabled": True}, {"augment.enabled": False}]
    assert sorted(p.name for p in reports.iterdir() if p.is_dir()) == sorted([a.name, b.name, folder.name])

    # Stage reuse: b's 01 and 02 come from a, byte for byte, with their metrics and report entries.
    ma, mb = read(a / "manifest.json"), read(b / "manifest.json")
    assert (ma["sweep"]["index"], mb["sweep"]["index"], mb["sweep"]["id"]) == (0, 1, summary["id"])
    assert not any("reused_from" in s for s in ma["stages"].values())
    reused = {k: s.get("reused_from") for k, s in mb["stages"].items()}
    assert reused == {"01-explore-data": a.name, "02-clean-data": a.name, "03-augment-data": None,
                      "04-tune-model": None, "05-evaluate-model": None, "06-visualize-results": None}
    assert all(s["status"] == "ok" for s in mb["stages"].values())
    for stage in ("01-explore-data", "02-clean-data"):
        outputs = mb["stages"][stage]["outputs"]
        assert outputs == ma["stages"][stage]["outputs"] and mb["stages"][stage]["key"] == ma["stages"][stage]["key"]
        for rel in outputs:
            assert (b / rel).read_bytes() == (a / rel).read_bytes(), rel
    assert {"data/loaded.jsonl", "data/problems.jsonl", "notebooks/01-explore-data.ipynb"} <= set(
        mb["stages"]["01-explore-data"]["outputs"])
    assert {"data/train.jsonl", "data/validation.jsonl", "data/test.jsonl", "data/rejects.jsonl"} <= set(
        mb["stages"]["02-clean-data"]["outputs"])
    meta, metb = read(a / "metrics.json"), read(b / "metrics.json")
    assert metb["explore"] == meta["explore"] and metb["clean"] == meta["clean"]
    arts = [[e for e in read(r / "artifacts.json") if e["stage"] in ("explore", "clean")] for r in (a, b)]
    assert arts[0] == arts[1] and len(arts[0]) > 5
    # 03 ran again with augmentation off: b trains on the clean split alone.
    assert metb["augment"] != meta["augment"]
    train_b = (b / "data" / "train.jsonl").read_text().splitlines()
    assert len((b / "data" / "train.augmented.jsonl").read_text().splitlines()) == len(train_b)
    assert len((a / "data" / "train.augmented.jsonl").read_text().splitlines()) > len(train_b)
    assert f"reused from <a href=\"../{a.name}/report.html\">" in (b / "report.html").read_text()

    # The per-example NLLs are the test split, and pool to the headline perplexity.
    test_ids = [json.loads(line)["id"] for line in (a / "data" / "test.jsonl").read_text().splitlines()]
    for run, m in ((a, meta), (b, metb)):
        nlls = [json.loads(line) for line in (run / "data" / "nlls.jsonl").read_text().splitlines()]
        assert [r["id"] for r in nlls] == test_ids
        pooled = math.exp(sum(r["tuned_nll"] for r in nlls) / sum(r["tokens"] for r in nlls))
        assert pooled == pytest.approx(m["evaluate"]["perplexity_tuned"], rel=1e-9)

    # The sweep page: two rows, the reference and b with its paired difference, as sweep.json says.
    v1 = summary["variants"][1]
    d = v1["paired"]["perplexity_tuned"]
    assert v1["paired_rows"] == len(test_ids) and v1["note"] == ""
    assert d["diff"] == pytest.approx(metb["evaluate"]["perplexity_tuned"] - meta["evaluate"]["perplexity_tuned"])
    assert all(math.isfinite(x) for x in d["ci"]) and d["ci"][0] <= d["ci"][1]
    html = (folder / "sweep.html").read_text()
    body = re.search(r'<table id="sweep-table">.*?<tbody>(.*?)</tbody>', html, re.S).group(1)
    trs = re.findall(r"<tr>(.*?)</tr>", body, re.S)
    assert len(trs) == 2 and a.name in trs[0] and b.name in trs[1] and "reference" in trs[0]
    assert f"01 from {a.name}, 02 from {a.name}" in trs[1]
    assert f"{d['diff']:+.2f} [{d['ci'][0]:+.2f}, {d['ci'][1]:+.2f}]" in trs[1]
    tuned = meta["evaluate"]["perplexity_tuned"]
    assert f"{tuned:.2f}".rstrip("0").rstrip(".") in trs[0]
    assert html.count("data:image/png;base64,") == 1
    index = (reports / "index.html").read_text()
    assert index.count(f'href="{folder.name}/sweep.html"') == 2


def test_a_failed_variant_stops_the_sweep_and_the_page_says_so(reports, monkeypatch, capsys):
    monkeypatch.setenv("TUNEBOOK_REPORTS", str(reports))
    code = pipeline.main(["--params", "params/smoke.yaml", "--grid", "data.source=no/such/file.jsonl,support",
                          "--stages", "01"])
    assert code == 1 and "01-explore-data.ipynb failed" in capsys.readouterr().err
    (folder,) = [p for p in reports.iterdir() if p.name.startswith("sweep-")]
    variants = read(folder / "sweep.json")["variants"]
    assert [v["status"] for v in variants] == ["failed: 01-explore-data", "not started"]
    html = (folder / "sweep.html").read_text()
    assert "failed: 01-explore-data" in html and "not started" in html
