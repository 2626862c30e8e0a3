"""Run the six notebooks headless with Papermill into one run folder per experiment.

    python -m helpers.pipeline --params params/chat-faq.yaml [--set tune.max_steps=10 ...]
    python -m helpers.pipeline --bundled          # the bundled chat and classification runs
    python -m helpers.pipeline --resume reports/chat-faq-20261121-101500

A failing notebook stops the run with exit code 1, naming the notebook and the cell; the
partly executed notebook stays in the run folder. --resume reruns the stages that did not
finish (the tune stage continues from its last checkpoint).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from . import paths
from .config import ConfigError, load_config
from .runs import Run, create_run, read_json, record_stage, write_text

NOTEBOOKS = ["01-explore-data", "02-clean-data", "03-augment-data", "04-tune-model",
             "05-evaluate-model", "06-visualize-results"]
BUNDLED = ["params/chat-faq.yaml", "params/sentiment-airline.yaml"]
KERNEL = "tunebook"  # registered by `make env`; JupyterLab uses the same kernel


class StageFailed(RuntimeError):
    """A notebook raised; the message names the notebook and the cell."""


def run_notebook(run: Run, name: str) -> float:
    """Execute one notebook into the run folder, then render it to HTML; returns seconds."""
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    out = run.notebooks / f"{name}.ipynb"
    start = time.perf_counter()
    record_stage(run, name, status="running")
    try:
        pm.execute_notebook(str(paths.NOTEBOOKS / f"{name}.ipynb"), str(out), kernel_name=KERNEL,
                            parameters={"run_dir": str(run.dir.resolve())}, cwd=str(paths.NOTEBOOKS),
                            progress_bar=False, log_output=False)
    except PapermillExecutionError as e:
        seconds = time.perf_counter() - start
        record_stage(run, name, status="failed", seconds=round(seconds, 1), error=f"{e.ename}: {e.evalue}")
        _to_html(out)
        first = (e.source or "").strip().splitlines()[:1]
        raise StageFailed(f"{name}.ipynb failed in cell {e.cell_index} ({first[0] if first else ''!r}...): "
                          f"{e.ename}: {e.evalue}\n  the partly executed notebook: {out}") from None
    seconds = time.perf_counter() - start
    _to_html(out)
    # "ok" only once the notebook and its HTML are complete: a run killed before this line shows
    # the stage as "running", and --resume runs it again.
    record_stage(run, name, status="ok", seconds=round(seconds, 1))
    return seconds


# nbconvert's lab template loads require.js, MathJax and mermaid from a CDN: without these blocks
# the page needs no network, like report.html (our notebooks hold no widgets, math or diagrams).
OFFLINE_TEMPLATE = """{%- extends 'index.html.j2' -%}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
"""


def _to_html(notebook: Path) -> None:
    """The executed notebook as self-contained HTML beside it (code shown: it is the record of the stage)."""
    import nbformat
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    if notebook.is_file():
        exporter = HTMLExporter(extra_loaders=[DictLoader({"tunebook-offline.html.j2": OFFLINE_TEMPLATE})],
                                template_file="tunebook-offline.html.j2", embed_images=True)
        body, _ = exporter.from_notebook_node(nbformat.read(notebook, as_version=4))
        write_text(notebook.with_suffix(".html"), body)


def run_experiment(params_file: str | None, overrides: list[str], resume: str | None = None,
                   stages: list[str] | None = None) -> Run:
    """Create (or resume) a run folder and execute the notebooks in order."""
    if resume:
        run = Run(Path(resume))
        if not run.config_file.is_file():
            raise ConfigError(f"--resume {resume}: not a run folder (no config.yaml)")
        done = {k for k, v in read_json(run.manifest_file, {}).get("stages", {}).items() if v.get("status") == "ok"}
    else:
        run, done = create_run(load_config(params_file, overrides)), set()
    print(f"run folder: {run.dir}", flush=True)
    for name in stages or NOTEBOOKS:
        if name in done:
            print(f"  {name}: done before, skipped", flush=True)
            continue
        print(f"  {name} ...", end="", flush=True)
        seconds = run_notebook(run, name)
        print(f" {seconds:.0f} s", flush=True)
    return run


def select_stages(spec: str) -> list[str]:
    """Notebook names from "01,02" or "04-tune-model"; an unknown name is an error, not "all"."""
    chosen = []
    for part in (x.strip() for x in spec.split(",") if x.strip()):
        match = [n for n in NOTEBOOKS if n == part or n.startswith(part.zfill(2) + "-")]
        if not match:
            raise ConfigError(f"--stages: unknown stage {part!r}; use numbers 01-06 or names: {', '.join(NOTEBOOKS)}")
        chosen += [m for m in match if m not in chosen]
    return [n for n in NOTEBOOKS if n in chosen]  # always in pipeline order


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: run one experiment, the bundled ones, or resume a run."""
    p = argparse.ArgumentParser(prog="python -m helpers.pipeline", description=__doc__.split("\n")[0])
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--params", help="params/<experiment>.yaml")
    g.add_argument("--bundled", action="store_true", help=f"run {' and '.join(BUNDLED)}")
    g.add_argument("--resume", metavar="RUN_DIR", help="finish an interrupted run in its own folder")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a param, e.g. tune.max_steps=10")
    p.add_argument("--stages", help="comma-separated notebook names or numbers to run (default: all)")
    a = p.parse_args(argv)
    # The kernels inherit this: progress bars would fill the executed notebooks with redraws.
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    started, runs = time.perf_counter(), []
    try:
        stages = select_stages(a.stages) if a.stages else None
        if a.resume and a.set:
            raise ConfigError("--set cannot change a run being resumed (its config.yaml is what ran); "
                              "start a new run with --params and --set instead")
        files = BUNDLED if a.bundled else [a.params] if a.params else [None]
        for f in files:
            runs.append(run_experiment(str(paths.ROOT / f) if a.bundled else f, a.set, a.resume, stages))
    except (StageFailed, ConfigError) as e:
        print(f"\nFAILED: {e}", file=sys.stderr)
        return 1
    finally:
        _write_index()
    print(f"\ndone in {time.perf_counter() - started:.0f} s.")
    for r in runs:
        print("\n".join(outcome_lines(r)))
    if (paths.REPORTS / "index.html").is_file():
        print(f"index of all runs: {paths.REPORTS / 'index.html'}")
    return 0


def outcome_lines(run: Run) -> list[str]:
    """What a finished run left for the user: rows set aside (and where), and the pages that exist."""
    from .data import read_jsonl

    lines = [f"{run.dir}:"]
    for name, what in (("problems.jsonl", "set aside by validation (01)"), ("rejects.jsonl", "dropped by cleaning (02)")):
        path = run.data / name
        n = len(read_jsonl(path)) if path.is_file() else 0
        if n:
            lines.append(f"  {n} rows {what}: see {path}")
    report = run.dir / "report.html"
    lines.append(f"  report: {report}" if report.is_file() else
                 f"  no report.html (stage 06 did not run); executed notebooks: {run.notebooks}")
    return lines


def _write_index() -> None:
    """Refresh reports/index.html (even after a failure, so the failed run is listed)."""
    from . import report

    report.write_index(paths.REPORTS)


if __name__ == "__main__":
    sys.exit(main())
