"""A pipeline killed outright (SIGKILL, as a power cut or an out-of-memory kill) resumes to the same outputs.

The smoke classification run (the session's fixture) goes straight through; another run of the same
profile is killed during 02, resumed, killed again during 05, and resumed to the end. The data files
must match byte for byte and the evaluation figures must match. (The classifier profile, because
the test is about files and stages, not the task: its stages are the quicker ones.)
A killed stage is left "running" in the manifest, so --resume runs it again; writes go through
runs.atomic_write, so no half-written file is ever taken as done.
"""
import json
import os
import signal
import subprocess
import sys
import time

import psutil  # ipykernel's dependency: finds the kernel the pipeline started
import pytest

from helpers import paths
from helpers.config import flatten

pytestmark = pytest.mark.slow

PARAMS = "params/smoke-sentiment.yaml"  # as the smoke_classifier_run fixture runs it
DATA_FILES = ["loaded.jsonl", "problems.jsonl", "train.jsonl", "validation.jsonl", "test.jsonl", "rejects.jsonl",
              "train.augmented.jsonl", "predictions.jsonl"]


STAGES = "--stages=01,02,03,04,05"  # 06 only renders; leaving it out keeps the test shorter


def pipeline(reports, *args):
    """Start `python -m helpers.pipeline`, its output to a log file (a pipe could fill and block it)."""
    env = {**os.environ, "TUNEBOOK_REPORTS": str(reports), "PYTHONPATH": str(paths.ROOT / "src")}
    reports.mkdir(exist_ok=True)
    log = open(reports.parent / f"{reports.name}.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "helpers.pipeline", *args, STAGES], cwd=paths.ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    proc.log = reports.parent / f"{reports.name}.log"
    return proc


def tail(proc):
    return proc.log.read_text(errors="replace")[-3000:]


def stages(folder):
    """The manifest's stage records (empty while the manifest is being created)."""
    try:
        return json.loads((folder / "manifest.json").read_text())["stages"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return {}


def kill_during(proc, reports, stage, after_s):
    """SIGKILL the pipeline and its kernel `after_s` seconds into `stage`; return the run folder."""
    deadline = time.monotonic() + 600
    while True:
        assert proc.poll() is None, f"the pipeline ended before {stage}: {tail(proc)}"
        assert time.monotonic() < deadline, f"{stage} never started"
        folders = [p for p in reports.iterdir() if p.is_dir()] if reports.is_dir() else []
        if folders and stages(folders[0]).get(stage, {}).get("status") == "running":
            break
        time.sleep(0.2)
    time.sleep(after_s)
    # The pipeline and its kernel (a child in a session of its own), all at once, as a power cut would.
    tree = [proc.pid] + [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
    for pid in tree:
        os.kill(pid, signal.SIGKILL)
    proc.wait()
    assert stages(folders[0])[stage]["status"] == "running", "the kill came too late to test anything"
    return folders[0]


def figures(folder):
    """The evaluation figures that do not depend on the machine's speed."""
    m = flatten(json.loads((folder / "metrics.json").read_text())["evaluate"])
    return {k: v for k, v in m.items() if not k.startswith("latency") and "second" not in k and "_ms" not in k}


def test_killed_during_02_and_05_resumes_to_the_same_outputs(tmp_path, smoke_classifier_run):
    expected = smoke_classifier_run
    reports = tmp_path / "killed"
    folder = kill_during(pipeline(reports, "--params", PARAMS), reports, "02-clean-data", after_s=2.0)
    kill_during(pipeline(reports, "--resume", str(folder)), reports, "05-evaluate-model", after_s=4.0)
    resumed = pipeline(reports, "--resume", str(folder))
    assert resumed.wait(timeout=1200) == 0, tail(resumed)

    assert all(s["status"] == "ok" for s in stages(folder).values()) and len(stages(folder)) == 5
    for name in DATA_FILES:
        assert (folder / "data" / name).read_bytes() == (expected / "data" / name).read_bytes(), name
    got, want = figures(folder), figures(expected)
    assert got.keys() == want.keys()
    for key, value in want.items():  # intervals are lists: approx compares them item by item
        numeric = isinstance(value, (int, float, list)) and not isinstance(value, bool)
        assert got[key] == (pytest.approx(value, rel=1e-6) if numeric else value), key
    assert not list(folder.rglob("*.tmp")), "a temporary file was left behind"
