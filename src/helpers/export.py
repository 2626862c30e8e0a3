"""Export a tuned model for use outside Python: safetensors, GGUF, an Ollama Modelfile, and a check.

    python -m helpers.export --run reports/<run> [--quant q8_0] [--prompts 4]   (make export)

Chat runs get `<run>/export/`: the merged model (hard links to model/final), `model.gguf` made
by llama.cpp's own converter, a `Modelfile` for Ollama, and `check.json`, which loads the GGUF
back and compares it with the merged model on the first test prompts. A failed check exits 1.
Classifier runs get the merged model only (GGUF and Ollama are for chat models), and with
tune.ensemble every member's, in export/members/<i>/.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

from . import chat, data, paths, schema
from .modelfile import ExportError, modelfile, read_modelfile, render_go, stop_tokens, translate_template
from .runs import Run, read_json, write_json

OUTTYPES = ("f16", "q8_0")  # the converter's --outtype values we offer (f16 keeps the weights as trained)
# From the llama.cpp source we unpack only the converter, the model classes it imports and gguf-py.
CONVERTER_PARTS = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "LICENSE")
# ---------------------------------------------------------------- llama.cpp's converter

def converter_pin() -> tuple[str, str]:
    """The pinned llama-cpp-python sdist (name==version) and its sha256, from pyproject.toml."""
    tool = tomllib.loads((paths.ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["tunebook"]
    return tool["gguf_converter"], tool["gguf_converter_sha256"]


def converter() -> Path:
    """llama.cpp's convert_hf_to_gguf.py with its gguf-py, unpacked once from the pinned sdist into the cache."""
    spec, sha = converter_pin()
    version = spec.split("==")[1]
    home = paths.CACHE / "llama.cpp" / version
    script = home / "convert_hf_to_gguf.py"
    if script.is_file():
        return script
    downloads = paths.CACHE / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    sdist = downloads / f"{spec.split('==')[0].replace('-', '_')}-{version}.tar.gz"
    if not sdist.is_file():
        print(f"downloading the {spec} source (once; llama.cpp's GGUF converter is in it) ...", flush=True)
        # The source only: nothing is built or installed, the converter runs from the cache.
        res = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                              spec, "-d", str(downloads)], capture_output=True, text=True)
        if res.returncode or not sdist.is_file():
            raise ExportError(f"could not download {spec} from PyPI (needed once for llama.cpp's GGUF converter):\n"
                              f"{res.stderr.strip()[-1500:]}")
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    if digest != sha:
        raise ExportError(f"{sdist}: sha256 {digest} is not the pinned {sha} (pyproject.toml "
                          f"[tool.tunebook] gguf_converter_sha256); delete the file and run again")
    tmp = home.with_name(home.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    prefix = f"{sdist.name.removesuffix('.tar.gz')}/vendor/llama.cpp/"
    with tarfile.open(sdist) as tar:
        wanted = [m for m in tar.getmembers() if m.name.startswith(prefix)
                  and any(m.name[len(prefix):].startswith(p) for p in CONVERTER_PARTS)]
        for m in wanted:
            m.name = m.name[len(prefix):]
        tar.extractall(tmp, members=wanted, filter="data")
    if not (tmp / "convert_hf_to_gguf.py").is_file():
        raise ExportError(f"{sdist} holds no vendor/llama.cpp/convert_hf_to_gguf.py: is the pin right?")
    shutil.rmtree(home, ignore_errors=True)
    tmp.rename(home)
    return script


def convert(model_dir: Path, out: Path, outtype: str = "f16") -> Path:
    """model_dir (a transformers folder) as a GGUF file, by llama.cpp's converter in a subprocess."""
    script = converter()
    # The converter needs the gguf-py of its own llama.cpp commit, not the gguf the project pins
    # for transformers: put it first on the path of the converter's process only.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(script.parent / "gguf-py"), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, str(script), str(model_dir), "--outfile", str(out), "--outtype", outtype]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode or not out.is_file():
        raise ExportError(f"llama.cpp's converter failed on {model_dir} (exit {res.returncode}):\n"
                          f"{res.stderr.strip()[-3000:]}")
    return out


# ---------------------------------------------------------------- the check

def _greedy(model, ids: list[int], stop_ids: list[int], pad_id: int, max_new_tokens: int) -> list[int]:
    """Greedy new tokens for one prompt (batch of one: no padding to perturb the numbers)."""
    import torch

    with torch.inference_mode():
        out = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, eos_token_id=stop_ids,
                             pad_token_id=pad_id, temperature=None, top_p=None, top_k=None)
    return out[0, len(ids):].tolist()


