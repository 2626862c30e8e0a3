"""Stage 04, classification with tune.ensemble: N: a seed ensemble, scored and used as one model.

A driver of stage 04 (helpers.tune runs it after training). model/final is member 0 (seed
experiment.seed); members 1 .. N-1 train on the same rows and validation rows with seeds
experiment.seed + i, so each starts from another random head (and adapter) and sees the rows in
another order, for the same planned steps (a time budget is shared: 01 plans each member's steps
for time_budget_minutes / N). Writes model/members/<i>/{final, member.json},
tables/tune-ensemble.csv and metrics["tune"]["ensemble"]. A rerun reuses every member whose
member.json exists.

Stage 05 scores, `make predict` labels with, and `make export` ships the ensemble: the members'
class probabilities averaged (soft voting; `members_proba`). 05 also scores model/final alone, so
the report shows what the ensemble bought.

Why: members make different mistakes. On the airline tweets (2026-12-05, 2-core EPYC, 1,428 test
tweets; README, "How far the bundled classifier goes"), every average of three 10-minute
classifiers measured (12) scored a macro AUC 0.0039-0.0045 above its members' mean, and a macro F1
-0.002 to +0.013 from theirs (seeds 42, 43, 44 alone: 0.803 / 0.945, 0.795 / 0.941, 0.798 / 0.940;
together 0.798 / 0.947). Averaging three members' merged weights instead (a "soup") scored 0.799 /
0.945, between its members: the members stay separate models.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import artifacts, inference, models, runs, training
from .config import Config, ConfigError, apply_overrides
from .runs import Run

STAGE = "tune"  # part of stage 04: its table and metrics sit with the tuning's
DONE = "member.json"
ONE_PROCESS = ("tune.ensemble: the members train one after another in one process; run this stage without "
               "accelerate launch, or set tune.ensemble to 1")


def member_seed(cfg: Config, i: int) -> int:
    """Member i's seed: experiment.seed for model/final (member 0), then one more per member."""
    return cfg.experiment.seed + i


def member_folder(run: Run, i: int) -> Path:
    """Where member i's merged model lives: model/final for member 0, else model/members/<i>/final."""
    return run.model / "final" if i == 0 else run.model / "members" / str(i) / "final"


def train_members(run: Run, cfg: Config) -> dict[str, Any]:
    """Train members 1 .. N-1 (model/final is member 0), record each one's best validation scores."""
    n = cfg.tune.ensemble  # > 1 only for classification: the config refuses it for chat
    if training.world_size() > 1:
        raise ConfigError(ONE_PROCESS)
    train_rows, val_rows = training.load_splits(run)
    # With tune.eval_rows, the members validate on model/final's sample, not on one drawn with their own seed
    val_rows = training.eval_sample(cfg, val_rows)
    first = runs.read_json(run.metrics_file, {}).get("tune", {})
    best = first.get("best_step") or first.get("steps")
    rows = [{"member": 0, "seed": member_seed(cfg, 0), "folder": "model/final", "train_rows": first.get("train_rows"),
             "validation_rows": first.get("validation_rows"), "best_step": best, "steps": first.get("steps"),
             **training.best_eval(runs.read_json(run.model / "log_history.json", []), best)}]
    for i in range(1, n):
        member_cfg = apply_overrides(cfg, {"experiment.seed": member_seed(cfg, i)})
        final = member_folder(run, i)
        about = {"member": i, "seed": member_seed(cfg, i), "folder": final.relative_to(run.dir).as_posix()}
        rows.append(training.fit_saved(member_cfg, train_rows, val_rows, final.parent, DONE, about))
    table = pd.DataFrame(rows)
    artifacts.table(run, STAGE, "ensemble", table, f"The {n} members of the ensemble (tune.ensemble): each one's "
                    "seed, steps and best validation scores. Stage 05 scores their averaged probabilities.")
    result = {"members": n, "seeds": [member_seed(cfg, i) for i in range(n)], "per_member": rows}
    return runs.record_metrics(run, STAGE, {"ensemble": result})["ensemble"]


def folders(run: Run, cfg: Config) -> list[Path]:
    """The saved classifiers that make the tuned model: model/final, then each member's folder."""
    found = [member_folder(run, i) for i in range(cfg.tune.ensemble)]
    missing = [f for f in found if not (f / "config.json").is_file()]
    if missing:
        raise FileNotFoundError(f"{missing[0]} holds no model (tune.ensemble is {cfg.tune.ensemble}): run "
                                f"04-tune-model (it trains every member; a rerun continues the missing ones)")
    return found


@dataclass
class Probabilities:
    """Class probabilities (N texts, labels) of the tuned model and of each saved classifier behind it."""

    labels: list[str]
    members: list[np.ndarray]  # one (N, labels) array per member, model/final first

    @property
    def average(self) -> np.ndarray:
        """The tuned model's probabilities: the members' average (one member: its own)."""
        return np.mean(self.members, axis=0)


def members_proba(run: Run, cfg: Config, texts: list[str], batch_size: int, proba=None) -> Probabilities:
    """Every member's class probabilities on texts (folders_proba over this run's members)."""
    return folders_proba(folders(run, cfg), cfg, texts, batch_size, proba)


def folders_proba(found: list[Path], cfg: Config, texts: list[str], batch_size: int, proba=None) -> Probabilities:
    """The class probabilities of each classifier saved in found, one loaded at a time; they must share
    one label order. proba(model, tokenizer, texts, max_length, batch_size) computes them (default:
    inference.predict_proba; make predict passes one with a progress bar)."""
    proba = proba or inference.predict_proba
    labels, members = None, []
    for folder in found:
        model, tok = models.load_saved(folder, cfg)
        own = inference.model_labels(model)
        if labels is not None and own != labels:
            raise ConfigError(f"{folder} predicts labels {own}, {found[0]} {labels}: a model that lacked a label in "
                              f"training, or one left from an earlier run; set data.labels so every model has the "
                              f"same outputs, and run 04-tune-model again")
        labels = own
        members.append(proba(model, tok, texts, cfg.model.max_length, batch_size))
        del model
    return Probabilities(labels or [], members)
