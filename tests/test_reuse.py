"""Stage reuse: what invalidates a stage's key, what a stage recorded, and copying it into a new run."""
import json
import re

import pytest

from helpers import data, paths, reuse, runs
from helpers.config import Config, load_config
from helpers.pipeline import NOTEBOOKS

SMOKE = "params/smoke.yaml"


def make_run(reports, overrides=()):
    """A run folder of the smoke profile (no stage run yet)."""
    return runs.create_run(load_config(paths.ROOT / SMOKE, list(overrides)), reports)


def keys(reports, overrides=()):
    """{stage: config digest} of a fresh run with these overrides."""
    run = make_run(reports, overrides)
    return {s: reuse.stage_key(run, s)["config"] for s in reuse.STAGE_CONFIG}


def test_a_changed_key_invalidates_only_the_stages_that_read_it(reports):
    base = keys(reports)
    aug = keys(reports, ["augment.ratio=0.5"])
    assert [s for s in base if base[s] != aug[s]] == ["03-augment-data"]
    lora = keys(reports, ["tune.lora.r=16"])
    assert [s for s in base if base[s] != lora[s]] == ["04-tune-model"]  # a tune sweep runs 01-03 once
    # 01 estimates an epoch's steps from the batch size, so it is invalidated too; 02 and 03 are not.
    batch = keys(reports, ["tune.batch_size=2"])
    assert [s for s in base if base[s] != batch[s]] == ["01-explore-data", "04-tune-model"]
    # With a time budget, 01 turns its timed steps into 04's steps: a tune change reaches 01 too.
    budget = keys(reports, ["tune.time_budget_minutes=5"])
    budget_lora = keys(reports, ["tune.time_budget_minutes=5", "tune.lora.r=16"])
    assert [s for s in base if base[s] != budget[s]] == ["01-explore-data", "04-tune-model"]
    assert [s for s in budget if budget[s] != budget_lora[s]] == ["01-explore-data", "04-tune-model"]
    seed = keys(reports, ["experiment.seed=7"])
    assert all(base[s] != seed[s] for s in base)  # the one seed reaches every stage
    assert keys(reports, ["report.title=another title"]) == base  # no stage before 06 reads report.*


def test_stage_06_is_never_reused(reports):
    assert reuse.stage_key(make_run(reports), "06-visualize-results") is None


def test_input_files_and_the_data_source_are_in_the_key(reports, tmp_path):
    run = make_run(reports)
    k01 = reuse.stage_key(run, "01-explore-data")["inputs"]
    assert list(k01) == ["source:data/support-chats.jsonl"]
    assert k01["source:data/support-chats.jsonl"] == reuse.file_digest(paths.DATA / "support-chats.jsonl")
    data.write_jsonl(run.data / "loaded.jsonl", [{"id": "a"}])
    first = reuse.stage_key(run, "02-clean-data")
    data.write_jsonl(run.data / "loaded.jsonl", [{"id": "b"}])
    second = reuse.stage_key(run, "02-clean-data")
    assert first["config"] == second["config"] and first["inputs"] != second["inputs"]
    # A user's own file is hashed by content: the same path with other rows is another input.
    own = tmp_path / "chats.jsonl"
    own.write_text((paths.DATA / "support-chats.jsonl").read_text())
    run2 = make_run(reports, [f"data.source={own}"])
    (key,) = reuse.stage_key(run2, "01-explore-data")["inputs"].values()
    assert key == k01["source:data/support-chats.jsonl"]


def test_code_version_decides_unless_any():
    key = {"config": "c", "inputs": {"data/x": "1"}, "code": {"commit": "abc", "dirty": None, "packages": "p"}}
    other_code = {**key, "code": {"commit": "def", "dirty": None, "packages": "p"}}
    dirty = {**key, "code": {"commit": "abc", "dirty": "1234", "packages": "p"}}
    assert reuse.same_key(key, dict(key), "same-code")
    assert not reuse.same_key(key, other_code, "same-code") and not reuse.same_key(key, dirty, "same-code")
    assert reuse.same_key(key, other_code, "any")
    assert not reuse.same_key(key, {**key, "config": "d"}, "any")
    assert not reuse.same_key(key, {**key, "inputs": {"data/x": "2"}}, "any")
    unknown = {**key, "code": {"commit": None, "dirty": None, "packages": "p"}}
    assert not reuse.same_key(unknown, dict(unknown), "same-code")  # outside git nothing proves "same code"