def _agreement(model, prompt: list[int], answer: list[int]) -> float:
    """Share of the answer's tokens that model also ranks first, fed the same prefix (teacher forcing)."""
    import torch

    if not answer:
        return 1.0
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([prompt + answer])).logits[0]  # (T, V)
    top = logits[len(prompt) - 1:-1].argmax(-1).tolist()
    return sum(a == b for a, b in zip(top, answer)) / len(answer)


def gguf_stop_ids(path: Path) -> list[int]:
    """The end-of-generation token ids a GGUF names (eos, eot, eom): what llama.cpp stops at."""
    from gguf import GGUFReader

    fields = GGUFReader(path).fields
    keys = ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id")
    return list(dict.fromkeys(int(fields[k].parts[-1][0]) for k in keys if k in fields))


def _ends(tokens: list[int], stops: list[int], budget: int) -> bool:
    """Whether an answer ended with an end-of-turn token within its budget."""
    return bool(tokens) and tokens[-1] in stops and len(tokens) <= budget


def _first_diff(a: str | list, b: str | list) -> int:
    """Index of the first place two strings or token lists differ."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def _show_diff(name: str, a: str, b: str) -> str:
    """Where two renderings differ, quoted around the first difference."""
    i = _first_diff(a, b)
    return f"{name} differ at character {i}: {a[max(0, i - 20):i + 30]!r} vs {b[max(0, i - 20):i + 30]!r}"


def _at_export_precision(model, outtype: str):
    """The merged model as the GGUF stores it: the converter writes f16 matrices and f32 vectors."""
    import copy

    import torch

    if outtype != "f16":
        return model  # q8_0 rounds in blocks the check does not redo: compared against fp32
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for p in ref.parameters():
            if p.ndim >= 2:
                p.copy_(p.half().float())
    return ref


def check(export_dir: Path, rows: list[dict], outtype: str, max_new_tokens: int) -> dict[str, Any]:
    """Load model.gguf back (transformers) and compare it with the merged model in export_dir.

    The merged model stops at its generation config's end-of-turn tokens, the GGUF at the ones
    its own metadata names (as llama.cpp does); the Modelfile must list every one of the former.
    For each prompt: the GGUF's chat template and the Modelfile's TEMPLATE must render the
    same text as the merged model's template; the prompt must tokenize the same; where the
    merged model's greedy answer ends with an end-of-turn token before max_new_tokens, the
    GGUF's must too. f16: the answer's tokens must equal the merged model's (weights rounded to
    f16 as the GGUF holds them). q8_0: the GGUF must rank first at least 90% of the merged
    model's answer tokens. A merged model that itself runs past max_new_tokens is a warning.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    merged = AutoModelForCausalLM.from_pretrained(export_dir, dtype=torch.float32, use_safetensors=True,
                                                  trust_remote_code=False).eval()
    tok = AutoTokenizer.from_pretrained(export_dir, trust_remote_code=False)
    # The GGUF alone in a folder: nothing of the safetensors side (config, tokenizer files) can leak in.
    with tempfile.TemporaryDirectory() as alone:
        os.symlink((export_dir / "model.gguf").resolve(), Path(alone) / "model.gguf")
        gguf = AutoModelForCausalLM.from_pretrained(alone, gguf_file="model.gguf", dtype=torch.float32).eval()
        gtok = AutoTokenizer.from_pretrained(alone, gguf_file="model.gguf")
    ref = _at_export_precision(merged, outtype)
    gstate = gguf.state_dict()
    weight_diff = max(float((gstate[k].float() - v.float()).abs().max()) for k, v in ref.state_dict().items() if k in gstate)
    mf = read_modelfile((export_dir / "Modelfile").read_text(encoding="utf-8"))
    gen = merged.generation_config.eos_token_id
    stop_ids = list(dict.fromkeys((gen if isinstance(gen, list) else [gen] if gen is not None else []) + [tok.eos_token_id]))
    stop_names = tok.convert_ids_to_tokens(stop_ids)
    gguf_stops = gguf_stop_ids(export_dir / "model.gguf")
    pad = tok.pad_token_id if tok.pad_token_id is not None else stop_ids[0]
    failures, warnings, results = [], [], []
    if missing := [t for t in stop_names if t not in mf["stop"]]:
        failures.append(f"Modelfile: PARAMETER stop lacks {missing}, where the model ends its turn: Ollama would run on")
    if outtype == "f16" and weight_diff > 0:
        failures.append(f"model.gguf: weights differ from the merged model's, rounded to f16, by up to {weight_diff:.3g}")
    if not set(stop_ids) & set(gguf_stops):
        failures.append(f"model.gguf: its end-of-generation tokens {tok.convert_ids_to_tokens(gguf_stops)} are not "
                        f"the model's end of turn {stop_names}: llama.cpp would run on")
    for n, row in enumerate(rows, start=1):
        last = max(i for i, m in enumerate(row["messages"]) if m["role"] == "assistant")
        msgs = row["messages"][:last]
        where = f"prompt {n} ({row.get('source', row.get('id', '?'))})"
        text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        gtext = gtok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) \
            if getattr(gtok, "chat_template", None) else ""
        # Ollama adds SYSTEM to a chat that has no system message; the merged model gets the same chat.
        served = msgs if mf["system"] is None or any(m["role"] == "system" for m in msgs) \
            else [{"role": "system", "content": mf["system"]}] + msgs
        otext = render_go(mf["template"] or "", msgs, mf["system"])
        stext = tok.apply_chat_template(served, tokenize=False, add_generation_prompt=True)
        ids, gids = chat.prompt_ids(tok, row["messages"]), chat.prompt_ids(gtok, row["messages"]) if gtext else []
        want = _greedy(ref, ids, stop_ids, pad, max_new_tokens)
        got = _greedy(gguf, gids or ids, gguf_stops, pad, max_new_tokens)
        agree = _agreement(gguf, ids, want) if outtype != "f16" else None  # f16 compares the tokens themselves
        rec = {"prompt": n, "source": row.get("source", ""), "gguf_template_same": gtext == text,
               "modelfile_template_same": otext == stext, "prompt_tokens_same": gids == ids,
               "tokens": len(got), "same_tokens": got == want,
               "first_different_token": None if got == want else _first_diff(got, want),
               "top1_agreement": None if agree is None else round(agree, 4),
               "merged_ends_with_end_of_turn": _ends(want, stop_ids, max_new_tokens),
               "ends_with_end_of_turn": _ends(got, gguf_stops, max_new_tokens),
               "answer": tok.decode(got, skip_special_tokens=True).strip()}
        problems = []
        if not rec["gguf_template_same"]:
            problems.append(_show_diff("the GGUF's chat template and the merged model's", gtext, text) if gtext
                            else "the GGUF carries no chat template")
        if not rec["modelfile_template_same"]:
            problems.append(_show_diff("the Modelfile's TEMPLATE and the merged model's template", otext, stext))
        if gtext and not rec["prompt_tokens_same"]:
            problems.append(f"the GGUF's tokenizer splits the prompt differently (from token {_first_diff(gids, ids)})")
        if rec["merged_ends_with_end_of_turn"] and not rec["ends_with_end_of_turn"]:
            problems.append(f"the merged model ends its answer after {len(want)} tokens, the GGUF's answer does not "
                            f"end within {max_new_tokens}: it would run on in llama.cpp / Ollama")
        elif not rec["merged_ends_with_end_of_turn"]:
            warnings.append(f"{where}: the tuned model itself does not end its answer within {max_new_tokens} "
                            f"tokens (greedy), so stopping cannot be compared there; raise --max-new-tokens")
        if outtype == "f16" and not rec["same_tokens"]:
            problems.append(f"the greedy answer differs from the merged model's at new token "
                            f"{rec['first_different_token']}: {tok.decode(got)!r} vs {tok.decode(want)!r}")
        if agree is not None and agree < 0.9:
            problems.append(f"the GGUF ranks first only {agree:.0%} of the merged model's answer tokens (needs 90%)")
        rec["problems"] = problems
        failures += [f"{where}: {p}" for p in problems]
        results.append(rec)
    compared = ("f16: rendered chat text (the GGUF's template and the merged one on each test chat; the Modelfile's "
                "TEMPLATE and the merged one on the chat as Ollama serves it, SYSTEM added where it has no system "
                "message), prompt tokens, and greedy answer tokens against the merged model with its matrices "
                "rounded to f16"
                if outtype == "f16" else
                f"{outtype}: rendered chat text and prompt tokens as for f16; answers differ by quantization, so the "
                f"GGUF must rank first >= 90% of the merged model's greedy answer tokens (teacher-forced)")
    return {"passed": not failures, "outtype": outtype, "compared": compared, "prompts": len(rows),
            "max_new_tokens": max_new_tokens, "max_weight_difference": weight_diff,
            "end_of_turn": {"merged": stop_names, "gguf": tok.convert_ids_to_tokens(gguf_stops), "modelfile": mf["stop"]},
            "system": mf["system"], "results": results, "failures": failures, "warnings": warnings,
            "seconds": round(time.perf_counter() - started, 1)}


