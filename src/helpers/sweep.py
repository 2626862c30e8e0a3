"""Sweeps: every combination of a grid of params values as its own run, gathered on one page.

    python -m helpers.pipeline --params params/smoke.yaml --grid 'augment.enabled=true,false tune.lora.r=8,16'
    make sweep EXP=params/smoke.yaml GRID='augment.enabled=true,false'

Grid syntax: entries `KEY=V1,V2,...` separated by spaces; each value is read as YAML (so
`true` is a bool, `8` an int). A value list that starts with `[` is one YAML list, which is how
values holding commas are written: `augment.ops=[[typo], [swap, typo]]` is two variants. A params
file's `sweep: {grid: {...}}` is the same grid; --grid keys replace the file's for the same key.
The first value of each key makes the first variant, the reference the others are compared with.
The pipeline runs the variants (reusing stages whose inputs did not change: helpers.reuse) and
write_sweep() writes reports/sweep-<name>-<stamp>/sweep.html and sweep.json.
"""
from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from .config import Config, ConfigError, SweepParams, load_config, parse_overrides
from .runs import Run, read_json, write_json

# An entry starts where whitespace is followed by `dotted.key=`; spaces inside a YAML list stay.
_ENTRY_START = re.compile(r"\s+(?=[A-Za-z_][\w-]*(?:\.[\w-]+)*=)")


@dataclass
class Variant:
    """One combination: the swept keys' values (as resolved) and the run's whole config."""

    values: dict[str, Any]
    config: Config


@dataclass
class Plan:
    """A sweep before it runs: its id and folder, the grid, and every variant's config."""

    id: str
    folder: Path
    params_file: str
    overrides: list[str]
    grid: dict[str, list[Any]]
    variants: list[Variant] = field(default_factory=list)
    created: str = ""

    def tag(self, index: int) -> dict[str, Any]:
        """What a variant's manifest records under "sweep"."""
        return {"id": self.id, "page": f"{self.folder.name}/sweep.html", "index": index,
                "variants": len(self.variants), "values": self.variants[index].values}


def parse_grid(specs: list[str]) -> dict[str, list[Any]]:
    """{"key": [values]} from ["a.b=1,2 c.d=[[x, y], [z]]", ...]; errors name the entry."""
    grid: dict[str, list[Any]] = {}
    for spec in specs:
        for entry in _ENTRY_START.split(spec.strip()):
            if not entry:
                continue
            if "=" not in entry:
                raise ConfigError(f"--grid {entry!r}: expected KEY=V1,V2 (e.g. tune.lora.r=8,16)")
            key, text = (part.strip() for part in entry.split("=", 1))
            if text.startswith("["):
                try:
                    values = yaml.safe_load(text)
                except yaml.YAMLError as e:
                    raise ConfigError(f"--grid {entry!r}: the value list is not valid YAML: {e}") from None
            else:
                parts = text.split(",")
                if not text or any(not p.strip() for p in parts):
                    raise ConfigError(f"--grid {entry!r}: an empty value; write values as V1,V2 or as a YAML list [V1, V2]")
                values = [yaml.safe_load(p) for p in parts]
            if not isinstance(values, list) or not values:
                raise ConfigError(f"--grid {entry!r}: give one or more values, e.g. {key}=8,16 or {key}=[8, 16]")
            if key in grid:
                raise ConfigError(f"--grid: {key} is given twice; put all its values in one entry")
            grid[key] = values
    return grid


def _at(tree: dict, dotted: str) -> Any:
    """The value at a dotted key of a nested dict."""
    for part in dotted.split("."):
        tree = tree[part]
    return tree


def label(values: dict[str, Any]) -> str:
    """'augment.enabled=true tune.lora.r=8': a variant in one line."""
    return " ".join(f"{k}={json.dumps(v)}" for k, v in values.items())


