"""What the pipeline does around one Papermill execution: the run's task cells, live progress, tidy outputs.

- Cells tagged `task-chat` or `task-classification` belong to that task only: `task_cells` drops the
  other task's cells from the copy Papermill executes, so the executed notebook and its HTML hold
  only the run's task (a hand run in JupyterLab has every cell; the gated ones skip themselves).
- `ProgressEcho` receives the kernel's stderr while a cell runs (Papermill's `stderr_file`) and
  shows its progress-bar lines live in the terminal, one line redrawn in place.
- `tidy_streams` then keeps, in the executed notebook, only the last state of each progress bar
  (what JupyterLab shows), not every redraw.
"""
from __future__ import annotations

import re
import shutil
import sys
import time
from typing import IO, get_args

import nbformat

from .sections import Task

TASK_TAG = "task-"
TASKS = get_args(Task)
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # tqdm moves the cursor between nested bars
# tqdm's bar ("45%|████▌     | 9/20") or its time bracket ("[00:12<00:15" / "[00:12, 3.1it/s]")
PROGRESS = re.compile(r"\d+%\||\[\d+:\d\d(?::\d\d)?(?:<|,|\])")


def cell_tasks(cell) -> set[str]:
    """The tasks a cell is tagged for (empty: every task)."""
    return {t[len(TASK_TAG):] for t in cell.get("metadata", {}).get("tags", []) if t.startswith(TASK_TAG)}


def task_cells(nb, task: str, name: str = "notebook"):
    """The notebook without the cells tagged for another task (untagged cells stay); a tag naming
    no known task is an error, so a typo cannot drop a cell from every run."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; tasks are {', '.join(TASKS)}")
    for i, cell in enumerate(nb.cells):
        unknown = cell_tasks(cell) - set(TASKS)
        if unknown:
            raise ValueError(f"{name}, cell {i}: tag {TASK_TAG}{sorted(unknown)[0]} names no task; "
                             f"use {' or '.join(TASK_TAG + t for t in TASKS)}")
    return nbformat.from_dict({**nb, "cells": [c for c in nb.cells if not cell_tasks(c) or task in cell_tasks(c)]})


def tidy_streams(nb):
    """Merge each cell's consecutive stream outputs and keep only the last redraw of every
    carriage-returned line (nbconvert's CoalesceStreamsPreprocessor), as a terminal would show them;
    a stream left blank (a bar that erased itself) is dropped."""
    from nbconvert.preprocessors import CoalesceStreamsPreprocessor

    nb, _ = CoalesceStreamsPreprocessor().preprocess(nb, {})
    for cell in nb.cells:
        if cell.get("outputs"):
            cell.outputs = [o for o in cell.outputs if o.output_type != "stream" or o.text.strip()]
    return nb


class ProgressEcho:
    """A file-like sink for the kernel's stderr: shows its progress-bar lines after `prefix`.
    On a terminal the line is redrawn in place (at most every `interval` s); in a log (not a tty)
    one progress line is printed at most every `log_interval` s, so CI logs stay short."""

    def __init__(self, prefix: str, out: IO | None = None, interval: float = 0.2, log_interval: float = 30.0):
        self.prefix, self.out = prefix, out or sys.stdout
        self.tty = bool(getattr(self.out, "isatty", lambda: False)())
        self.interval = interval if self.tty else log_interval
        self.shown_at, self.width, self.shown = float("-inf"), 0, 0  # shown: lines drawn so far
        self.last = self.drawn = ""

    def write(self, text: str) -> int:
        """Take kernel stderr text; draw its last progress line if it is time to."""
        lines = [s.strip() for s in re.split(r"[\r\n]", ANSI.sub("", text)) if PROGRESS.search(s)]
        if lines:
            self.last = lines[-1]
            if time.monotonic() - self.shown_at >= self.interval:
                self._draw(self.last)
        return len(text)

    def flush(self) -> None:
        self.out.flush()

    def _draw(self, line: str) -> None:
        self.shown_at, self.shown, self.drawn = time.monotonic(), self.shown + 1, line
        if self.tty:
            columns = shutil.get_terminal_size().columns - 1
            text = f"{self.prefix} {line}"
            if len(text) > columns:  # the kernel sized its bar to the terminal: keep the numbers, not the bar
                text = f"{self.prefix} {re.sub(r'[|][^|]*[|]', '|', line, count=1)}"[:columns]
            self.out.write("\r" + text.ljust(self.width))
            self.width = len(text)
        else:
            self.out.write(f"\n    {line}")
        self.out.flush()

    def close(self) -> None:
        """Leave the terminal at `prefix` again, so the caller can finish the line."""
        if not self.shown:
            return
        if self.tty:
            self.out.write("\r" + " " * self.width + "\r" + self.prefix)
        else:
            if self.last != self.drawn:  # a log ends with each stage's final progress state
                self.out.write(f"\n    {self.last}")
            self.out.write("\n" + self.prefix)
        self.out.flush()
