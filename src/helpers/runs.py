"""One folder per run: resolved config, manifest, data, model, figures, metrics, notebooks."""
from __future__ import annotations

import json
import os
import platform
import random
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import IO, Any, Iterator

import numpy as np

from . import paths
from .config import Config, ConfigError, load_config, to_yaml

TRACKED_PACKAGES = ["torch", "transformers", "datasets", "peft", "accelerate", "evaluate",
                    "scikit-learn", "optuna", "papermill", "numpy", "pandas"]


@dataclass(frozen=True)
class Run:
    """Paths of one run folder; every stage reads and writes through these."""

    dir: Path

    @property
    def data(self) -> Path:
        return self.dir / "data"

    @property
    def model(self) -> Path:
        return self.dir / "model"

    @property
    def figures(self) -> Path:
        return self.dir / "figures"

    @property
    def notebooks(self) -> Path:
        return self.dir / "notebooks"

    @property
    def train_file(self) -> Path:
        """The training rows: stage 03's augmented file when it exists, else stage 02's split."""
        augmented = self.data / "train.augmented.jsonl"
        return augmented if augmented.is_file() else self.data / "train.jsonl"

    @property
    def config_file(self) -> Path:
        return self.dir / "config.yaml"

    @property
    def metrics_file(self) -> Path:
        return self.dir / "metrics.json"

    @property
    def manifest_file(self) -> Path:
        return self.dir / "manifest.json"

    def config(self) -> Config:
        """The resolved config this run was created with."""
        return load_config(self.config_file)


def create_run(cfg: Config, reports: Path | None = None) -> Run:
    """Make a new run folder (never reusing one) and record the config and manifest."""
    reports = Path(reports or paths.REPORTS)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = reports / f"{cfg.experiment.name}-{stamp}"
    folder, n = base, 1
    while True:
        try:
            folder.mkdir(parents=True)
            break
        except FileExistsError:  # two runs in one second: suffix, never overwrite
            n += 1
            folder = Path(f"{base}-{n}")
    run = Run(folder)
    for sub in (run.data, run.model, run.figures, run.notebooks):
        sub.mkdir()
    write_text(run.config_file, to_yaml(cfg))
    write_json(run.manifest_file, manifest(cfg))
    return run


def open_run(run_dir: str | Path | None, params_file: str | Path | None = None,
             overrides: list[str] | dict | None = None, create: bool = False) -> tuple[Run, Config]:
    """The notebooks' entry point: the run in run_dir, else a new one (create=True, stage 01),
    else the newest run of params_file's experiment (so a later stage can be rerun by hand)."""
    if run_dir:
        run = Run(_repo_path(run_dir))
        if not run.config_file.is_file():
            raise ConfigError(f"{run.dir} is not a run folder (no config.yaml); run stage 01 first or leave run_dir empty")
        return run, run.config()
    cfg = load_config(_repo_path(params_file) if params_file else None, overrides)
    if create:
        return create_run(cfg), cfg
    runs = sorted(Path(paths.REPORTS).glob(f"{cfg.experiment.name}-*/config.yaml"), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise ConfigError(f"no run of experiment {cfg.experiment.name!r} under {paths.REPORTS}; run 01-explore-data first")
    run = Run(runs[-1].parent)
    return run, run.config()


def _repo_path(p: str | Path) -> Path:
    """A path as given if it exists from here, else relative to the repo (notebooks run in notebooks/)."""
    p = Path(p)
    return p if p.is_absolute() or p.exists() else paths.ROOT / p


def package_versions() -> dict[str, str | None]:
    """The installed versions of the packages that decide a run's results (None: not installed)."""
    versions = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def manifest(cfg: Config) -> dict[str, Any]:
    """What a reader needs to reproduce the run: commit, versions, seed, machine."""
    versions = package_versions()
    return {
        "experiment": cfg.experiment.name,
        "task": cfg.experiment.task,
        "seed": cfg.experiment.seed,
        "created": datetime.now().isoformat(timespec="seconds"),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain")),
        "python": platform.python_version(),
        "packages": versions,
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpus": os.cpu_count(), "gpu": _gpu_name()},
        "stages": {},
    }


def _git(*args: str) -> str | None:
    """Output of a git command in the repo, or None outside a checkout."""
    try:
        out = subprocess.run(["git", *args], cwd=paths.ROOT, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def _gpu_name() -> str | None:
    """The CUDA device's name, if there is one."""
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def read_json(path: Path, default: Any = None) -> Any:
    """A JSON file's content, or default when it does not exist."""
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else default


@contextmanager
def atomic_write(path: Path, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file beside path and rename it over path once the block ends without error.

    A run killed mid-write (SIGKILL, power cut) leaves the old file or none, never half a file that
    a resumed run would take as done. The temporary name carries the process id, so two writers
    never share one.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": ""})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: Path, text: str) -> Path:
    """Write a UTF-8 text file atomically; returns the path."""
    with atomic_write(path) as f:
        f.write(text)
    return Path(path)


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (a killed run never leaves half a file)."""
    write_text(path, json.dumps(obj, indent=2, default=_jsonable))


def _jsonable(obj: Any) -> Any:
    """numpy scalars and arrays, paths: as plain JSON values."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


def record_metrics(run: Run, stage: str, metrics: dict[str, Any]) -> dict[str, Any]:
    """Merge a stage's figures into metrics.json under the stage's key; returns them."""
    allm = read_json(run.metrics_file, {})
    allm[stage] = {**allm.get(stage, {}), **metrics}
    write_json(run.metrics_file, allm)
    return allm[stage]


def record_stage(run: Run, stage: str, **info: Any) -> None:
    """Add a stage's wall time and status to the manifest."""
    m = read_json(run.manifest_file, {})
    m.setdefault("stages", {})[stage] = {**m.get("stages", {}).get(stage, {}), **info}
    write_json(run.manifest_file, m)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (every device's generator) from the one seed: what
    transformers.set_seed does, without importing transformers' trainer utilities (5 s at the top
    of every notebook on a 2-core machine; the Trainer seeds itself from the same seed)."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)

