"""Stage 04 under `accelerate launch` on 2 CPU processes (gloo, configs/accelerate/cpu-2proc.yaml):
the same batches and losses as one process, the run's files written once, a killed rank resumed."""
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from helpers import chat, data, models, paths, pipeline, runs, training, tune
from helpers.config import ConfigError, load_config

SMOKE = paths.PARAMS / "smoke.yaml"
ACCEL = paths.ROOT / "configs" / "accelerate" / "cpu-2proc.yaml"
# 8 short chats, global batch 4: steps 1-2 are epoch 1, 3-4 epoch 2. Validation (4 chats) at
# steps 0, 2 and 4, a checkpoint at 2 and 4. A high learning rate, so 4 steps move the loss.
FAST = {"model.max_length": 128, "tune.batch_size": 4, "tune.max_steps": 4, "tune.eval_steps": 2,
        "tune.save_steps": 2, "tune.logging_steps": 1, "tune.learning_rate": 2e-3, "tune.warmup_ratio": 0.0,
        "tune.sample_prompts": 1, "tune.sample_max_new_tokens": 4}
# Measured on the 2-core machine, bf16 autocast (the line this test prints; 1 / 2 processes):
# step 0's validation loss 3.23079 / 3.23112 (1.0e-4 relative: each process packs its rows
# into a row of its own, so the bf16 sums run in another order), the first training loss (the
# same 4 examples) 2.74312 / 2.74220 (3e-4), step 4's validation loss 2.99013 / 2.99294 (9e-4).
# On the smoke run: 1e-4, 1e-3 and 5e-4. Batches that differed would move the first training
# loss by 5% and more (these chats' losses range from 1.5 to 4): TOL_TRAINED leaves 10x room
# for the rounding and still catches that. A resumed run matched the uninterrupted one exactly.
TOL_SAME_BATCH = 1e-3
TOL_TRAINED = 1e-2


@pytest.fixture(scope="module")
def short_chats() -> list[dict]:
    """The 12 shortest smoke support chats (all under 128 tokens with the template)."""
    cfg = load_config(SMOKE)
    tok = models.load_tokenizer(cfg)
    rows = data.load(cfg).rows
    return sorted(rows, key=lambda r: len(chat.encode(tok, r["messages"], 10_000).input_ids))[:12]


def make_run(reports, rows: list[dict]) -> runs.Run:
    """A run folder with the splits stages 01-03 would have written."""
    run = runs.create_run(load_config(SMOKE, FAST), reports=reports)
    data.write_jsonl(run.data / "train.jsonl", rows[:8])
    data.write_jsonl(run.data / "validation.jsonl", rows[8:12])
    return run


def env() -> dict[str, str]:
    """This checkout's sources first, one thread per process (2 cores, 2 processes)."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(paths.ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1"}


def free_port() -> int:
    """A TCP port nobody listens on, for the process group's rendezvous (not 29500: other runs)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(run: runs.Run, processes: int = 2) -> subprocess.Popen:
    """`accelerate launch` of the tune stage, as make tune-distributed runs it."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ACCEL),
           "--num_processes", str(processes), "--main_process_port", str(free_port()),
           "-m", "helpers.tune", "--run-dir", str(run.dir), "--record-stage"]
    return subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, timeout: int = 900) -> str:
    """Wait for a launch; its output, which must end in success."""
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:]
    return out


def history(run: runs.Run) -> list[dict]:
    return runs.read_json(run.model / "log_history.json")


def at(history: list[dict], key: str, step: int) -> float:
    """The value of key logged at step."""
    return next(h[key] for h in history if key in h and h["step"] == step)


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory, short_chats):
    """An uninterrupted 2-process run: its folder and the launcher's output."""
    run = make_run(tmp_path_factory.mktemp("two"), short_chats)
    return run, finish(launch(run))


# ---------------------------------------------------------------- fast checks

def test_global_batch_must_split_evenly_over_the_processes(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ConfigError, match=r"tune.batch_size: 4 is the global batch.*3 training processes; use 3 or 6"):
        training.check_processes(load_config(SMOKE, FAST))
    assert training.check_processes(load_config(SMOKE, {**FAST, "tune.batch_size": 6})) == 3
    monkeypatch.delenv("WORLD_SIZE")
    assert training.check_processes(load_config(SMOKE, FAST)) == 1


def test_the_stage_name_tune_records_is_the_pipelines():
    assert tune.NOTEBOOK == pipeline.NOTEBOOKS[3]  # so `pipeline --resume` skips a distributed 04


def test_the_accelerate_configs_say_what_they_are_for():
    import yaml

    for path in sorted((paths.ROOT / "configs" / "accelerate").glob("*.yaml")):
        text = path.read_text()
        assert text.startswith("# ") and "make " in text.split("\n\n")[0], f"{path.name}: header comment"
        config = yaml.safe_load(text)
        assert config["distributed_type"] in ("MULTI_GPU", "FSDP") and config["num_processes"] >= 2, path.name


