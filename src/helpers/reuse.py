"""Stage reuse: a stage whose inputs are the same as in an earlier finished run takes that run's
outputs instead of recomputing them.

A stage's key is a content hash of the config keys it reads (STAGE_CONFIG), the SHA-256 of
each input file (STAGE_INPUTS; for 01 the data source's files) and the code version (git
commit, a hash of uncommitted changes under src/ and notebooks/, and the tracked package
versions). When a stage finishes, the pipeline records in the manifest's stage entry its key
and exactly what it wrote: every new or changed file in the run folder with its SHA-256, the
metrics.json sections, the artifacts.json entries and the config.yaml keys it changed. Reuse
copies those into the new run (the config keys set on the new run's own config.yaml) and
records `reused_from`. Modes: "same-code" (default: never across a change of code version),
"any" (ignore the code version), "off".
"""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from . import data, paths
from .config import apply_overrides, flatten, to_yaml
from .runs import Run, package_versions, read_json, record_stage, write_json, write_text

MODES = ("same-code", "any", "off")

# The config keys (dotted prefixes) each stage reads: its notebook plus the helpers it calls
# with the config (tests/test_reuse.py checks every `cfg.x.y` in them is covered). A stage
# not listed (06, the report of the run itself) always runs.
STAGE_CONFIG: dict[str, list[str]] = {
    # 01: loading (data.*), token lengths (model.*), the epoch estimate (tune.batch_size and
    # grad_accum, data.split), the near-duplicate count; its timed training steps read all of
    # tune.* (STAGE_CONFIG_IF).
    "01-explore-data": ["experiment.task", "experiment.seed", "data", "model", "explore",
                        "clean.near_dup_threshold", "tune.batch_size", "tune.grad_accum",
                        "tune.time_budget_minutes"],
    # 02: cleaning and splitting; the tokenizer for too_long (model.*: the test reads by module);
    # explore.examples sizes a shown table.
    "02-clean-data": ["experiment.task", "experiment.seed", "data.split", "clean", "model", "explore.examples"],
    # 03: the ops; model.* for the chat tokenizer and the paraphrase model; the examples table.
    "03-augment-data": ["experiment.task", "experiment.seed", "augment", "model", "explore.examples"],
    # 04: training, the search (its default study name is the experiment name), cross-validation
    # (scores the test split in evaluate.batch_size).
    "04-tune-model": ["experiment.task", "experiment.seed", "experiment.name", "data.labels", "model", "tune", "search",
                      "evaluate.batch_size"],
    # 05: scoring (tune.ensemble: how many members make the tuned classifier); robustness perturbs
    # prompts at augment.word_share.
    "05-evaluate-model": ["experiment.task", "experiment.seed", "model", "evaluate", "augment.word_share",
                          "tune.ensemble"],
}
# Keys a stage's outputs depend on only under a setting: 01 times stage 04's training path (all of
# tune.*) either way, but only a time budget turns that timing into the steps 04 trains. Without
# one, 01's timing is an estimate for reading, and a sweep over tune.* reuses 01 once for all its
# variants (the estimate is then the first variant's); with one, each variant plans its own steps.
STAGE_CONFIG_IF: dict[str, tuple[str, list[str]]] = {"01-explore-data": ("tune.time_budget_minutes", ["tune"])}
# Input files of each stage, relative to the run folder (a "/**" suffix: every file below).
# Only data the stage reads, not the earlier stages' notebooks or timings, so a recomputed
# stage that wrote the same data still lets the next one be reused.
STAGE_INPUTS: dict[str, list[str]] = {
    "01-explore-data": [],  # plus data.source's own files (data.source_files)
    "02-clean-data": ["data/loaded.jsonl"],
    "03-augment-data": ["data/train.jsonl"],
    "04-tune-model": ["data/train.jsonl", "data/train.augmented.jsonl", "data/validation.jsonl", "data/test.jsonl"],
    "05-evaluate-model": ["model/final/**", "model/members/**", "data/test.jsonl", "data/train.jsonl",
                          "data/train.augmented.jsonl"],
}
# Written by every stage: a stage's share of them is recorded as sections and entries, not files.
# config.yaml too: a stage that settles a value in it (01: model.max_length auto -> a number; 04: a
# search's best values) records the keys it changed, and reuse applies those keys to the new run's own
# config, which may differ elsewhere (a sweep variant's tune.* keys).
SHARED_FILES = {"manifest.json", "metrics.json", "artifacts.json", "config.yaml"}


def parse_mode(text: str) -> str:
    """--reuse / REUSE value: same-code, any, off (0 and 1 as make-friendly aliases)."""
    mode = {"0": "off", "1": "same-code", "": "same-code", "no": "off", "none": "off"}.get(text.strip().lower(),
                                                                                          text.strip().lower())
    if mode not in MODES:
        raise ValueError(f"reuse mode {text!r}: use same-code (default), any or off (REUSE=0)")
    return mode


