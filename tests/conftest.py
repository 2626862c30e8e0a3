"""Shared test setup: offline, headless, and paths to the tiny fixtures."""
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two pytest workers (pytest-xdist) on a 2-core machine: one thread each, for the
    # workers and for every process they start (kernels, pipelines), so the two never fight for cores.
    os.environ.setdefault("OMP_NUM_THREADS", "1")

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def fixtures() -> Path:
    """The folder of tiny input files."""
    return FIXTURES


@pytest.fixture
def reports(tmp_path, monkeypatch) -> Path:
    """A private reports folder, so tests never write into the repo's reports/."""
    from helpers import paths

    folder = tmp_path / "reports"
    monkeypatch.setattr(paths, "REPORTS", folder)
    return folder


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (`--dist loadgroup`), every test that uses a smoke run goes to one worker,
    so each smoke run is made once, not once per worker. The group is added before xdist's own hook
    (which writes it into the test's id, where its scheduler reads it) and checked after it: when a
    pytest or xdist upgrade breaks that, the suite stops here instead of making every smoke run twice."""
    smoke = [item for item in items if {"smoke_chat_run", "smoke_classifier_run"} & set(item.fixturenames)]
    for item in smoke:
        item.add_marker(pytest.mark.xdist_group("smoke-runs"))
    result = yield
    if getattr(config.option, "loadgroup", False):
        lost = [item.nodeid for item in smoke if not item.nodeid.endswith("@smoke-runs")]
        if lost:
            raise pytest.UsageError(f"xdist did not group {len(lost)} smoke-run tests (first: {lost[0]}): each "
                                    "worker would make the smoke runs again; check the pytest and pytest-xdist "
                                    "pins in pyproject.toml, or run with JOBS=1")
    return result


# ---- the smoke runs, made once per test session: the end-to-end tests check them, and the tests
# of what comes after tuning (chat, serving, chat page, export, predict) use their tuned models ----

def _smoke_run(params: str, tmp_path_factory) -> Path:
    """All six stages of a smoke profile, as `make pipeline EXP=...` runs them, in a private reports folder."""
    from helpers import paths, pipeline

    reports = tmp_path_factory.mktemp("smoke-reports")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNEBOOK_REPORTS", str(reports))  # the kernels read it
        mp.setattr(paths, "REPORTS", reports)
        assert pipeline.main(["--params", params]) == 0
    (folder,) = [p for p in reports.iterdir() if p.is_dir()]
    assert (folder / "model" / "final" / "config.json").is_file()
    return folder


@pytest.fixture(scope="session")
def smoke_chat_run(tmp_path_factory) -> Path:
    """The smoke chat run (params/smoke.yaml, all six stages), made once per test session.
    TUNEBOOK_TEST_CHAT_RUN=reports/<run> reuses a finished chat run instead (quicker while developing)."""
    if os.environ.get("TUNEBOOK_TEST_CHAT_RUN"):
        return Path(os.environ["TUNEBOOK_TEST_CHAT_RUN"])
    return _smoke_run("params/smoke.yaml", tmp_path_factory)


@pytest.fixture(scope="session")
def smoke_classifier_run(tmp_path_factory) -> Path:
    """The smoke classification run (params/smoke-sentiment.yaml, all six stages), made once per test session."""
    return _smoke_run("params/smoke-sentiment.yaml", tmp_path_factory)


# ---- 02-clean-data's chain, for tests that need cleaned splits ----

def clean_as_02(rows: list[dict], cfg, tokenizer) -> tuple[dict, object]:
    """The steps of 02-clean-data in clean.STEPS order (the notebook shows each result in between):
    the splits it writes and the ledger. test_clean checks that this and the notebook both follow STEPS."""
    from helpers import bookkeeping, clean

    ledger = bookkeeping.Ledger.of(rows)
    rows = clean.normalize(rows, cfg, ledger)
    rows = clean.filter_rows(rows, cfg, tokenizer, ledger)
    rows = clean.dedup_exact(rows, cfg, ledger)
    rows = clean.dedup_near(rows, cfg, ledger)
    groups = clean.similarity_groups(rows, cfg.clean.group_threshold, cfg.experiment.seed)
    splits = clean.split_rows(rows, cfg, groups)
    splits = clean.window_chats(splits, cfg, tokenizer, ledger)
    splits["train"] = clean.balance(splits["train"], cfg, ledger)
    clean.accounting(ledger, splits)
    return splits, ledger


@pytest.fixture(scope="session")
def clean_02():
    """clean_as_02: rows, cfg, tokenizer -> (splits, ledger), as 02-clean-data makes them."""
    return clean_as_02
