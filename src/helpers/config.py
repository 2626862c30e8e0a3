"""Typed, layered experiment config: defaults in code <- params/<exp>.yaml <- overrides.

A params file holds only the differences from the defaults below. It may name a base file
with `extends: other.yaml` (relative to itself). Unknown keys and wrong types are errors that
name the key and the file. Each stage section is owned by the module of the same name.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError, model_validator

from .sections import (AugmentParams, CleanParams, ConfigError, DataParams, EvaluateParams, ExperimentParams,
                       ExploreParams, ModelParams, ReportParams, SearchParams, Section, SweepParams, Task, TuneParams)

TASK_DEFAULTS: dict[Task, dict[str, Any]] = {
    "chat": {},
    "classification": {
        # The classification head starts from scratch: 2e-4 barely moves it in a few hundred
        # steps. 1e-3 is what the airline experiment found (macro F1 0.78 vs 0.64 at 2e-4).
        "tune.learning_rate": 1.0e-3,
        # Short texts (tweets, reviews: ~30-60 tokens) make 32 rows a small batch; at 8 a
        # step's gradient is noisy and an epoch takes 4x the steps.
        "tune.batch_size": 32,
    },
}


class Config(Section):
    experiment: ExperimentParams = ExperimentParams()
    data: DataParams = DataParams()
    explore: ExploreParams = ExploreParams()
    clean: CleanParams = CleanParams()
    augment: AugmentParams = AugmentParams()
    model: ModelParams = ModelParams()
    tune: TuneParams = TuneParams()
    search: SearchParams = SearchParams()
    evaluate: EvaluateParams = EvaluateParams()
    report: ReportParams = ReportParams()
    sweep: SweepParams = SweepParams()

    @model_validator(mode="after")
    def _check_splits(self) -> "Config":
        s = self.data.split
        if s.validation + s.test >= 0.9:
            raise ValueError("data.split: validation + test must leave at least 10% for training")
        if self.tune.ensemble > 1 and self.experiment.task != "classification":
            raise ValueError(f"tune.ensemble: {self.tune.ensemble} averages classifiers' probabilities; a "
                             f"{self.experiment.task} model's answers cannot be averaged that way: set it to 1")
        return self


def _deep_merge(base: dict, update: dict) -> dict:
    """Return base with update merged in, recursing into nested dicts."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def read_params_file(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict:
    """Read a params YAML, following `extends:` to its base files."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"params file not found: {path} (give a path such as params/smoke.yaml)")
    if path.resolve() in _seen:
        raise ConfigError(f"{path}: `extends` loops back to itself")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (experiment:, data:, ...), got {type(raw).__name__}")
    base = raw.pop("extends", None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise ConfigError(f"{path}: `extends` must be a file name (e.g. extends: smoke.yaml), got {base!r}")
    if not (path.parent / base).is_file():
        raise ConfigError(f"{path}: `extends: {base}` names a file that does not exist ({path.parent / base}); "
                          f"the base is looked up relative to {path.name}'s folder")
    parent = read_params_file(path.parent / base, _seen + (path.resolve(),))
    return _deep_merge(parent, raw)


def parse_overrides(overrides: list[str] | dict | None) -> dict:
    """Turn ["tune.max_steps=10", ...] or {"tune.max_steps": 10} into a nested dict."""
    if not overrides:
        return {}
    items = overrides.items() if isinstance(overrides, dict) else [_split_override(o) for o in overrides]
    nested: dict = {}
    for key, value in items:
        node = nested
        *parents, leaf = key.split(".")
        for i, p in enumerate(parents):
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key!r}: {'.'.join(parents[:i + 1])!r} was also set to a value; "
                                  f"set either the section's keys or a value, not both")
        node[leaf] = value
    return nested


def _split_override(text: str) -> tuple[str, Any]:
    """Split 'a.b=value' and read value as YAML (so 10 is an int, [a, b] a list)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE, e.g. tune.max_steps=10")
    key, value = text.split("=", 1)
    if not value.strip():
        return key.strip(), None
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError as e:
        where = f" ({e.problem})" if getattr(e, "problem", None) else ""
        raise ConfigError(f"override {key.strip()!r}: the value {value!r} is not valid YAML{where}; close the "
                          f"bracket or quote (e.g. {key.strip()}=[a, b]), or pass it as a quoted text: "
                          f"--set {key.strip()}='\"{value}\"'") from None


def _explain(err: ValidationError, origin: str) -> str:
    """One line per problem: the dotted key, what is wrong, where it came from."""
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            parent = e["loc"][:-1]
            model: Any = Config
            for p in parent:
                model = model.model_fields[p].annotation
            known = ", ".join(model.model_fields) if hasattr(model, "model_fields") else ""
            lines.append(f"  {key}: unknown key (known here: {known})")
        else:
            lines.append(f"  {key}: {e['msg']} (got {e.get('input')!r})")
    return f"{origin}: invalid params\n" + "\n".join(lines)


def with_task_defaults(layers: dict) -> dict:
    """layers on top of their task's TASK_DEFAULTS (an unknown task is left to validation to report)."""
    experiment = layers.get("experiment")
    task = experiment.get("task", ExperimentParams().task) if isinstance(experiment, dict) else ExperimentParams().task
    defaults = TASK_DEFAULTS.get(task, {}) if isinstance(task, str) else {}
    return _deep_merge(parse_overrides(defaults), layers)


def load_config(params_file: str | Path | None = None, overrides: list[str] | dict | None = None) -> Config:
    """Build the resolved config: typed defaults <- task defaults <- params file (and its bases) <- overrides."""
    layers = read_params_file(params_file) if params_file else {}
    origin = str(params_file) if params_file else "defaults"
    over = parse_overrides(overrides)
    if over:
        origin += f" + overrides {overrides}"
    try:
        return Config.model_validate(with_task_defaults(_deep_merge(layers, over)))
    except ValidationError as e:
        raise ConfigError(_explain(e, origin)) from None


def apply_overrides(cfg: Config, overrides: list[str] | dict | None) -> Config:
    """A resolved config with dotted-key overrides on top, validated like a params file."""
    try:
        return Config.model_validate(_deep_merge(cfg.model_dump(mode="json"), parse_overrides(overrides)))
    except ValidationError as e:
        raise ConfigError(_explain(e, f"overrides {overrides}")) from None


def to_yaml(cfg: Config) -> str:
    """The resolved config as YAML, every key spelled out: what ran."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys (lists stay values)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def task_defaults(task: Task) -> Config:
    """The defaults of one task: the section defaults with TASK_DEFAULTS[task] on top."""
    return load_config(overrides={"experiment.task": task})


def diff_from_defaults(cfg: Config) -> dict[str, Any]:
    """Dotted keys whose values differ from the defaults of the run's task (for the runs index)."""
    mine = flatten(cfg.model_dump(mode="json"))
    base = flatten(task_defaults(cfg.experiment.task).model_dump(mode="json"))
    return {k: v for k, v in mine.items() if base.get(k) != v}