# ---------------------------------------------------------------- the export folder

def link_model(final: Path, out: Path) -> None:
    """model/final's files in out: weights hard-linked (no second copy on disk), the small files copied
    (so editing the export's tokenizer or config never edits the run's model)."""
    if not (final / "config.json").is_file():
        raise ExportError(f"{final} holds no model: run the pipeline through 04-tune-model first")
    out.mkdir(parents=True, exist_ok=True)
    for f in final.iterdir():
        if not f.is_file():
            continue
        dest = out / f.name
        dest.unlink(missing_ok=True)
        if f.suffix == ".safetensors":
            try:
                os.link(f, dest)
                continue
            except OSError:  # another file system: copy instead
                pass
        shutil.copy2(f, dest)


def export_run(run: Run, outtype: str = "f16", prompts: int = 4, max_new_tokens: int = 128) -> dict[str, Any]:
    """Write run/export/: the merged model, and for chat runs model.gguf, Modelfile and check.json."""
    from transformers import AutoTokenizer, GenerationConfig

    if outtype not in OUTTYPES:
        raise ExportError(f"QUANT={outtype!r}: use one of {', '.join(OUTTYPES)} (f16 is the default)")
    cfg = run.config()
    out = run.dir / "export"
    started = time.perf_counter()
    link_model(run.model / "final", out)
    if cfg.experiment.task != "chat":
        members = []
        if cfg.tune.ensemble > 1:  # the model 05 scored is every member's averaged probabilities
            from . import ensemble  # the training engine (torch): only for an ensemble's folders

            try:
                folders = ensemble.folders(run, cfg)
            except FileNotFoundError as e:  # a member missing: say so, no traceback
                raise ExportError(str(e)) from None
            shutil.rmtree(out / "members", ignore_errors=True)
            for i, folder in enumerate(folders[1:], start=1):
                link_model(folder, out / "members" / str(i))
                members.append(f"members/{i}")
        note = ("GGUF and Ollama run generative chat models, not sequence classifiers: the export is the merged "
                "transformers model (safetensors); label files with make predict")
        if members:
            note += (f". tune.ensemble: the folder itself is member 0 and {', '.join(members)} the others; the scores "
                     f"in the report are of their class probabilities averaged (make predict averages them)")
        return {"task": cfg.experiment.task, "export": str(out), **({"members": ["."] + members} if members else {}),
                "seconds": round(time.perf_counter() - started, 1), "note": note}
    tok = AutoTokenizer.from_pretrained(out, trust_remote_code=False)
    template = translate_template(tok)  # before the slow conversion: an untranslatable template fails fast
    train = data.read_jsonl(run.data / "train.jsonl")
    system = chat.system_prompt(train) or template.default_system
    stops = stop_tokens(tok, GenerationConfig.from_pretrained(out) if (out / "generation_config.json").is_file() else None)
    (out / "Modelfile").write_text(modelfile(template, stops, system), encoding="utf-8")
    gguf = out / "model.gguf"
    t0 = time.perf_counter()
    convert(out, gguf, outtype)
    convert_s = time.perf_counter() - t0
    result = check(out, data.read_jsonl(run.data / "test.jsonl")[:prompts], outtype, max_new_tokens)
    result.update({"gguf_bytes": gguf.stat().st_size, "convert_seconds": round(convert_s, 1),
                   "converter": converter_pin()[0], "seconds": round(time.perf_counter() - started, 1)})
    write_json(out / "check.json", result)
    return result


