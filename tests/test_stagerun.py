"""Around one Papermill execution: task-tagged cells dropped, progress shown live, outputs tidied."""
import io
import os
import time

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from helpers import paths, pipeline, stagerun
from helpers.config import load_config
from helpers.runs import create_run


def tagged(cell, *tags):
    cell.metadata["tags"] = list(tags)
    return cell


def small_notebook():
    return new_notebook(cells=[
        new_markdown_cell("# title"),
        tagged(new_code_cell("x = 1"), "parameters"),
        tagged(new_markdown_cell("## Chat · perplexity"), "task-chat"),
        tagged(new_code_cell("print('chat')"), "task-chat"),
        tagged(new_markdown_cell("## Classification · ROC"), "task-classification"),
        tagged(new_code_cell("print('classification')"), "task-classification", "other-tag"),
        tagged(new_markdown_cell("## Both tasks"), "task-chat", "task-classification"),
        new_code_cell("print('every task')"),
    ])


def test_task_cells_keeps_untagged_and_own_task_only():
    nb = small_notebook()
    chat = [c.source for c in stagerun.task_cells(nb, "chat").cells]
    assert chat == ["# title", "x = 1", "## Chat · perplexity", "print('chat')", "## Both tasks", "print('every task')"]
    classification = [c.source for c in stagerun.task_cells(nb, "classification").cells]
    assert classification == ["# title", "x = 1", "## Classification · ROC", "print('classification')",
                              "## Both tasks", "print('every task')"]
    assert len(nb.cells) == 8  # the source notebook is left whole


def test_a_misspelt_task_tag_is_an_error_naming_the_cell():
    nb = small_notebook()
    tagged(nb.cells[3], "task-chta")
    with pytest.raises(ValueError, match=r"01-x.ipynb, cell 3: tag task-chta names no task; use task-chat or"):
        stagerun.task_cells(nb, "chat", "01-x.ipynb")
    with pytest.raises(ValueError, match="unknown task 'regression'"):
        stagerun.task_cells(small_notebook(), "regression")


def erased_bar():
    """What a tqdm bar with leave=False writes: its redraws, then blanks over itself."""
    from tqdm import tqdm

    out = io.StringIO()
    for _ in tqdm(range(3), file=out, desc="Loading", leave=False, mininterval=0):
        pass
    assert "Loading" in out.getvalue()
    return out.getvalue()


def test_tidy_streams_keeps_each_bars_last_state_and_other_outputs():
    cell = new_code_cell("train()")
    redraws = ["\rtrain:   0%|          | 0/4 [00:00<?, ?it/s]"] + [
        f"\rtrain: {25 * i:3d}%|███       | {i}/4 [00:0{i}<00:01,  1.00it/s]" for i in range(1, 5)]
    cell.outputs = [new_output("stream", name="stderr", text=t) for t in redraws + ["\n"]]
    cell.outputs += [new_output("stream", name="stdout", text="done\n"),
                     new_output("stream", name="stderr", text=erased_bar()),
                     new_output("display_data", data={"text/plain": "table"})]
    (tidy,) = stagerun.tidy_streams(new_notebook(cells=[cell])).cells
    assert [o.output_type for o in tidy.outputs] == ["stream", "stream", "display_data"]
    assert tidy.outputs[0].text == "train: 100%|███       | 4/4 [00:04<00:01,  1.00it/s]\n"
    assert tidy.outputs[1].text == "done\n"


def test_progress_echo_shows_progress_lines_only():
    out = io.StringIO()  # not a tty: one line per progress update let through by log_interval
    echo = stagerun.ProgressEcho("  04-tune-model ...", out, log_interval=0)
    echo.write("Some warning from a library\n")
    echo.write("\r 10%|█         | 2/20 [00:01<00:09,  2.00it/s, loss=3.2]")
    echo.write("\n\x1b[A\rEvaluating: 3it [00:02,  1.50it/s]")  # a nested bar, one line down
    echo.close()
    assert out.getvalue() == ("\n    10%|█         | 2/20 [00:01<00:09,  2.00it/s, loss=3.2]"
                              "\n    Evaluating: 3it [00:02,  1.50it/s]\n  04-tune-model ...")


