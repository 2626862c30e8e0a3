"""What a stage shows in the run's report: figures, tables and notes, registered in order.

Each stage calls figure() / table() / note(); stage 06 renders the registry
(`artifacts.json` in the run folder) section by section. Re-running a stage replaces its
entries with the same stage, name and kind, so a rerun never duplicates a figure (a table
and a figure may share a name: the perplexity table and its chart).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from . import plots
from .runs import Run, atomic_write, read_json, write_json

STAGES = ["explore", "clean", "augment", "tune", "search", "evaluate"]  # report section order


def _register(run: Run, entry: dict[str, Any]) -> None:
    """Add or replace (same stage, name and kind) an entry in the run's artifacts.json."""
    path = run.dir / "artifacts.json"
    key = (entry["stage"], entry["name"], entry["kind"])
    items = [e for e in read_json(path, []) if (e["stage"], e["name"], e["kind"]) != key]
    items.append(entry)
    write_json(path, items)


def figure(run: Run, stage: str, name: str, fig, caption: str = "") -> Path:
    """Save a matplotlib figure as figures/<stage>-<name>.png, register it for the report, close it.

    Closed, so the inline backend does not show it a second time beside the saved PNG
    (display(fig) still draws it) and a command line never piles up open figures.
    """
    path = plots.save(fig, run.figures, f"{stage}-{name}")
    plots.plt.close(fig)
    _register(run, {"stage": stage, "name": name, "kind": "figure", "path": str(path.relative_to(run.dir)),
                     "caption": caption})
    return path


def table(run: Run, stage: str, name: str, df: pd.DataFrame, caption: str = "", empty: str = "") -> Path:
    """Save a table as tables/<stage>-<name>.csv and register it (empty says why it has no rows)."""
    folder = run.dir / "tables"
    folder.mkdir(exist_ok=True)
    path = folder / f"{stage}-{name}.csv"
    with atomic_write(path) as f:  # a killed run never leaves half a table
        df.to_csv(f, index=False)
    _register(run, {"stage": stage, "name": name, "kind": "table", "path": str(path.relative_to(run.dir)),
                    "caption": caption, "rows": len(df), "empty": empty})
    return path


def read_table(path: Path) -> pd.DataFrame:
    """A registered table read back; a table without rows (or columns) is a valid, empty result."""
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:  # pandas writes a frame with no columns as one newline
        return pd.DataFrame()


def note(run: Run, stage: str, name: str, markdown: str) -> None:
    """Register a short markdown text (a finding, an example) for the report."""
    _register(run, {"stage": stage, "name": name, "kind": "note", "markdown": markdown})


def items(run: Run) -> list[dict[str, Any]]:
    """The registered entries, grouped in pipeline stage order, registration order within."""
    entries = read_json(run.dir / "artifacts.json", [])
    order = {s: i for i, s in enumerate(STAGES)}
    return sorted(entries, key=lambda e: order.get(e["stage"], len(STAGES)))
