"""The report registry: order, replacement on rerun, a table and a figure sharing a name."""
import matplotlib.pyplot as plt
import pandas as pd

from helpers import artifacts, runs
from helpers.config import load_config


def test_rerun_replaces_and_kinds_coexist(reports):
    run = runs.create_run(load_config(), reports)
    fig = plt.figure()
    artifacts.table(run, "evaluate", "perplexity", pd.DataFrame({"ppl": [1.0]}))
    artifacts.figure(run, "evaluate", "perplexity", fig)
    artifacts.note(run, "explore", "hello", "**hi**")
    artifacts.table(run, "evaluate", "perplexity", pd.DataFrame({"ppl": [2.0]}))  # a rerun of 05
    got = [(e["stage"], e["name"], e["kind"]) for e in artifacts.items(run)]
    assert got == [("explore", "hello", "note"), ("evaluate", "perplexity", "figure"),
                   ("evaluate", "perplexity", "table")]
    assert pd.read_csv(run.dir / "tables" / "evaluate-perplexity.csv")["ppl"].tolist() == [2.0]
    assert (run.figures / "evaluate-perplexity.png").stat().st_size > 0