# ---------------------------------------------------------------- hashing

def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _pick(tree: dict, dotted: str) -> Any:
    """The value at a dotted key of a nested dict (KeyError names the key)."""
    node: Any = tree
    for part in dotted.split("."):
        node = node[part]
    return node


def config_digest(cfg_dump: dict, keys: list[str]) -> str:
    """SHA-256 of the values of the given dotted keys (canonical JSON)."""
    picked = {k: _pick(cfg_dump, k) for k in keys}
    return hashlib.sha256(json.dumps(picked, sort_keys=True, default=str).encode()).hexdigest()


def input_digests(run: Run, stage: str) -> dict[str, str]:
    """{relative path: SHA-256} of the stage's input files that exist (01: the data source's files)."""
    out: dict[str, str] = {}
    for pattern in STAGE_INPUTS.get(stage, []):
        if pattern.endswith("/**"):
            base = run.dir / pattern[:-3]
            files = sorted(p for p in base.rglob("*") if p.is_file()) if base.is_dir() else []
        else:
            files = [run.dir / pattern] if (run.dir / pattern).is_file() else []
        for p in files:
            out[p.relative_to(run.dir).as_posix()] = file_digest(p)
    if stage == "01-explore-data":
        try:
            files = data.source_files(run.config())
        except FileNotFoundError:  # a bundled package missing: stage 01 itself says how to fix it
            files = []
        for p in files:
            out[f"source:{_source_name(p)}"] = file_digest(p)
    return out


def _source_name(path: Path) -> str:
    """A source file's name without the machine's path: relative to the repo or the package."""
    try:
        return path.resolve().relative_to(paths.ROOT.resolve()).as_posix()
    except ValueError:
        return "/".join(path.parts[-3:])


def _git(*args: str) -> str | None:
    """Output of a git command in the repo, or None outside a checkout."""
    try:
        out = subprocess.run(["git", *args], cwd=paths.ROOT, capture_output=True, timeout=30)
        return out.stdout.decode("utf-8", "replace") if out.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        return None


@lru_cache(maxsize=1)
def code_version() -> dict[str, str | None]:
    """The code a stage ran with: commit, a hash of uncommitted changes to the code, package versions."""
    commit = (_git("rev-parse", "HEAD") or "").strip() or None
    dirty = None
    code = ["src", "notebooks", "pyproject.toml"]
    if commit and (_git("status", "--porcelain", "--", *code) or "").strip():
        h = hashlib.sha256((_git("diff", "HEAD", "--", *code) or "").encode())
        for rel in sorted((_git("ls-files", "--others", "--exclude-standard", "--", *code) or "").split("\n")):
            if rel and (paths.ROOT / rel).is_file():
                h.update(rel.encode() + file_digest(paths.ROOT / rel).encode())
        dirty = h.hexdigest()[:16]
    packages = hashlib.sha256(json.dumps(package_versions(), sort_keys=True).encode()).hexdigest()[:16]
    return {"commit": commit, "dirty": dirty, "packages": packages}


def stage_key(run: Run, stage: str) -> dict[str, Any] | None:
    """What decides a stage's outputs: config digest, input file digests, code version (None: never reused)."""
    if stage not in STAGE_CONFIG:
        return None
    dump = run.config().model_dump(mode="json")
    return {"config": config_digest(dump, stage_config(stage, dump)), "inputs": input_digests(run, stage),
            "code": code_version()}


def stage_config(stage: str, dump: dict[str, Any]) -> list[str]:
    """The config keys a stage's key covers: STAGE_CONFIG, plus STAGE_CONFIG_IF's when its setting is on."""
    keys = list(STAGE_CONFIG[stage])
    if stage in STAGE_CONFIG_IF:
        setting, more = STAGE_CONFIG_IF[stage]
        if flatten(dump).get(setting):
            keys += more
    return keys


def same_key(a: dict, b: dict, mode: str) -> bool:
    """Whether two stage keys allow reuse under mode (an unknown commit never matches in same-code)."""
    if a.get("config") != b.get("config") or a.get("inputs") != b.get("inputs"):
        return False
    return mode == "any" or (a.get("code") == b.get("code") and bool((a.get("code") or {}).get("commit")))


# ---------------------------------------------------------------- what a stage wrote

@dataclass
class Snapshot:
    """The run folder before a stage: file sizes and times, metrics sections, artifact entries."""

    files: dict[str, tuple[int, int]]
    metrics: dict[str, Any]
    artifacts: list[dict] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)  # config.yaml as dotted keys


