"""Benchmark: our training and evaluation paths against the usual recipes, on the same work,
measured against this machine's own matmul ceiling.

    python -m helpers.bench [--steps 30] [--cls-steps 150] [--batch-size 8] [--max-length 128] [--model NAME] [--out bench/]
                            [--sets pairs,multiturn,airline] [--paths ours,pipeline,docs,trl]
                            [--serving yes|no|only]

First the ceiling: the model's own projection matmuls (hidden and MLP shapes from its config) at
each data set's tokens per optimizer step, forward plus the input gradient LoRA training needs,
in bf16 and fp32 (`matmul_flops_per_s`), and the FLOPs one trained token needs
(`flops_per_token`, counted from the config). Then the training paths, each in its own process
(so peak memory is its own), on the same data, model, LoRA configuration, learning rate, seed
and number of optimizer steps, on three data sets:
  pairs      the chatterbot pairs (short: ~56 tokens), cap --max-length
  multiturn  multi-turn chats of real lengths recombined from the bundled support chats, cap 256
  airline    the airline tweets, for the classifier paths
Chat paths:
  ours      helpers.training.fit with the bench's knobs (no validation during training)
  pipeline  helpers.training.fit as stage 04 calls it, with params/chat-faq.yaml as it is (its cap,
            its batch, the step-0 validation and sample answers), for the bench's steps
  docs      the transformers/PEFT documentation recipe: Trainer, fp32, padding to the longest in
            the batch, loss on every token (DataCollatorForLanguageModeling)
  trl       TRL's SFTTrainer with its defaults (bf16, gradient checkpointing, loss on every token)
Classifier paths (params/sentiment-airline.yaml's model, batch, lr and cap): ours (training.fit, no
validation), pipeline (the same with its step-0 validation), docs (Trainer, fp32,
DataCollatorWithPadding to the longest; the same LoRA adapter).
Each reports wall time, the training loop's time and its optimizer steps' time (the same Trainer
callback in every path), tokens/s, achieved FLOP/s over the steps as a share of the bf16 and
fp32 ceilings, peak resident memory, where the wall time outside the loop goes (model
resolution, load, adapters and bf16 copy, tokenization, Trainer setup; validation and samples
inside the loop), and the same yardstick after training: mean assistant-token cross-entropy on
held-out chats (fp32), or validation loss and macro F1 on held-out tweets. Then evaluation:
batched perplexity and batched KV-cache generation against the same code one example at a time.
Then serving (helpers.servebench): the base model behind `transformers serve` under 1, 4 and 16
concurrent clients beside in-process batched generate (`--serving only` runs just that table).
Writes bench/<timestamp>/results.json and results.md; the last line printed is the speed-up.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from . import paths
from .bench_classify import classifier_worker
from .bench_paths import (CLS_PATHS, PATHS, SETS, cached_load_seconds, ceiling_bench, eval_bench, serving_bench, set_spec,
                          worker)


# ---------------------------------------------------------------- driver

def run_in_subprocess(mode: str, spec: dict) -> dict[str, Any]:
    """Run `python -m helpers.bench --worker mode` and return its JSON result."""
    proc = subprocess.run([sys.executable, "-m", "helpers.bench", "--worker", mode, "--spec", json.dumps(spec)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"bench worker {mode!r} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


CHAT_LABELS = {"ours": "ours (training.fit, bench knobs)", "pipeline": "pipeline (chat-faq.yaml as is)",
               "docs": "docs: Trainer, fp32, pad to longest, loss on every token",
               "trl": "TRL `SFTTrainer` defaults (bf16, gradient checkpointing)"}
CLS_LABELS = {"ours": "ours (training.fit, sentiment-airline.yaml, no validation)",
              "pipeline": "pipeline (the same, with its step-0 validation)",
              "docs": "docs: Trainer, fp32, `DataCollatorWithPadding` to the longest"}
SET_NAMES = {"pairs": "short chatterbot pairs", "multiturn": "multi-turn support chats", "airline": "airline tweets"}
PHASES = ["resolve", "load", "adapters+bf16", "tokenize", "trainer setup", "evaluate", "samples"]


def shares(r: dict, ceiling: dict) -> tuple[float, float, float]:
    """A path's achieved FLOP/s over its optimizer steps, and its share of the bf16 and fp32 ceilings."""
    achieved = ceiling["flops_per_token"]["total"] * r["tokens"] / r["step_seconds"]
    return achieved, achieved / ceiling["bf16"], achieved / ceiling["fp32"]


