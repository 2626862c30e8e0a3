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