def test_progress_echo_in_a_log_prints_at_most_every_interval_and_the_last_state():
    out = io.StringIO()
    echo = stagerun.ProgressEcho("  05 ...", out, log_interval=3600)
    for i in range(1, 6):
        echo.write(f"\rscoring: {i}/5 [00:0{i}<00:00]")
    echo.close()
    assert out.getvalue() == "\n    scoring: 1/5 [00:01<00:00]\n    scoring: 5/5 [00:05<00:00]\n  05 ..."


def test_progress_echo_on_a_terminal_redraws_one_line_and_clears_it():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    out = Terminal()
    echo = stagerun.ProgressEcho("  04 ...", out, interval=0)
    echo.write("\r 50%|█████     | 1/2 [00:01<00:01]")
    echo.write("\r100%|██████████| 2/2 [00:02<00:00]")
    echo.close()
    text = out.getvalue()
    assert "\n" not in text and text.count("\r  04 ... ") == 2 and text.endswith("\r  04 ...")


def test_progress_echo_on_a_narrow_terminal_keeps_the_numbers(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(stagerun.shutil, "get_terminal_size", lambda: os.terminal_size((60, 20)))
    out = Terminal()
    echo = stagerun.ProgressEcho("  04 ...", out, interval=0)
    echo.write("\rtrain:  45%|" + "█" * 40 + " " * 50 + "| 9/20 [00:12<00:15, loss=2.1]")
    assert out.getvalue() == "\r  04 ... train:  45%| 9/20 [00:12<00:15, loss=2.1]"


def test_run_notebook_streams_progress_live_and_keeps_only_the_runs_task(reports, monkeypatch, tmp_path):
    """A tiny notebook through the pipeline's own run_notebook: the kernel's bar reaches the terminal
    while the cell still runs; the executed copy and its HTML hold the chat cells only and one bar line."""
    nb = small_notebook()
    nb.cells[1].source = 'run_dir = ""'
    nb.metadata = nbformat.read(paths.NOTEBOOKS / "01-explore-data.ipynb", as_version=4).metadata  # the kernel
    nb.cells.append(new_code_cell(
        "import time\nfrom tqdm.auto import tqdm\nfor _ in tqdm(range(3), desc='steps', mininterval=0):\n"
        "    time.sleep(0.2)\ntime.sleep(1.5)"))
    folder = tmp_path / "notebooks"
    folder.mkdir()
    nbformat.write(nb, folder / "09-tiny.ipynb")
    monkeypatch.setattr(paths, "NOTEBOOKS", folder)
    for name, value in pipeline.kernel_env({}).items():  # what pipeline.main sets for its kernels
        monkeypatch.setenv(name, value)
    run = create_run(load_config("params/smoke.yaml"), reports)

    seen = []

    class Echo(stagerun.ProgressEcho):
        def write(self, text):
            seen.append((time.monotonic(), text))
            return super().write(text)

    out = io.StringIO()
    pipeline.run_notebook(run, "09-tiny", progress=Echo("  09-tiny ...", out, log_interval=0))
    finished = time.monotonic()
    bars = [t for t, text in seen if "steps: 100%" in text]
    assert bars and finished - bars[0] > 1.0, "the bar reached the pipeline only after the cell ended"
    assert "steps: 100%|" in out.getvalue() and "IProgress" not in out.getvalue()

    executed = nbformat.read(run.notebooks / "09-tiny.ipynb", as_version=4)
    sources = [c.source for c in executed.cells]
    assert "## Chat · perplexity" in sources and "## Classification · ROC" not in sources
    outputs = "".join(o.get("text", "") for c in executed.cells for o in c.get("outputs", []))
    assert "classification" not in outputs and outputs.count("steps:") == 1 and "IProgress" not in outputs
    assert executed.metadata.papermill.input_path == "notebooks/09-tiny.ipynb"
    html = (run.notebooks / "09-tiny.html").read_text()
    assert "Chat · perplexity" in html and "Classification · ROC" not in html and html.count("steps:") == 1