def main(argv: list[str] | None = None) -> int:
    """Command line: export one run; exit 1 when the export's check fails."""
    ap = argparse.ArgumentParser(prog="python -m helpers.export", description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="the run folder, reports/<run>")
    ap.add_argument("--quant", default=None, help=f"GGUF weight type: {' or '.join(OUTTYPES)} (default f16)")
    ap.add_argument("--prompts", type=int, default=4, help="test prompts the check compares (default 4)")
    ap.add_argument("--max-new-tokens", type=int, default=128, help="answer budget in the check (default 128)")
    ap.add_argument("--check-only", action="store_true", help="rerun the check on an existing export")
    a = ap.parse_args(argv)
    run = Run(Path(a.run))
    if not run.config_file.is_file():
        print(f"{a.run} is not a run folder (no config.yaml); give RUN=reports/<run>", file=sys.stderr)
        return 2
    try:
        if a.check_only:
            out = run.dir / "export"
            if not (out / "model.gguf").is_file():
                raise ExportError(f"{out} holds no model.gguf: run make export first")
            before = read_json(out / "check.json", {})
            res = {**before, **check(out, data.read_jsonl(run.data / "test.jsonl")[:a.prompts],
                                     a.quant or before.get("outtype", "f16"), a.max_new_tokens)}
            write_json(out / "check.json", res)
        else:
            res = export_run(run, a.quant or "f16", a.prompts, a.max_new_tokens)
    except (ExportError, schema.DataError) as e:
        print(f"export failed: {e}", file=sys.stderr)
        return 1
    if "passed" not in res:
        print(f"{res['export']}: {res['note']}")
        return 0
    out = run.dir / "export"
    print(f"{out}: model.gguf ({res.get('gguf_bytes', 0) / 2**20:.0f} MiB, {res['outtype']}), Modelfile, check.json")
    if not res["passed"]:
        print("the export's check FAILED (details in check.json):", file=sys.stderr)
        for f in res["failures"]:
            print(f"  {f}", file=sys.stderr)
        return 1
    for w in res.get("warnings", []):
        print(f"warning: {w}")
    print(f"check passed on {res['prompts']} test prompts ({res['compared']})")
    print(f"Ollama: cd {out} && ollama create {run.dir.name.lower()} -f Modelfile")
    return 0


if __name__ == "__main__":
    sys.exit(main())
