"""Stage 04 on smoke-sized data: masks, packing, methods, a tiny overfit, saved models, resume."""
import platform
from types import SimpleNamespace

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, TrainerCallback

from helpers import (adapters, bench_attention, chat, clean, data, evaluation, models, packed_attention, paths, precision, runs, schema, tasks,
                     trainer, training, tune)
from helpers.tasks import classification
from helpers.config import ConfigError, apply_overrides, load_config

SMOKE = paths.PARAMS / "smoke.yaml"
SMOKE_SENTIMENT = paths.PARAMS / "smoke-sentiment.yaml"
# A few big steps on a few short examples: the loss must fall fast, and each test stays short.
CHAT_FAST = {"model.max_length": 128, "tune.batch_size": 4, "tune.max_steps": 6, "tune.eval_steps": 3,
             "tune.save_steps": 3, "tune.learning_rate": 2e-3, "tune.warmup_ratio": 0.0,
             "tune.sample_prompts": 1, "tune.sample_max_new_tokens": 6}


@pytest.fixture(scope="module")
def short_chats() -> list[dict]:
    """The 12 shortest smoke support chats (all under 128 tokens with the template)."""
    cfg = load_config(SMOKE)
    tok = models.load_tokenizer(cfg)
    rows = data.load(cfg).rows
    return sorted(rows, key=lambda r: len(chat.encode(tok, r["messages"], 10_000).input_ids))[:12]


@pytest.fixture(scope="module")
def tweets() -> list[dict]:
    """The 300 smoke-sentiment tweets."""
    return data.load(load_config(SMOKE_SENTIMENT)).rows


def make_run(tmp_path, params, overrides, train, validation, test=()):
    """A run folder holding given splits (what stages 01-02 would write)."""
    cfg = load_config(params, overrides)
    run = runs.create_run(cfg, reports=tmp_path / "reports")
    for name, rows in (("train", train), ("validation", validation), ("test", test)):
        data.write_jsonl(run.data / f"{name}.jsonl", list(rows))
    return run, cfg


# ---------------------------------------------------------------- fast checks

