"""Run the six notebooks headless with Papermill into one run folder per experiment.

    python -m helpers.pipeline --params params/chat-faq.yaml [--set tune.max_steps=10 ...]
    python -m helpers.pipeline --bundled          # the bundled chat and classification runs
    python -m helpers.pipeline --resume reports/chat-faq-20261121-101500
    python -m helpers.pipeline --params params/smoke.yaml --grid 'augment.enabled=true,false tune.lora.r=8,16'

A failing notebook stops the run with exit code 1, naming the notebook and the cell; the
partly executed notebook stays in the run folder. --resume reruns the stages that did not
finish (the tune stage continues from its last checkpoint). --grid (or a params file's
`sweep:` section) runs every combination as its own run and writes one sweep page
(helpers.sweep). A stage whose config keys, inputs and code match a finished stage of an
earlier run reuses its outputs (helpers.reuse; --reuse same-code|any|off).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from . import paths, reuse, sweep
from .config import Config, ConfigError, load_config
from .runs import Run, create_run, read_json, record_stage, write_text
from .stagerun import ProgressEcho, task_cells, tidy_streams

NOTEBOOKS = ["01-explore-data", "02-clean-data", "03-augment-data", "04-tune-model",
             "05-evaluate-model", "06-visualize-results"]
BUNDLED = ["params/chat-faq.yaml", "params/sentiment-airline.yaml"]
KERNEL = "tunebook"  # registered by `make env`; JupyterLab uses the same kernel


class StageFailed(RuntimeError):
    """A notebook raised; the message names the notebook and the cell."""


def run_notebook(run: Run, name: str, key: dict | None = None, progress: ProgressEcho | None = None) -> float:
    """Execute one notebook into the run folder, then render it to HTML; returns seconds.
    Only the run's task's cells are executed (stagerun.task_cells); the kernel's progress bars go to
    `progress` live and stay in the notebook as their last state. On success the manifest records
    what the stage wrote and its reuse key."""
    import nbformat
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    source = paths.NOTEBOOKS / f"{name}.ipynb"
    nb = task_cells(nbformat.read(source, as_version=4), run.config().experiment.task, source.name)
    out = run.notebooks / f"{name}.ipynb"
    before = reuse.snapshot(run)
    start = time.perf_counter()
    record_stage(run, name, status="running")
    try:
        pm.execute_notebook(nb, str(out), kernel_name=KERNEL, parameters={"run_dir": str(run.dir.resolve())},
                            cwd=str(paths.NOTEBOOKS), progress_bar=False, log_output=False, stderr_file=progress,
                            # the kernel's own log (e.g. "running over TCP without encryption": it only
                            # listens on localhost) would break the stage's line in the terminal
                            extra_arguments=["--IPKernelApp.log_level=ERROR"])
    except PapermillExecutionError as e:
        seconds = time.perf_counter() - start
        record_stage(run, name, status="failed", seconds=round(seconds, 1), error=f"{e.ename}: {e.evalue}")
        _finish(out, source)
        first = (e.source or "").strip().splitlines()[:1]
        raise StageFailed(f"{name}.ipynb failed in cell {e.cell_index} ({first[0] if first else ''!r}...): "
                          f"{e.ename}: {e.evalue}\n  the partly executed notebook: {out}") from None
    finally:
        if progress:
            progress.close()
    seconds = time.perf_counter() - start
    _finish(out, source)
    reuse.record_outputs(run, name, before, key)
    # "ok" only once the notebook, its HTML and its outputs' record are complete: a run killed
    # before this line shows the stage as "running", and --resume runs it again.
    record_stage(run, name, status="ok", seconds=round(seconds, 1))
    return seconds


def _finish(out: Path, source: Path) -> None:
    """The executed notebook with each progress bar at its last state, named after its source, then its HTML."""
    import nbformat

    if out.is_file():
        nb = tidy_streams(nbformat.read(out, as_version=4))
        nb.metadata.get("papermill", {})["input_path"] = f"notebooks/{source.name}"  # not the in-memory copy
        write_text(out, nbformat.writes(nb))
        _to_html(out)


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


def kernel_env(environ: dict[str, str]) -> dict[str, str]:
    """What the kernels inherit. Progress bars stay on (ProgressEcho shows them live, the executed
    notebooks keep each bar's last state), but not the datasets library's short map/filter bars, nor
    tqdm's warning that a kernel without ipywidgets gets text bars (what we want)."""
    quiet = "ignore:IProgress not found"
    warnings = environ.get("PYTHONWARNINGS", "")
    return {"HF_DATASETS_DISABLE_PROGRESS_BARS": environ.get("HF_DATASETS_DISABLE_PROGRESS_BARS", "1"),
            "PYTHONWARNINGS": warnings if quiet in warnings else ",".join(filter(None, [warnings, quiet]))}


def run_experiment(params_file: str | None, overrides: list[str], resume: str | None = None,
                   stages: list[str] | None = None, reuse_mode: str = "same-code",
                   cfg: Config | None = None, sweep_tag: dict | None = None) -> Run:
    """Create (or resume) a run folder and execute the notebooks in order, reusing finished
    stages of earlier runs where reuse_mode allows (cfg: an already resolved config, e.g. a sweep's variant)."""
    if resume:
        run = Run(Path(resume))
        if not run.config_file.is_file():
            raise ConfigError(f"--resume {resume}: not a run folder (no config.yaml)")
        done = {k for k, v in read_json(run.manifest_file, {}).get("stages", {}).items() if v.get("status") == "ok"}
    else:
        run, done = create_run(cfg or load_config(params_file, overrides)), set()
        if sweep_tag:
            sweep.tag_run(run, sweep_tag)
    print(f"run folder: {run.dir}", flush=True)
    for name in stages or NOTEBOOKS:
        if name in done:
            print(f"  {name}: done before, skipped", flush=True)
            continue
        key = reuse.stage_key(run, name)
        found = reuse.find_source(run, name, key, reuse_mode) if key else None
        if found:
            reuse.reuse_stage(run, name, *found, key)
            print(f"  {name}: reused from {found[0].dir.name}", flush=True)
            continue
        print(f"  {name} ...", end="", flush=True)
        seconds = run_notebook(run, name, key, ProgressEcho(f"  {name} ..."))
        print(f" {seconds:.0f} s", flush=True)
    return run


def run_sweep(params_file: str, overrides: list[str], grid: list[str], stages: list[str] | None,
              reuse_mode: str) -> tuple[list[Run], Path]:
    """Every combination of the grid as its own run, then the sweep page over them."""
    plan = sweep.plan(params_file, overrides, grid)  # every variant's config checked before any run
    print(f"sweep {plan.id}: {len(plan.variants)} runs over {', '.join(plan.grid)}", flush=True)
    done: list[Run] = []
    try:
        for i, variant in enumerate(plan.variants):
            print(f"\nvariant {i + 1}/{len(plan.variants)}: {sweep.label(variant.values)}", flush=True)
            done.append(run_experiment(None, [], stages=stages, reuse_mode=reuse_mode, cfg=variant.config,
                                       sweep_tag=plan.tag(i)))
            page = sweep.write_sweep(plan, paths.REPORTS)  # after each variant: the page grows with the sweep
    except BaseException:
        sweep.write_sweep(plan, paths.REPORTS)  # the page shows what finished and which run failed
        raise
    return done, page


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
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="sweep: run every combination, e.g. 'augment.enabled=true,false tune.lora.r=8,16'; "
                        "a value list holding commas is written as YAML: 'augment.ops=[[typo], [swap, typo]]'")
    p.add_argument("--reuse", default="same-code", metavar="MODE",
                   help="reuse finished stages of earlier runs: same-code (default), any (across code changes), off")
    a = p.parse_args(argv)
    os.environ.update(kernel_env(os.environ))
    started, runs, sweep_page = time.perf_counter(), [], None
    try:
        stages = select_stages(a.stages) if a.stages else None
        try:
            mode = reuse.parse_mode(a.reuse)
        except ValueError as e:
            raise ConfigError(f"--reuse: {e}") from None
        if a.resume and a.set:
            raise ConfigError("--set cannot change a run being resumed (its config.yaml is what ran); "
                              "start a new run with --params and --set instead")
        if a.grid and not a.params:
            raise ConfigError("--grid sweeps one experiment: give it with --params")
        if a.params and (a.grid or load_config(a.params, a.set).sweep.grid):
            runs, sweep_page = run_sweep(a.params, a.set, a.grid, stages, mode)
        else:
            files = BUNDLED if a.bundled else [a.params] if a.params else [None]
            for f in files:
                runs.append(run_experiment(str(paths.ROOT / f) if a.bundled else f, a.set, a.resume, stages, mode))
    except (StageFailed, ConfigError) as e:
        print(f"\nFAILED: {e}", file=sys.stderr)
        return 1
    finally:
        _write_index()
    print(f"\ndone in {time.perf_counter() - started:.0f} s.")
    for r in runs:
        print("\n".join(outcome_lines(r)))
    if sweep_page:
        print(f"the sweep: {sweep_page}")
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