@pytest.mark.parametrize("text,mode", [("same-code", "same-code"), ("ANY", "any"), ("0", "off"), ("off", "off")])
def test_parse_mode(text, mode):
    assert reuse.parse_mode(text) == mode


def test_parse_mode_rejects_a_typo():
    with pytest.raises(ValueError, match="same-code.*any.*off"):
        reuse.parse_mode("sometimes")


def fake_clean_stage(run, rows, key):
    """Do what 02 does to the run folder (files, a metrics section, an artifact) and record it."""
    before = reuse.snapshot(run)
    data.write_jsonl(run.data / "train.jsonl", rows)
    (run.dir / "tables").mkdir(exist_ok=True)
    (run.dir / "tables" / "clean-splits.csv").write_text("split,rows\ntrain,2\n")
    (run.notebooks / "02-clean-data.ipynb").write_text("{}")
    runs.record_metrics(run, "clean", {"kept": len(rows)})
    from helpers import artifacts

    artifacts._register(run, {"stage": "clean", "name": "splits", "kind": "table", "path": "tables/clean-splits.csv",
                              "caption": "c"})
    runs.record_stage(run, "02-clean-data", status="ok", seconds=1.0)
    reuse.record_outputs(run, "02-clean-data", before, key)


def test_a_finished_stage_is_found_verified_and_copied(reports):
    a = make_run(reports)
    data.write_jsonl(a.data / "loaded.jsonl", [{"id": "1"}, {"id": "2"}])
    runs.record_metrics(a, "explore", {"rows": 2})  # an earlier stage's section: not 02's
    key = reuse.stage_key(a, "02-clean-data")
    fake_clean_stage(a, [{"id": "1"}, {"id": "2"}], key)
    entry = runs.read_json(a.manifest_file)["stages"]["02-clean-data"]
    assert sorted(entry["outputs"]) == ["data/train.jsonl", "notebooks/02-clean-data.ipynb", "tables/clean-splits.csv"]
    assert entry["metrics_keys"] == ["clean"] and entry["artifacts"] == [["clean", "splits", "table"]]

    b = make_run(reports)
    data.write_jsonl(b.data / "loaded.jsonl", [{"id": "1"}, {"id": "2"}])
    key_b = reuse.stage_key(b, "02-clean-data")
    assert key_b == key
    source, found = reuse.find_source(b, "02-clean-data", key_b, "same-code")
    assert source.dir == a.dir
    assert reuse.find_source(b, "02-clean-data", key_b, "off") is None
    reuse.reuse_stage(b, "02-clean-data", source, found, key_b)
    for rel in entry["outputs"]:
        assert (b.dir / rel).read_bytes() == (a.dir / rel).read_bytes()
    assert runs.read_json(b.metrics_file) == {"clean": {"kept": 2}}  # 02's section only
    assert runs.read_json(b.dir / "artifacts.json") == runs.read_json(a.dir / "artifacts.json")
    stage = runs.read_json(b.manifest_file)["stages"]["02-clean-data"]
    assert (stage["status"], stage["reused_from"], stage["computed_in"]) == ("ok", a.dir.name, a.dir.name)

    # A third run reuses too; the copy in b is as good as the original, and names where it was computed.
    c = make_run(reports)
    data.write_jsonl(c.data / "loaded.jsonl", [{"id": "1"}, {"id": "2"}])
    # An output changed after the fact is not trusted: a's file edited, b's copy still matches.
    (a.dir / "data" / "train.jsonl").write_text("edited\n")
    source, found = reuse.find_source(c, "02-clean-data", key_b, "same-code")
    assert source.dir == b.dir and found["computed_in"] == a.dir.name
    (b.dir / "data" / "train.jsonl").write_text("edited\n")
    assert reuse.find_source(c, "02-clean-data", key_b, "same-code") is None


