"""One plotting style for every figure, and saving figures into the run folder.

The backend is matplotlib's own choice: inline in JupyterLab and under Papermill (ipykernel
sets it), Agg on a machine without a display (tests, CI, the command lines), or whatever
MPLBACKEND names.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import seaborn as sns

PAGE_WIDTH = 7.5  # inches: a figure at this width fits a printed page


def apply_style() -> None:
    """The project's matplotlib/seaborn style: readable, print-friendly, colour-blind safe."""
    sns.set_theme(context="notebook", style="whitegrid", palette="colorblind")
    plt.rcParams.update({"figure.figsize": (PAGE_WIDTH, 4.0), "figure.dpi": 100, "savefig.dpi": 120,
                         "savefig.bbox": "tight", "axes.titleweight": "bold", "axes.titlesize": 12})


def save(fig, figures_dir: Path, name: str) -> Path:
    """Save a figure as figures_dir/name.png (the report embeds it) and return the path."""
    figures_dir.mkdir(parents=True, exist_ok=True)
    path = figures_dir / f"{name}.png"
    from .runs import atomic_write

    with atomic_write(path, "wb") as f:  # a killed run never leaves half a PNG
        fig.savefig(f, format="png")
    return path


def show_inline() -> None:
    """In a Jupyter kernel, let display(fig) show the figure itself: under the Agg backend IPython
    registers no PNG view of a figure, and the inline backend would show every figure twice."""
    try:
        from IPython import get_ipython
        from IPython.core.pylabtools import select_figure_formats
    except ImportError:  # plain Python: nothing displays figures
        return
    shell = get_ipython()
    if shell is not None:
        select_figure_formats(shell, {"png"})


apply_style()
show_inline()