def test_example_without_answer_tokens_is_an_error_naming_the_row():
    cfg = load_config(SMOKE)
    tok = models.load_tokenizer(cfg)
    long = {"id": "support-chats.jsonl:7", "messages": [{"role": "user", "content": "word " * 100},
                                                         {"role": "assistant", "content": "ok"}]}
    fine = {"id": "fine", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    assert len(tasks.chat.encode(tok, [fine], None, 40, "train")) == 1
    with pytest.raises(schema.DataError, match=r"support-chats\.jsonl:7.*model\.max_length"):
        tasks.chat.encode(tok, [fine, long], None, 40, "train")


def test_packed_batch_keeps_attention_per_example(short_chats):
    """DataCollatorWithFlattening + sdpa on CPU: each example's logits as if it were alone."""
    cfg = load_config(SMOKE)
    tok, model = models.load_tokenizer(cfg), models.load_causal_lm(cfg).eval()
    encoded = [chat.encode(tok, r["messages"], 128) for r in short_chats[:3]]
    batch = tasks.for_config(cfg).collator(cfg, tok, "llama")([{"input_ids": e.input_ids, "labels": e.labels} for e in encoded])
    assert batch["input_ids"].shape[0] == 1 and "attention_mask" not in batch  # one row, no pad
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
        start = 0
        for e in encoded:
            alone = model(input_ids=torch.tensor([e.input_ids]), use_cache=False).logits[0]
            assert torch.allclose(packed[start: start + len(e.input_ids)], alone, atol=1e-3)
            start += len(e.input_ids)
    # The first label of each example is masked: no example learns to predict the next one's start.
    starts = (batch["position_ids"][0] == 0).nonzero().flatten()
    assert (batch["labels"][0, starts] == chat.IGNORE).all()


def test_packed_attention_attends_within_each_chat_and_is_sdpa_everywhere_else(short_chats):
    """packed_sdpa (what training uses for packed batches) against sdpa's dense block-diagonal mask over the
    whole row: the same logits, loss and gradients; a left-padded batch generating with a cache, the same tokens."""
    cfg = load_config(SMOKE)
    tok, model = models.load_tokenizer(cfg), models.load_causal_lm(cfg)
    encoded = [chat.encode(tok, r["messages"], 128) for r in short_chats[:4]]
    batch = tasks.for_config(cfg).collator(cfg, tok, "llama")([{"input_ids": e.input_ids, "labels": e.labels}
                                                              for e in encoded])
    got = {}
    for impl in ("sdpa", packed_attention.NAME):
        model.set_attn_implementation(impl)
        model.zero_grad()
        out = model(**batch, use_cache=False)
        out.loss.backward()
        got[impl] = out.logits.detach(), out.loss.item(), model.model.layers[0].self_attn.q_proj.weight.grad.clone()
    (logits_a, loss_a, grad_a), (logits_b, loss_b, grad_b) = got.values()
    assert torch.allclose(logits_a, logits_b, atol=1e-3) and loss_b == pytest.approx(loss_a, abs=1e-5)
    assert torch.allclose(grad_a, grad_b, rtol=1e-3, atol=1e-6) and grad_a.abs().sum() > 0
    # Two prompts of different lengths, left-padded, greedy with a cache: the padding mask still applies.
    model.eval()
    a, b = encoded[0].input_ids[:9], encoded[1].input_ids[:14]
    ids = torch.tensor([[tok.pad_token_id] * 5 + a, b])
    mask = torch.tensor([[0] * 5 + [1] * 9, [1] * 14])
    answers = {}
    for impl in ("sdpa", packed_attention.NAME):
        model.set_attn_implementation(impl)
        answers[impl] = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=6, do_sample=False,
                                       pad_token_id=tok.pad_token_id).tolist()
    assert answers["sdpa"] == answers[packed_attention.NAME]
    # The training model attends this way when it packs, and as loaded when it does not.
    assert adapters.build_model(cfg).config._attn_implementation == packed_attention.NAME
    unpacked = adapters.build_model(load_config(SMOKE, {"tune.packing": False}))
    assert unpacked.config._attn_implementation == "sdpa"