def _files(run: Run) -> dict[str, tuple[int, int]]:
    """{relative path: (size, mtime_ns)} of every plain file in the run folder but the shared ones."""
    out = {}
    for p in run.dir.rglob("*"):
        rel = p.relative_to(run.dir).as_posix()
        if p.is_file() and not p.is_symlink() and rel not in SHARED_FILES and not rel.endswith(".tmp"):
            st = p.stat()
            out[rel] = (st.st_size, st.st_mtime_ns)
    return out


def snapshot(run: Run) -> Snapshot:
    """The state a stage starts from, to tell afterwards what it wrote."""
    return Snapshot(_files(run), read_json(run.metrics_file, {}), read_json(run.dir / "artifacts.json", []),
                    _config_keys(run))


def _config_keys(run: Run) -> dict[str, Any]:
    """The run's config.yaml as dotted keys ({} when there is none)."""
    return flatten(run.config().model_dump(mode="json")) if run.config_file.is_file() else {}


def _entry_id(e: dict) -> list[str]:
    """An artifacts.json entry's identity (artifacts._register replaces on it)."""
    return [e["stage"], e["name"], e["kind"]]


def stage_outputs(run: Run, before: Snapshot) -> dict[str, Any]:
    """What a finished stage wrote: new or changed files (with SHA-256), metrics sections, artifact entries."""
    after = _files(run)
    files = {rel: file_digest(run.dir / rel) for rel in sorted(after) if before.files.get(rel) != after[rel]}
    metrics = read_json(run.metrics_file, {})
    old = [json.dumps(e, sort_keys=True) for e in before.artifacts]
    entries = [_entry_id(e) for e in read_json(run.dir / "artifacts.json", []) if json.dumps(e, sort_keys=True) not in old]
    config = _config_keys(run)
    return {"outputs": files, "metrics_keys": [k for k in metrics if before.metrics.get(k) != metrics[k]],
            "artifacts": entries, "config_changes": {k: v for k, v in config.items() if before.config.get(k) != v}}


def record_outputs(run: Run, stage: str, before: Snapshot, key: dict | None) -> None:
    """Write the stage's key and outputs into its manifest entry (what makes it reusable)."""
    record_stage(run, stage, key=key, **stage_outputs(run, before))


# ---------------------------------------------------------------- finding and copying

def find_source(run: Run, stage: str, key: dict, mode: str) -> tuple[Run, dict] | None:
    """The newest other finished run (same reports folder) whose stage had this key and whose
    recorded outputs are still there unchanged; None if there is none or mode is off."""
    if mode == "off":
        return None
    candidates = []
    for manifest_file in run.dir.parent.glob("*/manifest.json"):
        if manifest_file.parent.resolve() == run.dir.resolve():
            continue
        entry = (read_json(manifest_file, {}) or {}).get("stages", {}).get(stage, {})
        if entry.get("status") == "ok" and "outputs" in entry and same_key(key, entry.get("key") or {}, mode):
            candidates.append((read_json(manifest_file, {}).get("created", ""), manifest_file.parent.name, entry))
    for _, name, entry in sorted(candidates, key=lambda c: (c[0], c[1]), reverse=True):
        source = Run(run.dir.parent / name)
        if all((source.dir / rel).is_file() and file_digest(source.dir / rel) == digest
               for rel, digest in entry["outputs"].items()):
            return source, entry
    return None


def reuse_stage(run: Run, stage: str, source: Run, entry: dict, key: dict) -> None:
    """Copy a finished stage's files, metrics sections and artifact entries from source into run."""
    start = time.perf_counter()
    for rel in entry["outputs"]:
        target = run.dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        # A copy, not a hard link: a later rerun of a stage in either run writes some files in
        # place (safetensors, CSVs), which through a shared inode would change the other run.
        shutil.copy2(source.dir / rel, target)
    if entry.get("config_changes"):  # what the stage settled in config.yaml, on this run's own config
        write_text(run.config_file, to_yaml(apply_overrides(run.config(), entry["config_changes"])))
    theirs = read_json(source.metrics_file, {})
    mine = read_json(run.metrics_file, {})
    for k in entry.get("metrics_keys", []):
        if k in theirs:
            mine[k] = theirs[k]
    write_json(run.metrics_file, mine)
    wanted = [list(i) for i in entry.get("artifacts", [])]
    copied = [e for e in read_json(source.dir / "artifacts.json", []) if _entry_id(e) in wanted]
    kept = [e for e in read_json(run.dir / "artifacts.json", []) if _entry_id(e) not in wanted]
    write_json(run.dir / "artifacts.json", kept + copied)
    record_stage(run, stage, status="ok", seconds=round(time.perf_counter() - start, 1), key=key,
                 reused_from=source.dir.name, computed_in=entry.get("computed_in") or source.dir.name,
                 reused_at=datetime.now().isoformat(timespec="seconds"), outputs=entry["outputs"],
                 metrics_keys=entry.get("metrics_keys", []), artifacts=entry.get("artifacts", []),
                 config_changes=entry.get("config_changes", {}))
