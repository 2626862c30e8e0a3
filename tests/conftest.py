"""Shared test setup: offline, headless, and paths to the tiny fixtures."""
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")

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


# ---- a tuned smoke chat model, made once per test session (chat, serving, chat page tests) ----

SMOKE_TUNE = ["tune.max_steps=2", "tune.eval_steps=2", "tune.save_steps=2"]  # a real but tiny tuning run


@pytest.fixture(scope="session")
def smoke_chat_run(tmp_path_factory) -> Path:
    """A run folder of params/smoke.yaml through stages 01-04 (model/final/ saved), in a temp reports folder.
    TUNEBOOK_TEST_CHAT_RUN=reports/<run> reuses a finished chat run instead (quicker while developing)."""
    import subprocess
    import sys

    if os.environ.get("TUNEBOOK_TEST_CHAT_RUN"):
        return Path(os.environ["TUNEBOOK_TEST_CHAT_RUN"])
    reports = tmp_path_factory.mktemp("smoke-reports")
    cmd = [sys.executable, "-m", "helpers.pipeline", "--params", "params/smoke.yaml", "--stages", "01,02,03,04"]
    for s in SMOKE_TUNE:
        cmd += ["--set", s]
    proc = subprocess.run(cmd, cwd=Path(__file__).parents[1], capture_output=True, text=True,
                          env={**os.environ, "TUNEBOOK_REPORTS": str(reports)})
    assert proc.returncode == 0, f"smoke pipeline failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    (run,) = [p for p in reports.iterdir() if p.is_dir()]
    assert (run / "model" / "final" / "config.json").is_file()
    return run