def ceiling_lines(results: dict[str, Any]) -> list[str]:
    """The ceiling table: per data set, tokens per step, FLOPs per token, bf16 and fp32 matmul FLOP/s."""
    rows = ["| ceiling (projection matmuls, forward + input gradient) | tokens/step | MFLOP/token | "
            "bf16 GFLOP/s | fp32 GFLOP/s |", "| --- | ---: | ---: | ---: | ---: |"]
    for name, c in results["ceiling"].items():
        f = c["flops_per_token"]
        rows.append(f"| {SET_NAMES[name]} | {c['tokens_per_step']} | {f['total'] / 1e6:.0f} "
                    f"(blocks {f['blocks'] / 1e6:.0f} + head {f['head'] / 1e6:.0f}) | {c['bf16'] / 1e9:.1f} | "
                    f"{c['fp32'] / 1e9:.1f} |")
    rows.append("FLOPs per trained token from the model config: 4 x in x out per projection per layer "
                "(forward + input gradient; LoRA needs no gradient of the frozen weights), plus the output layer "
                "4 x hidden x vocab at the labelled share of positions; adapters, attention scores and embeddings left out.")
    return rows


def train_lines(results: dict[str, Any]) -> list[str]:
    """The training tables (chat per set, classifier) with shares of the ceiling, and where the wall time goes."""
    rows = []
    for name in results["spec"]["sets"]:
        runs = [r for r in results["train"] if r["set"] == name]
        if not runs:
            continue
        c = results["ceiling"][name]
        cls = name == "airline"
        rows += ["", f"**{SET_NAMES[name]}**", "",
                 f"| path | wall s | loop s | step s | tokens/s (loop) | {'macro F1' if cls else 'loss tokens/s'} | "
                 "GFLOP/s (steps) | % bf16 ceiling | % fp32 ceiling | peak RSS GiB | val loss |",
                 "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in runs:
            achieved, bf, fp = shares(r, c)
            extra = f"{r['f1_macro']:.4f}" if cls else f"{r['loss_tokens_per_s']:.0f}"
            rows.append(f"| {(CLS_LABELS if cls else CHAT_LABELS)[r['path']]} | {r['seconds']:.1f} | "
                        f"{r['train_seconds']:.1f} | {r['step_seconds']:.1f} | {r['tokens_per_s']:.0f} | {extra} | "
                        f"{achieved / 1e9:.1f} | {100 * bf:.0f}% | {100 * fp:.0f}% | {r['peak_rss_gib']:.2f} | "
                        f"{r['val_loss']:.4f} |")
        rows += ["", "| outside the loop, s | " + " | ".join(PHASES) + " | other | total outside |",
                 "| --- |" + " ---: |" * (len(PHASES) + 2)]
        for r in runs:
            ph = r["phases"]
            inside = ph.get("evaluate", 0.0) + ph.get("samples", 0.0)  # step-0 validation runs inside the loop
            outside = r["seconds"] - r["train_seconds"]
            other = outside - sum(v for k, v in ph.items() if k not in ("evaluate", "samples"))
            rows.append(f"| {r['path']} | " + " | ".join(f"{ph.get(k, 0.0):.1f}" for k in PHASES)
                        + f" | {other:.1f} | {outside:.1f} |")
            if inside:
                passes = r.get("phase_calls", {}).get("evaluate", 1)
                rate = passes * r["val_examples"] / max(ph.get("evaluate", 0), 1e-9)
                rows.append(f"| ({r['path']}: the loop's {inside:.1f} s of validation and samples are inside the "
                            f"loop: {passes} validation pass(es) of {r['val_examples']} examples, {rate:.2f} "
                            f"examples/s) |" + " |" * (len(PHASES) + 2))
        s = results["summary"].get(name)
        if s:
            rows += ["", f"Over the best reference ({s['best_reference']}): {s['train_speedup']:.2f}x in the loop, "
                         f"{s['wall_speedup']:.2f}x in wall time; "
                     + (f"macro F1 {s['f1_gap']:+.4f}" if cls else f"validation loss {s['val_loss_gap_pct']:+.2f}%")
                     + " vs it." + (f" Pipeline path: {s['pipeline_ratio']:.2f}x ours' tokens/s in the loop."
                                     if s.get("pipeline_ratio") else "")]
    return rows


def markdown(results: dict[str, Any]) -> str:
    """The results as markdown tables, the way the README shows them."""
    from . import servebench

    if "eval" not in results:  # --serving only
        return "\n".join([servebench.markdown(results["serving"]), "", f"Machine: {results['machine']}. "
                                                                          f"Spec: {json.dumps(results['spec'])}"])
    rows = ceiling_lines(results) + train_lines(results)
    e = results["eval"]
    rows += ["", "| evaluation | perplexity s | generation s | total s |", "| --- | ---: | ---: | ---: |"]
    for name in ("one_at_a_time", "batched"):
        rows.append(f"| {name} | {e[name]['perplexity_s']:.1f} | {e[name]['generation_s']:.1f} | {e[name]['total_s']:.1f} |")
    rows += ["", f"Evaluation speed-up: {e['speedup']:.2f}x. "
                 f"Cached base-model load: {results['cached_load']['seconds']:.2f} s "
                 f"({results['cached_load']['first_s']:.2f} s for the first load in a fresh process, model code imports included).",
             f"Machine: {results['machine']}. Spec: {json.dumps(results['spec'])}"]
    if results.get("serving"):
        rows += ["", servebench.markdown(results["serving"])]
    return "\n".join(rows)


def summary(train: list[dict]) -> dict[str, Any]:
    """Per data set: ours over the fastest reference in the loop and in wall time, and the quality gap to it."""
    out = {}
    for name in dict.fromkeys(r["set"] for r in train):
        runs = {r["path"]: r for r in train if r["set"] == name}
        refs = [r for p, r in runs.items() if p not in ("ours", "pipeline")]
        if "ours" not in runs or not refs:
            continue
        ours = runs["ours"]
        best = max(refs, key=lambda r: r["tokens_per_s"])
        s = {"best_reference": best["path"], "train_speedup": ours["tokens_per_s"] / best["tokens_per_s"],
             "wall_speedup": best["seconds"] / ours["seconds"],
             "val_loss_gap_pct": 100 * (ours["val_loss"] - best["val_loss"]) / best["val_loss"]}
        if "f1_macro" in ours:
            s["f1_gap"] = ours["f1_macro"] - best["f1_macro"]
        if "pipeline" in runs:
            s["pipeline_ratio"] = runs["pipeline"]["tokens_per_s"] / ours["tokens_per_s"]
        out[name] = s
    return out


def main(argv: list[str] | None = None) -> int:
    """Parse arguments; run the workers (or, with --worker, be one)."""
    p = argparse.ArgumentParser(prog="python -m helpers.bench", description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=30, help="optimizer steps per training path")
    p.add_argument("--cls-steps", type=int, default=150,
                   help="optimizer steps per classifier path (30 steps of 32 tweets leave every path predicting one class)")
    p.add_argument("--batch-size", type=int, default=8, help="chat examples per step (the classifier uses its config's)")
    p.add_argument("--max-length", type=int, default=128, help="token cap per example on the short pairs")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--model", default=None, help="any chat model name_or_path (default: the bundled SmolLM2)")
    p.add_argument("--paths", default=",".join(PATHS), help="which chat training paths to time")
    p.add_argument("--sets", default=",".join(SETS), help="data sets: pairs, multiturn (chat), airline (classifier)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--out", default=str(paths.ROOT / "bench"))
    p.add_argument("--serving", choices=["yes", "no", "only"], default="yes",
                   help="the serving table (a transformers serve server on 127.0.0.1 under 1/4/16 clients)")
    p.add_argument("--serve-prompts", type=int, default=16, help="requests per load level in the serving table")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        spec = json.loads(a.spec)
        result = {"eval": eval_bench, "load": cached_load_seconds, "serving": serving_bench, "ceiling": ceiling_bench,
                  }.get(a.worker, lambda s: (classifier_worker if s["set"] == "airline" else worker)(a.worker, s))(spec)
        print(json.dumps(result))
        return 0
    spec = {"steps": a.steps, "cls_steps": a.cls_steps, "batch_size": a.batch_size, "max_length": a.max_length,
            "lr": a.lr, "model": a.model, "seed": a.seed, "r": 8, "alpha": 16, "val_examples": 64, "gen_examples": 16,
            "eval_batch_size": 16, "max_new_tokens": 32, "serve_prompts": a.serve_prompts, "set": "pairs", "sets": a.sets.split(","),
            "multiturn_max_length": 256, "cls_val_examples": 512, "ceiling_seconds": 2.0}
    out = Path(a.out) / datetime.now().strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True)
    machine = machine_line()
    print(f"machine: {machine}", flush=True)
    if a.serving == "only":
        return serving_only(spec, machine, out)
    print("ceiling ...", flush=True)
    results = {"spec": spec, "machine": machine, "ceiling": run_in_subprocess("ceiling", spec), "train": []}
    print("\n".join(ceiling_lines(results)), flush=True)
    for name in spec["sets"]:
        for path in (CLS_PATHS if name == "airline" else a.paths.split(",")):
            print(f"training path {path} on {SET_NAMES[name]} ...", flush=True)
            r = run_in_subprocess(path, set_spec(spec, name))
            results["train"].append(r)
            print(f"  {r['seconds']:.1f} s wall, {r['train_seconds']:.1f} s loop, {r['tokens_per_s']:.0f} tokens/s, "
                  f"{100 * shares(r, results['ceiling'][name])[1]:.0f}% of the bf16 ceiling, "
                  f"val loss {r['val_loss']:.4f}", flush=True)
    print("evaluation ...", flush=True)
    results["eval"] = run_in_subprocess("eval", spec)
    results["cached_load"] = run_in_subprocess("load", spec)
    if a.serving == "yes":
        print("serving ...", flush=True)
        results["serving"] = run_in_subprocess("serving", spec)
    results["summary"] = summary(results["train"])
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(markdown(results) + "\n")
    print(markdown(results))
    print(f"written: {out}/results.md")
    print(final_line(results))
    return 0