def variant_configs(params_file: str, overrides: list[str], grid: dict[str, list[Any]]) -> list[Variant]:
    """Every combination's resolved config (sweep section emptied), each validated like a params file."""
    clash = sorted(set(grid) & set(_dotted(parse_overrides(overrides))))
    if clash:
        raise ConfigError(f"{', '.join(clash)}: both swept and set with --set; drop one of them")
    out, seen = [], set()
    for combo in itertools.product(*grid.values()):
        raw = dict(zip(grid, combo))
        try:
            cfg = load_config(params_file, list(overrides) + [f"{k}={json.dumps(v)}" for k, v in raw.items()])
        except ConfigError as e:
            raise ConfigError(f"sweep variant {label(raw)}:\n{e}") from None
        cfg = cfg.model_copy(update={"sweep": SweepParams()})
        dump = cfg.model_dump(mode="json")
        values = {k: _at(dump, k) for k in grid}  # as validated: "1e-4" becomes 0.0001
        key = json.dumps(values, sort_keys=True)
        if key in seen:
            raise ConfigError(f"sweep variant {label(values)} appears twice (a value listed twice?)")
        seen.add(key)
        out.append(Variant(values, cfg))
    return out


def _dotted(tree: dict, prefix: str = "") -> dict[str, Any]:
    """Nested override dict as dotted keys."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_dotted(v, f"{prefix}{k}."))
        out[f"{prefix}{k}"] = v
    return out


def plan(params_file: str, overrides: list[str], grid_specs: list[str], reports: Path | None = None) -> Plan:
    """Check every variant's config and reserve the sweep's folder; nothing runs yet."""
    from . import paths

    base = load_config(params_file, overrides)
    grid = {**{k: list(v) for k, v in base.sweep.grid.items()}, **parse_grid(grid_specs)}
    if not grid:
        raise ConfigError("a sweep needs a grid: --grid 'KEY=V1,V2' or a sweep: {grid: ...} section in the params file")
    variants = variant_configs(params_file, overrides, grid)
    reports = Path(reports or paths.REPORTS)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    name = base.sweep.name or base.experiment.name
    folder, n = reports / f"sweep-{name}-{stamp}", 1
    while True:
        try:
            folder.mkdir(parents=True)
            break
        except FileExistsError:  # sweeps never overwrite sweeps
            n += 1
            folder = reports / f"sweep-{name}-{stamp}-{n}"
    p = Plan(folder.name.removeprefix("sweep-"), folder, str(params_file), list(overrides), grid, variants,
             datetime.now().isoformat(timespec="seconds"))
    write_json(folder / "sweep.json", describe(p, []))
    return p


def tag_run(run: Run, tag: dict[str, Any]) -> None:
    """Record in a run's manifest which sweep and variant it is."""
    m = read_json(run.manifest_file, {})
    m["sweep"] = tag
    write_json(run.manifest_file, m)


def sweep_runs(sweep_id: str, reports: Path) -> dict[int, Run]:
    """The sweep's run folders by variant index (from their manifests)."""
    out: dict[int, Run] = {}
    for manifest_file in sorted(reports.glob("*/manifest.json")):
        tag = (read_json(manifest_file, {}) or {}).get("sweep") or {}
        if tag.get("id") == sweep_id:
            out[int(tag["index"])] = Run(manifest_file.parent)
    return out


def describe(p: Plan, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """sweep.json: the grid, and per variant its values, run folder, status and figures."""
    return {"id": p.id, "created": p.created, "params_file": p.params_file, "overrides": p.overrides,
            "grid": p.grid, "reference": 0, "variants": rows or
            [{"index": i, "values": v.values, "run": None, "status": "not started"} for i, v in enumerate(p.variants)]}


def write_sweep(p: Plan, reports: Path) -> Path:
    """Gather the sweep's runs and write sweep.json, the table as CSV, the plots and sweep.html."""
    from . import sweep_report

    runs = sweep_runs(p.id, Path(reports))
    rows = sweep_report.variant_rows(p.variants, runs)
    write_json(p.folder / "sweep.json", describe(p, rows))
    return sweep_report.write_page(p, rows)