def test_the_attention_bench_times_both_on_a_runs_chats_and_finds_the_same_loss(tmp_path, short_chats, capsys):
    run = runs.create_run(load_config(SMOKE, {"model.max_length": 128}), reports=tmp_path)
    data.write_jsonl(run.data / "train.jsonl", short_chats[:6])
    assert bench_attention.main(["--run", str(run.dir), "--chats", "2", "--batches", "1", "--repeats", "1"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "speed-up" in line]
    assert [line.split(":")[0] for line in lines] == ["training batch 1, 2 chats", "validation batch, 4 chats"]
    assert all(line.endswith("same loss") for line in lines)


def test_packed_and_padded_batches_give_the_same_loss(tmp_path, short_chats):
    """The untrained model's validation loss (step 0) must not depend on how batches are built."""
    losses = {}
    for packing in (True, False):
        cfg = load_config(SMOKE, {**CHAT_FAST, "tune.packing": packing, "tune.max_steps": 1, "tune.eval_steps": 1,
                                  "tune.save_steps": 1, "tune.sample_prompts": 0})
        fitted = training.fit(cfg, short_chats[:4], short_chats[4:8], tmp_path / str(packing))
        assert training.summarize(fitted)["packed"] == packing
        losses[packing] = fitted.trainer.state.log_history[0]["eval_loss"]  # one eval batch: 8 >= 4 rows
    assert losses[True] == pytest.approx(losses[False], abs=1e-2)


def test_default_targets_per_architecture():
    cfg = load_config(SMOKE)
    llama, bert = (SimpleNamespace(config=SimpleNamespace(model_type=t)) for t in ("llama", "bert"))
    assert adapters.target_modules(llama, cfg) == ["q_proj", "k_proj", "v_proj", "o_proj",
                                               "gate_proj", "up_proj", "down_proj"]
    assert adapters.target_modules(bert, cfg) == ["query", "key", "value", "dense"]
    unknown = SimpleNamespace(config=SimpleNamespace(model_type="newarch"))
    assert adapters.target_modules(unknown, cfg) == "all-linear"
    assert adapters.target_modules(llama, load_config(SMOKE, ["tune.lora.target_modules=[q_proj]"])) == ["q_proj"]


@pytest.mark.parametrize("method", ["lora", "dora", "rslora", "freeze", "full"])
def test_methods_train_what_they_say(method):
    cfg = load_config(SMOKE_SENTIMENT, [f"tune.method={method}", "tune.freeze_layers=4"])
    model = adapters.build_model(cfg, ["negative", "neutral", "positive"])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    n_trainable, total = adapters.count_params(model)
    assert any("classifier" in n for n in trainable)  # the new head always trains
    if method in ("lora", "dora", "rslora"):
        lora = model.peft_config["default"]
        assert lora.use_dora == (method == "dora") and lora.use_rslora == (method == "rslora")
        assert set(lora.target_modules) == {"query", "key", "value", "dense"}
        assert all("lora_" in n or "classifier" in n for n in trainable)
        assert n_trainable / total < 0.05
        assert any("lora_magnitude_vector" in n for n in trainable) == (method == "dora")
    elif method == "freeze":
        assert not any(".layer.0." in n or ".layer.3." in n or "embeddings" in n for n in trainable)
        assert any(".layer.4." in n for n in trainable) and any(".layer.5." in n for n in trainable)
    else:
        assert n_trainable == total


def test_bad_tune_params_name_the_key():
    with pytest.raises(ConfigError, match="tune.save_steps"):
        load_config(SMOKE, ["tune.save_steps=4"])  # eval_steps is 3
    with pytest.raises(ConfigError, match="tune.cv_folds"):
        load_config(SMOKE, ["tune.cv_folds=1"])
    with pytest.raises(ConfigError, match="tune.nope"):
        apply_overrides(load_config(SMOKE), ["tune.nope=1"])
    with pytest.raises(ConfigError, match="tune.freeze_layers"):
        adapters.build_model(load_config(SMOKE_SENTIMENT, ["tune.method=freeze", "tune.freeze_layers=9"]), ["a", "b"])
    with pytest.raises(ConfigError, match="tune.lora.target_modules"):
        adapters.build_model(load_config(SMOKE_SENTIMENT, ["tune.lora.target_modules=[nope]"]), ["a", "b"])
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="tune.precision"):
            precision.training_precision(load_config(SMOKE, ["tune.precision=fp16"]))


def test_class_weights_are_balanced_and_need_every_label():
    rows = [{"label": "a"}] * 3 + [{"label": "b"}]
    # clean.class_weights (rounded to 4 decimals for metrics.json), in the model's label order.
    assert classification.class_weights(rows, ["a", "b"]).tolist() == pytest.approx([4 / 6, 2.0], abs=1e-4)
    assert classification.class_weights(rows, ["b", "a"]).tolist() == pytest.approx([2.0, 4 / 6], abs=1e-4)
    assert classification.class_weights(rows, ["a", "b"]).tolist() == pytest.approx(list(clean.class_weights(rows).values()))
    with pytest.raises(schema.DataError, match="'c'"):
        classification.class_weights(rows, ["a", "b", "c"])


def test_train_file_is_the_augmented_one_when_03_wrote_it(tmp_path, tweets):
    run, _ = make_run(tmp_path, SMOKE_SENTIMENT, {}, tweets[:4], tweets[4:6])
    assert run.train_file.name == "train.jsonl"
    data.write_jsonl(run.data / "train.augmented.jsonl", tweets[:5])
    assert run.train_file.name == "train.augmented.jsonl" and len(training.load_splits(run)[0]) == 5
    assert evaluation.train_rows(run) == (tweets[:5], "train.augmented.jsonl")  # 05's baseline: the same rows


def test_classification_metrics_by_hand():
    scores = [[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]]  # predicts 0 1 0 1
    m = classification.compute_metrics((scores, [0, 1, 1, 1]))
    # class 0: P 1/2 R 1 F1 2/3; class 1: P 1 R 2/3 F1 0.8.
    # AUC: each class's scores put its own rows above every other row (0.8, 0.4, 0.7 > 0.1; 0.9 > 0.6): 1.0.
    assert m == pytest.approx({"accuracy": 0.75, "macro_f1": (2 / 3 + 0.8) / 2, "macro_auc": 1.0})