# ---------------------------------------------------------------- real launches

@pytest.mark.slow
def test_two_processes_train_on_the_same_batches_as_one_and_write_once(tmp_path, short_chats, two_processes):
    one = make_run(tmp_path / "one", short_chats)
    subprocess.run([sys.executable, "-m", "helpers.tune", "--run-dir", str(one.dir)], env=env(), check=True,
                   capture_output=True)
    two, out = two_processes
    m1, m2 = (runs.read_json(r.metrics_file)["tune"] for r in (one, two))
    assert (m1["processes"], m2["processes"]) == (1, 2)
    assert m1["examples_per_step"] == m2["examples_per_step"] == 4  # tune.batch_size is the global batch
    h1, h2 = history(one), history(two)
    print("\n1 vs 2 processes: " + ", ".join(f"{key} at step {step} {at(h1, key, step):.5f} / {at(h2, key, step):.5f}"
                                            for key, step in (("eval_loss", 0), ("loss", 1), ("eval_loss", 4))))
    assert at(h2, "eval_loss", 0) == pytest.approx(at(h1, "eval_loss", 0), rel=TOL_SAME_BATCH)
    assert at(h2, "loss", 1) == pytest.approx(at(h1, "loss", 1), rel=TOL_TRAINED)  # the same 4 examples
    assert at(h2, "eval_loss", 4) == pytest.approx(at(h1, "eval_loss", 4), rel=TOL_TRAINED)
    assert m2["val_loss_best"] < m2["val_loss_first"]  # it learned

    # Written once, by the main process: one metrics print, one TensorBoard file, each
    # sample once, the stage recorded; the checkpoints hold each process's RNG state.
    assert out.count('"method": "lora"') == 1
    assert len(list((two.model / "tensorboard").iterdir())) == 1
    samples = data.read_jsonl(two.model / "samples.jsonl")
    assert [s["step"] for s in samples] == [0, 2, 4]
    assert len(h2) == len(h1) and [h["step"] for h in h2] == [h["step"] for h in h1]
    assert (two.model / "final" / "model.safetensors").is_file() and (two.model / "adapter").is_dir()
    checkpoint = training.last_checkpoint(two.model / "checkpoints")
    assert sorted(p.name for p in checkpoint.glob("rng_state*")) == ["rng_state_0.pth", "rng_state_1.pth"]
    stage = runs.read_json(two.manifest_file)["stages"][tune.NOTEBOOK]
    assert stage["status"] == "ok" and stage["processes"] == 2


def worker_pids(launcher: int) -> dict[int, int]:
    """{rank: pid} of the training processes under a launcher (torchrun's agent runs in it)."""
    found = {}
    for proc in os.listdir("/proc"):
        if not proc.isdigit():
            continue
        try:
            stat = open(f"/proc/{proc}/stat").read()
            environ = open(f"/proc/{proc}/environ", "rb").read().split(b"\0")
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == launcher:
            rank = next((e.split(b"=", 1)[1] for e in environ if e.startswith(b"RANK=")), None)
            if rank is not None:
                found[int(rank)] = int(proc)
    return found


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds the training processes through /proc (Linux)")
def test_a_killed_rank_stops_the_group_and_a_rerun_resumes(tmp_path, short_chats, two_processes):
    run = make_run(tmp_path, short_chats)
    proc = launch(run)
    deadline = time.monotonic() + 600
    while training.last_checkpoint(run.model / "checkpoints") is None:
        assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint before the launch ended"
        time.sleep(0.2)
    os.kill(worker_pids(proc.pid)[1], signal.SIGKILL)  # not the main process: rank 1
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0  # the launcher noticed and stopped rank 0 too
    assert runs.read_json(run.manifest_file)["stages"][tune.NOTEBOOK]["status"] != "ok"
    step = training.checkpoint_step(training.last_checkpoint(run.model / "checkpoints"))
    assert step == 2, out[-2000:]  # killed before the step-4 checkpoint was complete

    finish(launch(run))
    metrics = runs.read_json(run.metrics_file)["tune"]
    assert metrics["resumed_from_step"] == 2 and metrics["steps"] == 4 and metrics["processes"] == 2
    assert runs.read_json(run.manifest_file)["stages"][tune.NOTEBOOK]["status"] == "ok"
    straight = runs.read_json(two_processes[0].metrics_file)["tune"]
    print(f"\nbest validation loss, uninterrupted / killed and resumed: {straight['val_loss_best']:.5f} / "
          f"{metrics['val_loss_best']:.5f}")
    assert metrics["val_loss_best"] == pytest.approx(straight["val_loss_best"], rel=TOL_TRAINED)
    assert [s["step"] for s in data.read_jsonl(run.model / "samples.jsonl")] == [0, 2, 4]  # none twice
