"""The bench's FLOP counting, matmul ceiling and phase timing, on tiny shapes (no training)."""
import math
import time

import pytest
import torch
from transformers import BertConfig, LlamaConfig

from helpers import bench, bench_ceiling, bench_paths


def test_llama_shapes_use_the_key_value_heads_and_a_gated_mlp():
    config = LlamaConfig(hidden_size=64, intermediate_size=160, num_attention_heads=8, num_key_value_heads=2,
                         num_hidden_layers=3, vocab_size=1000)
    # head_dim 8: q and o are 64 x 64, k and v 64 x 16 (2 kv heads), then gate, up, down
    assert bench_ceiling.projection_shapes(config) == [(64, 64), (64, 16), (64, 16), (64, 64), (64, 160), (64, 160), (160, 64)]


def test_bert_shapes_have_full_attention_and_two_mlp_matrices():
    config = BertConfig(hidden_size=32, intermediate_size=128, num_attention_heads=4, num_hidden_layers=2)
    assert bench_ceiling.projection_shapes(config) == [(32, 32)] * 4 + [(32, 128), (128, 32)]


def test_flops_per_token_count_forward_and_input_gradient_and_the_head_at_labelled_positions():
    config = LlamaConfig(hidden_size=64, intermediate_size=160, num_attention_heads=8, num_key_value_heads=2,
                         num_hidden_layers=3, vocab_size=1000)
    per_layer = 64 * 64 * 2 + 64 * 16 * 2 + 64 * 160 * 3  # weights of one block's projections
    f = bench_ceiling.flops_per_token(config, loss_share=0.25)
    assert f["blocks"] == 4 * 3 * per_layer  # 2 FLOPs per weight, twice (forward, input gradient), 3 layers
    assert f["head"] == 4 * 64 * 1000 * 0.25
    assert f["total"] == f["blocks"] + f["head"]
    assert bench_ceiling.flops_per_token(config, 0.25, causal=False)["head"] == 0.0


def test_smollm2_counts_as_the_issue_measured_by_hand():
    # SmolLM2-135M's config: ~425 MFLOP in the blocks; the issue's ~460 with the head at ~1/3 of positions
    config = LlamaConfig(hidden_size=576, intermediate_size=1536, num_attention_heads=9, num_key_value_heads=3,
                         num_hidden_layers=30, vocab_size=49152)
    f = bench_ceiling.flops_per_token(config, loss_share=1 / 3)
    assert f["blocks"] == pytest.approx(424.67e6, rel=1e-4)
    assert f["total"] == pytest.approx(462.4e6, rel=1e-3)


def test_ceiling_is_the_flops_over_the_fastest_passes(monkeypatch):
    shapes = [(8, 4), (4, 8)]
    ticks = iter(range(10_000))  # a fake clock: every perf_counter call is 1 ms later
    monkeypatch.setattr(bench_ceiling.time, "perf_counter", lambda: next(ticks) / 1000)
    rate = bench_ceiling.matmul_flops_per_s(shapes, tokens=16, dtype=torch.float32, seconds=0.01)
    # each pass reads the clock twice in a row: 1 ms per shape, 2 ms for the block
    assert rate == pytest.approx((4 * 16 * 8 * 4 * 2) / 0.002)


def test_ceiling_runs_real_matmuls():
    rate = bench_ceiling.matmul_flops_per_s([(16, 8)], tokens=4, dtype=torch.float32, seconds=0.01)
    assert math.isfinite(rate) and rate > 0


def test_phases_count_nested_time_once():
    class Box:
        def outer(self):
            time.sleep(0.02)
            return self.inner() + 1

        def inner(self):
            time.sleep(0.05)
            return 1

    phases = bench_paths.Phases()
    phases.wrap(Box, "outer", "outer")
    phases.wrap(Box, "inner", "inner")
    assert Box().outer() == 2
    assert 0.05 <= phases.seconds["inner"] < 0.2
    assert 0.02 <= phases.seconds["outer"] < 0.05  # its own 20 ms, not the inner 50
    Box().inner()
    assert phases.calls == {"outer": 1, "inner": 2}  # the bench's validation rate counts the passes


def test_the_classifier_paths_train_their_own_steps():
    spec = {"steps": 30, "cls_steps": 150, "set": "pairs"}
    assert bench_paths.set_spec(spec, "airline") == {**spec, "steps": 150, "set": "airline"}
    assert bench_paths.set_spec(spec, "multiturn") == {**spec, "set": "multiturn"}


def test_summary_compares_ours_with_the_fastest_reference_in_the_loop_and_the_wall():
    train = [{"set": "pairs", "path": "ours", "tokens_per_s": 300.0, "seconds": 40.0, "val_loss": 1.8},
             {"set": "pairs", "path": "pipeline", "tokens_per_s": 150.0, "seconds": 80.0, "val_loss": 1.8},
             {"set": "pairs", "path": "docs", "tokens_per_s": 100.0, "seconds": 60.0, "val_loss": 2.0},
             {"set": "pairs", "path": "trl", "tokens_per_s": 120.0, "seconds": 100.0, "val_loss": 2.2}]
    s = bench.summary(train)["pairs"]
    assert s["best_reference"] == "trl" and s["train_speedup"] == pytest.approx(2.5)
    assert s["wall_speedup"] == pytest.approx(2.5) and s["pipeline_ratio"] == pytest.approx(0.5)
    assert s["val_loss_gap_pct"] == pytest.approx(100 * (1.8 - 2.2) / 2.2)