def test_a_value_a_stage_settles_in_config_yaml_reaches_a_reusing_run_key_by_key(reports):
    # 01 turns model.max_length auto into a number in config.yaml; a sweep variant reusing 01 gets
    # that number, and keeps its own tune.* values (the file is not copied whole).
    a = make_run(reports, ["model.max_length=auto"])
    key = reuse.stage_key(a, "01-explore-data")
    before = reuse.snapshot(a)
    from helpers.config import apply_overrides, to_yaml

    runs.write_text(a.config_file, to_yaml(apply_overrides(a.config(), {"model.max_length": 232})))
    runs.record_stage(a, "01-explore-data", status="ok", seconds=1.0)
    reuse.record_outputs(a, "01-explore-data", before, key)
    entry = runs.read_json(a.manifest_file)["stages"]["01-explore-data"]
    assert entry["config_changes"] == {"model.max_length": 232} and "config.yaml" not in entry["outputs"]
    b = make_run(reports, ["model.max_length=auto", "tune.lora.r=16"])
    key_b = reuse.stage_key(b, "01-explore-data")
    source, found = reuse.find_source(b, "01-explore-data", key_b, "same-code")
    reuse.reuse_stage(b, "01-explore-data", source, found, key_b)
    assert (b.config().model.max_length, b.config().tune.lora.r) == (232, 16)


def test_other_inputs_or_code_find_nothing(reports):
    a = make_run(reports)
    data.write_jsonl(a.data / "loaded.jsonl", [{"id": "1"}])
    key = reuse.stage_key(a, "02-clean-data")
    fake_clean_stage(a, [{"id": "1"}], key)
    b = make_run(reports)
    data.write_jsonl(b.data / "loaded.jsonl", [{"id": "other"}])
    assert reuse.find_source(b, "02-clean-data", reuse.stage_key(b, "02-clean-data"), "any") is None
    data.write_jsonl(b.data / "loaded.jsonl", [{"id": "1"}])
    moved = {**key, "code": {**key["code"], "commit": "0" * 40}}
    assert reuse.find_source(b, "02-clean-data", moved, "same-code") is None
    assert reuse.find_source(b, "02-clean-data", moved, "any")[0].dir == a.dir


# ---------------------------------------------------------------- the declarations stay true

STAGE_MODULES = {  # the helpers each notebook calls with the config
    "01-explore-data": ["data", "readers", "schema", "textfile", "explore", "measures", "words", "models", "budget",
                        "training", "adapters", "precision"],
    "02-clean-data": ["clean", "textrules", "bookkeeping", "measures", "models"],
    "03-augment-data": ["augment", "textops", "models"],
    "04-tune-model": ["tune", "search", "crossval", "ensemble", "models", "chat"],
    "05-evaluate-model": ["evaluation", "ensemble", "models"],
}
ACCESS = re.compile(r"\b(?:cfg|config)\.(\w+)(?:\.(\w+))?")


def config_reads(text):
    """Dotted config keys read in code: cfg.section or cfg.section.key."""
    out = set()
    for section, key in ACCESS.findall(text):
        if section in Config.model_fields:
            sub = Config.model_fields[section].annotation.model_fields
            out.add(f"{section}.{key}" if key in sub else section)
    return out


@pytest.mark.parametrize("stage", list(reuse.STAGE_CONFIG))
def test_every_config_read_of_a_stage_is_in_its_key(stage):
    nb = json.loads((paths.NOTEBOOKS / f"{stage}.ipynb").read_text())
    texts = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    texts += [(paths.ROOT / "src" / "helpers" / f"{m}.py").read_text() for m in STAGE_MODULES[stage]]
    declared = reuse.STAGE_CONFIG[stage] + reuse.STAGE_CONFIG_IF.get(stage, ("", []))[1]
    reads = set().union(*(config_reads(t) for t in texts))
    missing = sorted(r for r in reads if not any(r == d or r.startswith(d + ".") for d in declared))
    assert not missing, f"{stage} reads {missing}: add them to reuse.STAGE_CONFIG"
    assert set(reuse.STAGE_CONFIG) | {"06-visualize-results"} == set(NOTEBOOKS)