def test_step_scheduler_warms_up_then_decays_in_steps():
    factors = [trainer._step_factor(s, warmup=2, size=3, gamma=0.5) for s in range(9)]
    assert factors == pytest.approx([0, 0.5, 1, 1, 1, 0.5, 0.5, 0.5, 0.25])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_malloc_trim_gives_freed_heap_pages_back():
    """Blocks of the heap freed under one still in use: malloc_trim gives their pages back (returns 1)."""
    trim = training.ReleaseMemory().trim
    blocks = [bytearray(50_000) for _ in range(2000)]  # 100 MB in the heap (under the mmap threshold)
    last = blocks[-1]
    del blocks
    assert trim() == 1 and len(last) == 50_000


def test_memory_is_released_after_each_step_and_each_validation(tmp_path, short_chats, monkeypatch):
    calls = []
    monkeypatch.setattr(training, "malloc_trim", lambda: lambda: calls.append(1))
    cfg = load_config(SMOKE, {**CHAT_FAST, "tune.max_steps": 2, "tune.eval_steps": 1, "tune.save_steps": 1,
                              "tune.sample_prompts": 0})
    training.fit(cfg, short_chats[:4], short_chats[4:8], tmp_path)
    assert len(calls) == 2 + 3  # 2 steps; validations at steps 0, 1 and 2


def test_cli_bad_override_exits_2_naming_the_key(tmp_path, short_chats, capsys):
    run, _ = make_run(tmp_path, SMOKE, CHAT_FAST, short_chats[:4], short_chats[4:6])
    assert tune.main(["--run-dir", str(run.dir), "--set", "tune.learning_rat=1e-3"]) == 2
    assert "tune.learning_rat" in capsys.readouterr().err


# ---------------------------------------------------------------- training end to end

def test_chat_overfits_and_saves_loadable_models(tmp_path, short_chats):
    """4 chats trained and validated on: the loss must fall; adapter and final give the same logits."""
    rows = short_chats[:4]
    run, cfg = make_run(tmp_path, SMOKE, CHAT_FAST, rows, rows)
    m = tune.train(run, cfg)

    assert m["val_loss_best"] < 0.6 * m["val_loss_first"], m  # 4 chats learned by heart
    assert m["steps"] == 6 and m["best_step"] in (3, 6) and m["resumed_from_step"] == 0
    assert m["precision"] == ("bf16" if precision.cpu_has_bf16() or torch.cuda.is_available() else "fp32")
    assert m["packed"]
    assert 0 < m["trainable_params"] < 0.05 * m["total_params"] and m["train_tokens_per_s"] > 0
    assert m["lora_targets"] == sorted(adapters.LLAMA_LIKE)
    assert runs.read_json(run.metrics_file)["tune"]["val_loss_best"] == m["val_loss_best"]
    history = runs.read_json(run.model / "log_history.json")
    assert [h["step"] for h in history if "eval_loss" in h] == [0, 3, 6]
    assert [r["step"] for r in data.read_jsonl(run.model / "samples.jsonl")] == [0, 3, 6]
    assert (run.figures / "tune-loss.png").is_file() and any((run.model / "tensorboard").iterdir())
    final = run.model / "final"
    assert not list(final.glob("*.bin")) and (final / "model.safetensors").is_file()
    assert (final / "tokenizer_config.json").is_file()

    ids = torch.tensor([chat.encode(models.load_tokenizer(cfg), rows[0]["messages"], 128).input_ids])
    peft_model = PeftModel.from_pretrained(models.load_causal_lm(cfg), run.model / "adapter").eval()
    merged = AutoModelForCausalLM.from_pretrained(final, use_safetensors=True).eval()
    assert merged.config.use_cache and merged.dtype == torch.float32  # merged into the fp32 base
    with torch.no_grad():
        assert torch.allclose(peft_model(ids).logits, merged(ids).logits, atol=1e-3)


