"""The pipeline command's argument checks (fast: nothing is executed)."""
import pytest

from helpers import pipeline
from helpers.config import ConfigError


def test_stage_selection_by_number_or_name_in_pipeline_order():
    assert pipeline.select_stages("04,01") == ["01-explore-data", "04-tune-model"]
    assert pipeline.select_stages("06-visualize-results") == ["06-visualize-results"]


def test_unknown_stage_is_an_error_not_everything():
    with pytest.raises(ConfigError, match="unknown stage '7'"):
        pipeline.select_stages("7")
    with pytest.raises(ConfigError, match="unknown stage 'tune'"):
        pipeline.select_stages("tune")


def test_set_with_resume_is_refused(reports, capsys):
    assert pipeline.main(["--resume", str(reports), "--set", "tune.max_steps=3"]) == 1
    assert "--set cannot change a run being resumed" in capsys.readouterr().err