def final_line(results: dict[str, Any]) -> str:
    """The last line: ours over the best reference on the short pairs (loop, evaluation, wall), then the other sets."""
    s = results["summary"]
    first = s.get("pairs") or {"best_reference": "-", "train_speedup": float("nan"), "wall_speedup": float("nan")}
    rest = "".join(f"; {SET_NAMES[k]} ({v['best_reference']}): {v['train_speedup']:.2f}x training, "
                   f"{v['wall_speedup']:.2f}x wall time" for k, v in s.items() if k != "pairs")
    return (f"speed-up over the best reference ({first['best_reference']}): {first['train_speedup']:.2f}x training, "
            f"{results['eval']['speedup']:.2f}x evaluation, {first['wall_speedup']:.2f}x wall time{rest}")


def machine_line() -> str:
    """CPU model, AMX or not, cores, GPU, and the load average now (the machine may be shared)."""
    import os

    model, flags = platform.processor() or platform.machine(), ""
    try:
        info = Path("/proc/cpuinfo").read_text()
        model = next(l.split(":", 1)[1].strip() for l in info.splitlines() if l.startswith("model name"))
        flags = next(l for l in info.splitlines() if l.startswith("flags"))
    except (OSError, StopIteration):
        pass
    units = "AMX" if "amx_tile" in flags else "AVX-512 bf16, no AMX" if "avx512_bf16" in flags else "no bf16 units"
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{model} ({units}), {os.cpu_count()} CPUs, {_gpu()}, load average {load}, {datetime.now():%Y-%m-%d %H:%M}"


def serving_only(spec: dict, machine: str, out: Path) -> int:
    """`--serving only`: the serving table alone, written and printed like the full bench."""
    from . import servebench

    print("serving ...", flush=True)
    results = {"spec": spec, "machine": machine, "serving": run_in_subprocess("serving", spec)}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(markdown(results) + "\n")
    print(markdown(results))
    print(f"written: {out}/results.md")
    print(servebench.summary(results["serving"]))
    return 0


def _gpu() -> str:
    """The GPU's name, or 'no GPU'."""
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"


if __name__ == "__main__":
    sys.exit(main())