def test_classifier_overfits_via_cli_with_class_weights(tmp_path, tweets):
    rows = tweets[:48]
    run, cfg = make_run(tmp_path, SMOKE_SENTIMENT, {"tune.eval_steps": 3, "tune.save_steps": 3}, rows, rows)
    code = tune.main(["--run-dir", str(run.dir), "--set", "tune.max_steps=6", "--set", "tune.learning_rate=3e-3",
                      "--set", "tune.class_weights=true", "--set", "tune.warmup_ratio=0"])
    assert code == 0
    assert run.config().tune.class_weights  # config.yaml says what ran
    m = runs.read_json(run.metrics_file)["tune"]
    assert m["val_loss_best"] < m["val_loss_first"], m
    assert {"val_accuracy_best", "val_macro_f1_best"} <= set(m)

    labels = ["negative", "neutral", "positive"]
    final = AutoModelForSequenceClassification.from_pretrained(run.model / "final", use_safetensors=True).eval()
    assert final.config.id2label == dict(enumerate(labels))
    peft_model = PeftModel.from_pretrained(models.load_classifier(cfg, labels), run.model / "adapter").eval()
    enc = models.load_tokenizer(cfg)([r["text"] for r in rows[:4]], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(peft_model(**enc).logits, final(**enc).logits, atol=1e-4)


class Killed(Exception):
    """Stands for a killed process."""


class Crash(TrainerCallback):
    """Stop the process's training with an error after a given step (a killed run)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise Killed(f"killed after step {self.step}")


def test_interrupted_run_resumes_to_the_same_losses(tmp_path, short_chats):
    overrides = {**CHAT_FAST, "tune.batch_size": 2, "tune.max_steps": 4, "tune.eval_steps": 2,
                 "tune.save_steps": 2, "tune.sample_prompts": 0, "tune.learning_rate": 1e-3}
    train, val = short_chats[:6], short_chats[6:8]
    straight, cfg = make_run(tmp_path, SMOKE, overrides, train, val)
    tune.train(straight, cfg)

    broken, _ = make_run(tmp_path, SMOKE, overrides, train, val)
    with pytest.raises(Killed):
        training.fit(cfg, train, val, broken.model, callbacks=[Crash(3)])
    assert training.last_checkpoint(broken.model / "checkpoints").name == "checkpoint-2"
    m = tune.train(broken, cfg)  # the stage rerun on the same folder
    assert m["resumed_from_step"] == 2 and m["steps"] == 4

    def losses(run, key):
        return {h["step"]: h[key] for h in runs.read_json(run.model / "log_history.json") if key in h}

    for key in ("loss", "eval_loss"):
        a, b = losses(straight, key), losses(broken, key)
        assert a.keys() == b.keys() and max(a) == 4
        assert [b[s] for s in a] == pytest.approx([a[s] for s in a], abs=2e-3), key


@pytest.mark.parametrize("method, scheduler", [("dora", "step"), ("rslora", "cosine"), ("full", "constant"),
                                               ("freeze", "linear")])
def test_every_method_trains_and_saves_a_plain_model(tmp_path, tweets, method, scheduler):
    overrides = {"tune.method": method, "tune.scheduler": scheduler, "tune.max_steps": 4, "tune.eval_steps": 2,
                 "tune.save_steps": 2, "tune.batch_size": 8, "tune.warmup_ratio": 0.25, "tune.step_size": 1}
    run, cfg = make_run(tmp_path, SMOKE_SENTIMENT, overrides, tweets[:32], tweets[32:40])
    m = tune.train(run, cfg)
    assert m["steps"] == 4 and (run.model / "adapter").is_dir() == (method in ("dora", "rslora"))
    lrs = [h["learning_rate"] for h in runs.read_json(run.model / "log_history.json") if "learning_rate" in h]
    peak = cfg.tune.learning_rate
    # One warmup step from 0, then: halve every step / cosine / flat / straight down.
    expected = {"step": [0, 1, 0.5, 0.25], "cosine": [0, 1, 0.75, 0.25], "constant": [0, 1, 1, 1],
                "linear": [0, 1, 2 / 3, 1 / 3]}[scheduler]
    assert lrs == pytest.approx([peak * f for f in expected]), scheduler
    model = AutoModelForSequenceClassification.from_pretrained(run.model / "final", use_safetensors=True)
    assert model.config.id2label[0] == "negative"


def test_early_stopping_keeps_the_best_checkpoint_as_final(tmp_path, tweets):
    """A learning rate far too high makes validation loss rise: training stops, and final = the best step."""
    from safetensors.torch import load_file

    overrides = {"tune.method": "full", "tune.learning_rate": 0.5, "tune.max_steps": 10, "tune.eval_steps": 1,
                 "tune.save_steps": 1, "tune.early_stopping_patience": 1, "tune.batch_size": 8, "tune.warmup_ratio": 0}
    run, cfg = make_run(tmp_path, SMOKE_SENTIMENT, overrides, tweets[:40], tweets[40:56])
    m = tune.train(run, cfg)
    assert m["stopped_early"] and m["steps"] < 10 and m["best_step"] < m["steps"]
    evals = {h["step"]: h["eval_loss"] for h in runs.read_json(run.model / "log_history.json") if "eval_loss" in h}
    assert m["val_loss_best"] == min(v for s, v in evals.items() if s > 0) == evals[m["best_step"]]
    best = load_file(run.model / "checkpoints" / f"checkpoint-{m['best_step']}" / "model.safetensors")
    final = load_file(run.model / "final" / "model.safetensors")
    assert torch.equal(best["classifier.weight"], final["classifier.weight"])


def test_packed_loss_with_loss_positions_only_equals_the_models_own_loss(short_chats):
    """Scoring only positions whose next token carries loss must not change the loss."""
    from transformers import DataCollatorWithFlattening

    cfg = load_config(SMOKE)
    tok, model = models.load_tokenizer(cfg), models.load_causal_lm(cfg).eval()
    feats = [{"input_ids": e.input_ids, "labels": e.labels}
             for e in (chat.encode(tok, r["messages"], 128) for r in short_chats[:3])]
    batch = {k: torch.as_tensor(v) for k, v in DataCollatorWithFlattening()(feats).items()}
    tt = trainer.TuneTrainer.__new__(trainer.TuneTrainer)  # only the loss method is exercised
    tt.args = type("Args", (), {"average_tokens_across_devices": False})()
    with torch.no_grad():
        ours = tt._packed_loss(model, batch, False, None)
        reference = model(**batch).loss  # transformers' causal-LM loss over the same labels
    assert torch.allclose(ours, reference, atol=1e-5), (ours, reference)


@pytest.mark.slow
def test_a_killed_training_process_resumes_from_its_last_checkpoint(tmp_path, short_chats):
    """SIGKILL `python -m helpers.tune` after its first checkpoint; the rerun continues from it
    and ends with the same final validation loss as an uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    overrides = {**CHAT_FAST, "tune.batch_size": 2, "tune.max_steps": 8, "tune.eval_steps": 2,
                 "tune.save_steps": 2, "tune.sample_prompts": 0, "tune.learning_rate": 1e-3}
    train, val = short_chats[:8], short_chats[8:10]
    straight, cfg = make_run(tmp_path, SMOKE, overrides, train, val)
    expected = tune.train(straight, cfg)

    killed, _ = make_run(tmp_path, SMOKE, overrides, train, val)
    cmd = [sys.executable, "-m", "helpers.tune", "--run-dir", str(killed.dir)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while training.last_checkpoint(killed.model / "checkpoints") is None:
        assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint before the process ended"
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)  # as a power cut or an out-of-memory kill would
    proc.wait()
    step = training.checkpoint_step(training.last_checkpoint(killed.model / "checkpoints"))
    assert 2 <= step < 8, step
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    resumed = runs.read_json(killed.metrics_file)["tune"]
    assert resumed["resumed_from_step"] == step and resumed["steps"] == 8
    assert resumed["val_loss_best"] == pytest.approx(expected["val_loss_best"], rel=1e-4)
