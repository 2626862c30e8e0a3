"""Sweeps: grid parsing, variant configs, the paired bootstrap, and the page on hand-made runs."""
import json
import math
import re

import numpy as np
import pytest

from helpers import data, paths, report, runs, sweep, sweep_report
from helpers.config import ConfigError, load_config

SMOKE = str(paths.ROOT / "params/smoke.yaml")


# ---------------------------------------------------------------- grid syntax

def test_grid_values_are_yaml_and_entries_split_on_spaces():
    grid = sweep.parse_grid(["augment.enabled=true,false tune.lora.r=8,16", "tune.learning_rate=0.001"])
    assert grid == {"augment.enabled": [True, False], "tune.lora.r": [8, 16], "tune.learning_rate": [0.001]}


def test_a_yaml_list_carries_values_with_commas_and_spaces():
    grid = sweep.parse_grid(["augment.ops=[[typo], [swap, typo]] data.system_prompt=['Be brief, please.', null]"])
    assert grid == {"augment.ops": [["typo"], ["swap", "typo"]], "data.system_prompt": ["Be brief, please.", None]}


@pytest.mark.parametrize("spec,message", [
    ("tune.lora.r", "expected KEY=V1,V2"),
    ("tune.lora.r=8,,16", "an empty value"),
    ("tune.lora.r=", "an empty value"),
    ("tune.lora.r=[8, 16", "not valid YAML"),
    ("tune.lora.r=[]", "one or more values"),
    ("tune.lora.r=8 tune.lora.r=16", "given twice"),
])
def test_bad_grid_entries_say_what_and_how(spec, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        sweep.parse_grid([spec])


def test_variants_are_every_combination_first_values_first():
    grid = {"augment.enabled": [True, False], "tune.lora.r": [8, 16]}
    variants = sweep.variant_configs(SMOKE, ["tune.max_steps=2"], grid)
    assert [v.values for v in variants] == [
        {"augment.enabled": True, "tune.lora.r": 8}, {"augment.enabled": True, "tune.lora.r": 16},
        {"augment.enabled": False, "tune.lora.r": 8}, {"augment.enabled": False, "tune.lora.r": 16}]
    last = variants[-1].config
    assert (last.augment.enabled, last.tune.lora.r, last.tune.max_steps, last.data.source) == (False, 16, 2, "support")
    assert all(v.config.sweep.grid == {} for v in variants)  # a variant's config.yaml reruns that variant only


def test_values_are_recorded_as_validated():
    (v,) = sweep.variant_configs(SMOKE, [], {"tune.learning_rate": ["1e-4"]})  # YAML reads 1e-4 as text
    assert v.values == {"tune.learning_rate": 0.0001} and v.config.tune.learning_rate == 0.0001


@pytest.mark.parametrize("grid,overrides,message", [
    ({"tune.nope": [1]}, [], "tune.nope: unknown key"),
    ({"tune.lora.r": [0, 8]}, [], "sweep variant tune.lora.r=0"),
    ({"tune.lora.r": [8, 8]}, [], "appears twice"),
    ({"tune.max_steps": [2, 3]}, ["tune.max_steps=4"], "both swept and set with --set"),
])
def test_bad_variants_fail_before_anything_runs(grid, overrides, message, reports):
    with pytest.raises(ConfigError, match=re.escape(message)):
        sweep.variant_configs(SMOKE, overrides, grid)


def test_a_params_file_sweep_section_is_typed_and_merged_with_the_command_line(tmp_path, reports):
    f = tmp_path / "s.yaml"
    f.write_text(f"extends: {SMOKE}\nsweep:\n  name: lr\n  grid: {{tune.learning_rate: [0.001, 0.002]}}\n")
    plan = sweep.plan(str(f), [], ["tune.lora.r=8,16"], reports)
    assert plan.grid == {"tune.learning_rate": [0.001, 0.002], "tune.lora.r": [8, 16]} and len(plan.variants) == 4
    assert plan.folder.parent == reports and plan.folder.name.startswith("sweep-lr-")
    assert json.loads((plan.folder / "sweep.json").read_text())["variants"][3]["status"] == "not started"
    f.write_text(f"extends: {SMOKE}\nsweep: {{grids: {{tune.lora.r: [8]}}}}\n")
    with pytest.raises(ConfigError, match="sweep.grids: unknown key"):
        load_config(f)
    f.write_text(f"extends: {SMOKE}\nsweep: {{grid: {{sweep.name: [a, b]}}}}\n")
    with pytest.raises(ConfigError, match="cannot sweep the sweep section"):
        load_config(f)


# ---------------------------------------------------------------- paired bootstrap

def nll_rows(nll, tokens, prefix="r"):
    return [{"id": f"{prefix}{i}", "tokens": int(t), "tuned_nll": float(x), "base_nll": float(x) + 1}
            for i, (x, t) in enumerate(zip(nll, tokens))]


def test_paired_perplexity_difference_is_exact_and_narrower_than_unpaired():
    rng = np.random.default_rng(0)
    tokens = rng.integers(5, 40, 200)
    ref_nll = tokens * rng.uniform(1.0, 3.5, 200)  # examples differ a lot in difficulty...
    var_nll = ref_nll * 0.95  # ...and the variant is 5% better on each of them
    ref, var = nll_rows(ref_nll, tokens), nll_rows(var_nll, tokens)
    ids, note = sweep_report.common_ids(ref, var)
    assert note == "" and len(ids) == 200
    d = sweep_report.paired_perplexity(ref, var, ids, 500, 42)["perplexity_tuned"]
    ppl_ref = math.exp(ref_nll.sum() / tokens.sum())
    ppl_var = math.exp(var_nll.sum() / tokens.sum())
    assert d["diff"] == pytest.approx(ppl_var - ppl_ref, rel=1e-12) and d["diff"] < 0
    lo, hi = d["ci"]
    assert lo <= d["diff"] <= hi < 0  # the paired interval sees the consistent gain
    # Unpaired, each run's own interval is far wider than the difference: they overlap.
    from helpers import metrics

    own = metrics.bootstrap_ci(lambda s: sweep_report.pooled_perplexity(ref_nll, tokens, s), 200, 500, 42)
    assert own[1] - own[0] > 3 * (hi - lo)


def test_identical_runs_differ_by_exactly_zero():
    rows = nll_rows([10.0, 20.0, 30.0], [5, 6, 7])
    d = sweep_report.paired_perplexity(rows, rows, [r["id"] for r in rows], 200, 1)["perplexity_tuned"]
    assert d["diff"] == 0.0 and d["ci"] == [0.0, 0.0]


def prediction_rows(labels, predicted):
    out = []
    for i, (y, p) in enumerate(zip(labels, predicted)):
        probs = {c: (0.8 if c == p else 0.1) for c in ("neg", "neu", "pos")}
        out.append({"id": f"t{i}", "label": y, "predicted": p, "probs": probs})
    return out


def test_paired_classification_counts_the_rows_that_changed():
    rng = np.random.default_rng(1)
    y = list(rng.choice(["neg", "neu", "pos"], 200))
    ref_pred = [c if rng.random() < 0.6 else "neu" for c in y]
    wrong = [i for i in range(200) if ref_pred[i] != y[i]][:20]
    var_pred = [y[i] if i in wrong else ref_pred[i] for i in range(200)]  # 20 more right, none lost
    ref, var = prediction_rows(y, ref_pred), prediction_rows(y, var_pred)
    d = sweep_report.paired_classification(ref, var, [r["id"] for r in ref], 200, 42)
    assert d["accuracy"]["diff"] == pytest.approx(20 / 200)
    lo, hi = d["accuracy"]["ci"]
    assert 0 < lo <= 0.1 <= hi <= 0.2  # never negative: no resample can lose a row the variant got right
    assert d["macro_f1"]["diff"] > 0 and all(math.isfinite(x) for x in d["macro_auc"]["ci"])


def test_different_test_rows_are_paired_on_the_common_ones_and_said_so():
    ref = nll_rows([1, 2, 3, 4], [1, 1, 1, 1])
    var = nll_rows([1, 2, 3], [1, 1, 1]) + [{"id": "new", "tokens": 1, "tuned_nll": 1.0}]
    ids, note = sweep_report.common_ids(ref, var)
    assert ids == ["r0", "r1", "r2"] and "paired on the 3 rows both scored (reference 4, this run 4)" in note
    ids, note = sweep_report.common_ids(ref, nll_rows([1], [1], prefix="x"))
    assert ids == [] and "no paired difference" in note


# ---------------------------------------------------------------- the page, on hand-made runs

def fake_variant_run(plan, i, nll, reports):
    """A finished chat run of variant i: manifest with the sweep tag, metrics, nlls.jsonl, test.jsonl."""
    run = runs.create_run(plan.variants[i].config, reports)
    sweep.tag_run(run, plan.tag(i))
    tokens = np.full(len(nll), 10)
    ppl = sweep_report.pooled_perplexity(np.array(nll), tokens, np.arange(len(nll)))
    runs.record_metrics(run, "evaluate", {"perplexity_tuned": ppl, "perplexity_tuned_ci": [ppl - 1, ppl + 1],
                                          "perplexity_base": 9.0, "perplexity_base_ci": [8.0, 10.0],
                                          "perplexity_change_pct": -5.0, "perplexity_change_ci": [-9.0, -1.0]})
    rows = nll_rows(nll, tokens)
    data.write_jsonl(run.data / "nlls.jsonl", rows)
    for stage in ("01-explore-data", "06-visualize-results"):
        runs.record_stage(run, stage, status="ok", seconds=1.0)
    if i:
        runs.record_stage(run, "01-explore-data", reused_from="an-earlier-run")
    return run, ppl


def test_sweep_page_table_plot_json_and_index(reports):
    plan = sweep.plan(SMOKE, [], ["report.title=<b>one</b>,two"], reports)  # a value that must be escaped
    rng = np.random.default_rng(3)
    nll = rng.uniform(10, 30, 50)
    (a, ppl_a), (b, ppl_b) = (fake_variant_run(plan, 0, nll, reports), fake_variant_run(plan, 1, nll * 0.9, reports))
    page = sweep.write_sweep(plan, reports)
    html = page.read_text()
    body = re.search(r'<table id="sweep-table">.*?<tbody>(.*?)</tbody>', html, re.S).group(1)
    trs = re.findall(r"<tr>(.*?)</tr>", body, re.S)
    assert len(trs) == 2 and a.dir.name in trs[0] and b.dir.name in trs[1]
    assert "&lt;b&gt;one&lt;/b&gt;" in html and "<b>one</b>" not in html  # autoescaped
    assert "reference" in trs[0] and "01 from an-earlier-run" in trs[1]
    assert html.count("data:image/png;base64,") == 1 and (plan.folder / "figures" / "metric.png").is_file()
    summary = json.loads((plan.folder / "sweep.json").read_text())
    v1 = summary["variants"][1]
    assert (v1["run"], v1["status"], v1["paired_rows"]) == (b.dir.name, "ok", 50)
    d = v1["paired"]["perplexity_tuned"]
    assert d["diff"] == pytest.approx(ppl_b - ppl_a) and d["ci"][0] <= d["diff"] <= d["ci"][1] < 0
    shown = f"{d['diff']:+.2f} [{d['ci'][0]:+.2f}, {d['ci'][1]:+.2f}]"
    assert shown in trs[1]
    index = report.write_index(reports).read_text()
    assert index.count(f'href="{plan.folder.name}/sweep.html"') == 2
    assert index.index(a.dir.name) < index.index(b.dir.name)  # grouped in variant order


@pytest.mark.parametrize("argv,message", [
    (["--bundled", "--grid", "tune.lora.r=8,16"], "--grid sweeps one experiment: give it with --params"),
    (["--params", "params/smoke.yaml", "--reuse", "sometimes"], "--reuse: reuse mode 'sometimes'"),
    (["--params", "params/smoke.yaml", "--grid", "tune.lora.r=8,,16"], "an empty value"),
])
def test_the_command_line_refuses_before_running_anything(argv, message, reports, capsys):
    from helpers import pipeline

    assert pipeline.main(argv) == 1
    assert message in capsys.readouterr().err
    assert not [p for p in reports.iterdir() if p.is_dir()]  # no run, no sweep folder
