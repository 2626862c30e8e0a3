"""Bench one lever: packed rows through transformers' sdpa (a dense block-diagonal mask over the whole
row) against helpers.packed_attention (one causal SDPA call per chat), in one process, alternating.

    python -m helpers.bench_attention --run reports/<chat run>   [--chats 8] [--batches 3] [--repeats 3]

Batches of `--chats` consecutive chats from the run's training split (data/train.augmented.jsonl),
forward and backward of the base model as the run loads it (fp32 unless the run's precision says
otherwise), then one validation-sized batch (twice the chats) forward only. Prints each batch's
tokens, both medians and the speed-up, and checks that both give the same loss.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from . import data, models, packed_attention, tasks
from .config import load_config

IMPLEMENTATIONS = ("sdpa", packed_attention.NAME)


def time_batch(model, batch: dict, backward: bool, repeats: int) -> dict[str, tuple[float, float]]:
    """Median seconds and the loss of each attention implementation on one packed batch."""
    seconds: dict[str, list[float]] = {impl: [] for impl in IMPLEMENTATIONS}
    losses: dict[str, float] = {}
    for _ in range(repeats):
        for impl in IMPLEMENTATIONS:  # alternating: a machine that gets busier slows both alike
            model.set_attn_implementation(impl)
            model.zero_grad(set_to_none=True)
            model.train(backward)
            start = time.perf_counter()
            with torch.set_grad_enabled(backward):
                out = model(**batch, use_cache=False)
                if backward:
                    out.loss.backward()
            seconds[impl].append(time.perf_counter() - start)
            losses[impl] = out.loss.item()
    return {impl: (statistics.median(seconds[impl]), losses[impl]) for impl in IMPLEMENTATIONS}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m helpers.bench_attention", description=__doc__.split("\n")[0])
    p.add_argument("--run", required=True, help="a chat run folder (its config and training split)")
    p.add_argument("--chats", type=int, default=8, help="chats per training batch (the validation batch: twice)")
    p.add_argument("--batches", type=int, default=2, help="training batches to time")
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args(argv)
    run = Path(a.run)
    cfg = load_config(run / "config.yaml")
    split = run / "data" / "train.augmented.jsonl"
    rows = data.read_jsonl(split if split.is_file() else run / "data" / "train.jsonl")
    tok, model = models.load_tokenizer(cfg), models.load_causal_lm(cfg)
    task = tasks.for_config(cfg)
    if not task.packs(cfg, model.config.model_type):
        raise SystemExit(f"{run.name}: this run does not pack its chat batches (tune.packing, or a model type "
                         f"outside tasks.chat.DECODERS): there is no packed row to time")
    collate = task.collator(cfg, tok, model.config.model_type)  # the batches training builds

    def packed(chunk):
        return collate(list(task.encode(tok, chunk, None, cfg.model.max_length, "train")))

    n = a.chats
    cases = [(f"training batch {i + 1}, {n} chats", rows[i * n:(i + 1) * n], True) for i in range(a.batches)]
    cases.append((f"validation batch, {2 * n} chats", rows[a.batches * n:(a.batches + 2) * n], False))
    print(f"{run.name}: {models.model_name(cfg)}, torch threads {torch.get_num_threads()}")
    for name, chunk, backward in cases:
        if not chunk:
            continue
        batch = packed(chunk)
        got = time_batch(model, batch, backward, a.repeats)
        (dense, loss_a), (per_chat, loss_b) = got.values()
        same = "same loss" if abs(loss_a - loss_b) <= 1e-4 * max(1.0, abs(loss_a)) else f"LOSS DIFFERS {loss_a} {loss_b}"
        print(f"{name}: {batch['input_ids'].shape[1]} tokens, sdpa {dense:.2f} s, packed_sdpa {per_chat:.2f} s, "
              f"speed-up {dense / per_chat:.2f}x, {same}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
